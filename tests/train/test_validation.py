import numpy as np
import pytest
import torch
import torch.nn.functional as F

from astra.cli import main
from astra.data.encode import encode_episodes
from astra.data.format import Episode, write_episode
from astra.errors import AstraError, DataError
from astra.train.checkpointing import latest_checkpoint
from astra.train.config import get_preset
from astra.train.latent_batches import LatentBatches
from astra.train.logging import VALIDATION_CSV_NAME, read_metrics
from astra.train.trainer import Trainer
from astra.train.validation import format_validation

TINY = get_preset("astra-tiny").replace(model_overrides={"text_dim": 0, "text_len": 0})


def _perturb(model):
    """A fresh model's experts are zero-initialised (no action effect): give them weight so actions matter."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.abs().max() == 0:
                param.normal_(0, 0.2)


def test_validation_is_repeatable_per_source_and_scores_the_ema_weights(tmp_path):
    config = TINY.replace(val_batches=3, batch_size=2)
    trainer = Trainer(config, tmp_path, progress=False)
    _perturb(trainer.model)
    for name, param in trainer.trainable:  # the EMA starts from the perturbed weights
        trainer.ema.shadow[name].copy_(param.detach())
    first, second = trainer.validate(), trainer.validate()
    assert first == second  # the same batches and noise every time
    assert first["val_samples"] == 6 and first["val_samples/synthetic"] == 6
    assert first["val_action_gain"] == pytest.approx(first["val_null_loss"] - first["val_loss"])
    assert first["val_action_gain"] != 0  # the null action changes the prediction, so the gain can fail
    assert first["val_one_shot_gain"] == pytest.approx(first["val_one_shot_null_loss"] - first["val_one_shot_loss"])
    assert first["val_one_shot_gain"] != 0 and first["val_one_shot_loss"] != first["val_loss"]
    assert trainer.model.training  # put back in training mode

    trained = {name: p.detach().clone() for name, p in trainer.trainable}
    for shadow in trainer.ema.shadow.values():  # EMA weights away from the trained ones
        shadow.add_(0.05)
    shifted = trainer.validate()
    assert shifted["val_loss"] != first["val_loss"]
    for name, param in trainer.trainable:  # the trained weights are back after validation
        assert torch.equal(param, trained[name]), name
    table = format_validation(shifted)
    assert "synthetic" in table and "pooled" in table and "t=1 gain" in table


def test_training_logs_validation_at_the_start_every_val_every_steps_and_at_the_end(tmp_path):
    config = TINY.replace(steps=5, val_every=2, val_batches=1, save_every=2)
    Trainer(config, tmp_path, progress=False).fit(stop_after=3)
    assert [row["step"] for row in read_metrics(tmp_path, VALIDATION_CSV_NAME)] == [0, 2, 3]
    latest_checkpoint(tmp_path).unlink()  # as if killed before the step-3 checkpoint: resume from step 2
    Trainer(config, tmp_path, progress=False).fit(resume=True)
    rows = read_metrics(tmp_path, VALIDATION_CSV_NAME)
    assert [row["step"] for row in rows] == [0, 2, 4, 5]  # as uninterrupted: the stopped run's step-3 row is gone
    assert all(np.isfinite(row["val_loss"]) for row in rows)


class PoolingVAE:
    """Stand-in VideoVAE: first frame alone, then 4x time and 8x space average pooling."""

    def encode(self, video):
        first = F.avg_pool3d(video[:, :, :1], (1, 8, 8))
        return torch.cat([first, F.avg_pool3d(video[:, :, 1:], (4, 8, 8))], dim=2)


def _latents(root, specs):
    rng = np.random.default_rng(0)
    for i, (world, modality, width, split) in enumerate(specs):
        episode = Episode(
            frames=rng.integers(0, 256, (13, 16, 16, 3), dtype=np.uint8),
            actions=rng.integers(0, 2, (13, width)).astype(np.float32),
            modality=modality, fps=10.0, split=split, meta={"world": world},
        )
        write_episode(root / "episodes", f"ep{i}", episode)
    encode_episodes(root / "episodes", PoolingVAE(), root / "latents", vae_name="pool")
    return root / "latents"


def test_heldout_batches_cover_the_trained_sources_with_held_out_clips(tmp_path):
    specs = [("doom", "keyboard_mouse", 8, "train"), ("robot", "robot7", 7, "train"), ("camera", "camera7", 7, "train")]
    specs += [("doom", "keyboard_mouse", 8, "heldout"), ("robot", "robot7", 7, "heldout")] * 2
    data = _latents(tmp_path, specs)
    config = TINY.replace(data=str(data), history_range=(1, 2), batch_size=16,
                          world_weights={"doom": 1.0, "robot": 0.1, "camera": 1.0})
    heldout = LatentBatches(config, 1, split="heldout")
    assert heldout.sources == ("doom", "robot")  # camera has no held-out clip; robot counts alike despite 0.1
    batch = heldout.batch(0, 0)
    assert set(batch.source) == {"doom", "robot"} and len(batch.source) == 16
    assert torch.equal(heldout.batch(0, 0).target_latents, batch.target_latents)
    with pytest.raises(DataError, match="no 'heldout' clip"):
        LatentBatches(config.replace(world_weights={"camera": 1.0}), 1, split="heldout")


def test_cli_validate_prints_the_table_and_refuses_two_jobs(tmp_path, capsys):
    assert main(["train", "--preset", "astra-tiny", "--set", "val_batches=2", "--out", str(tmp_path), "--validate"]) == 0
    printed = capsys.readouterr().out
    assert "held-out validation at step 0 (2 batches)" in printed and "pooled" in printed
    assert not (tmp_path / "checkpoints").exists()  # validation writes nothing
    with pytest.raises(AstraError, match="choose one"):
        from astra.train.cli import run
        import argparse

        run(argparse.Namespace(validate=True, export=True, measure=False))


def test_one_shot_flow_time_scores_the_guess_from_pure_noise(tmp_path):
    """With flow_time=1 every target is scored at t = 1, where the model's input is the noise alone: a different
    clean target changes the regression target, never what the model sees."""
    from dataclasses import replace

    from astra.train.trainer import training_loss

    trainer = Trainer(TINY.replace(batch_size=2), tmp_path, progress=False)
    seen = []
    real_forward = trainer.model.forward

    def spy(target_latents, target_timesteps, *args, **kwargs):
        seen.append((target_latents.clone(), target_timesteps.clone()))
        return real_forward(target_latents, target_timesteps, *args, **kwargs)

    trainer.model.forward = spy
    batch = trainer.batches.batch(0, 0)
    other = replace(batch, target_latents=batch.target_latents + 1.0)
    losses = [
        training_loss(trainer.model, b, trainer.config, torch.Generator().manual_seed(0), trainer.model_config, 1.0)
        for b in (batch, other)
    ]
    (first_input, first_times), (second_input, _) = seen
    assert bool((first_times == 1.0).all())
    assert torch.equal(first_input, second_input)  # the clean target does not reach the input at t = 1
    assert not torch.equal(losses[0].sample_flow_loss, losses[1].sample_flow_loss)  # it reaches the loss
