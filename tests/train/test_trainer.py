import math

import pytest
import torch

from astra.errors import AstraError, CheckpointError
from astra.train.batches import SyntheticBatches, step_generator
from astra.train.checkpointing import latest_checkpoint, list_checkpoints, load_checkpoint
from astra.train.config import get_preset
from astra.train.logging import read_metrics
from astra.train.trainer import Trainer, build_model_config, change_weights, faded_history, lr_factor, training_loss

TINY = get_preset("astra-tiny").replace(model_overrides={"text_dim": 0, "text_len": 0})


class Spy(torch.nn.Module):
    """Records the keyword arguments the loss passes to the model, and whether the call builds a graph."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, *args, **kwargs):
        self.calls.append({**kwargs, "grad": torch.is_grad_enabled()})
        return self.model(*args, **kwargs)


def test_noisy_memory_and_action_dropout_reach_the_model(tmp_path):
    config = TINY.replace(noisy_memory_prob=1.0, noisy_memory_range=(0.3, 0.3), action_dropout=1.0, batch_size=3)
    trainer = Trainer(config, tmp_path, progress=False)
    spy = Spy(trainer.model)
    batch = trainer.batches.batch(0, 0)
    out = training_loss(spy, batch, config, step_generator(0, 0, 0, 1))
    kwargs = spy.calls[0]
    history_frames = batch.history_latents.shape[2]
    assert torch.allclose(kwargs["history_timesteps"], torch.full((3, history_frames), 0.3))
    assert not torch.allclose(kwargs["history_latents"], batch.history_latents)  # history was corrupted
    assert kwargs["actions"].null[:, history_frames:].all() and not kwargs["actions"].null[:, :history_frames].any()
    assert torch.isfinite(out.loss) and out.expert_usage.shape == (trainer.model_config.num_experts,)

    clean = TINY.replace(noisy_memory_prob=0.0, action_dropout=0.0)
    training_loss(spy, batch, clean, step_generator(0, 0, 0, 1))
    assert torch.equal(spy.calls[1]["history_latents"], batch.history_latents)
    assert spy.calls[1]["history_timesteps"].eq(0).all() and not spy.calls[1]["actions"].null.any()


def test_clean_first_memory_spares_the_oldest_history_frame_as_a_rollout_spares_its_start(tmp_path):
    config = TINY.replace(history_range=(3, 3), noisy_memory_prob=1.0, noisy_memory_range=(0.3, 0.3), batch_size=2)
    trainer = Trainer(config, tmp_path, progress=False)
    spy, batch = Spy(trainer.model), trainer.batches.batch(0, 0)
    for spared in (False, True):
        training_loss(spy, batch, config.replace(clean_first_memory=spared), step_generator(0, 0, 0, 1))
    noised, first_clean = spy.calls
    assert torch.equal(first_clean["history_timesteps"], torch.tensor([[0.0, 0.3, 0.3]] * 2))
    assert torch.equal(first_clean["history_latents"][:, :, 0], batch.history_latents[:, :, 0])
    # the other frames are noised exactly as without the option (same draws)
    assert torch.equal(first_clean["history_latents"][:, :, 1:], noised["history_latents"][:, :, 1:])
    assert not torch.allclose(noised["history_latents"][:, :, 0], batch.history_latents[:, :, 0])


def test_self_generated_history_replaces_the_newest_chunk_without_gradient(tmp_path):
    config = TINY.replace(
        history_range=(3, 3), copy_prior=True, noisy_memory_prob=0.0, action_dropout=0.0,
        self_history_prob=1.0, self_history_steps=2, batch_size=3,
    )
    trainer = Trainer(config, tmp_path, progress=False)
    spy = Spy(trainer.model)
    batch = trainer.batches.batch(0, 0)
    out = training_loss(spy, batch, config, step_generator(0, 0, 0, 1))
    *sampling, final = spy.calls
    assert len(sampling) == 2 and not any(call["grad"] for call in sampling) and final["grad"]
    chunk = batch.target_latents.shape[2]
    real = batch.history_latents.shape[2] - chunk  # the frames before the newest chunk
    assert real >= 1 and all(call["history_latents"].shape[2] == real for call in sampling)
    history = final["history_latents"]
    assert torch.equal(history[:, :, :real], batch.history_latents[:, :, :real])  # older frames stay real
    assert not torch.allclose(history[:, :, real:], batch.history_latents[:, :, real:])  # the newest is the model's
    assert torch.isfinite(history).all() and torch.isfinite(out.loss)

    spy.calls.clear()  # a history with no real frame before its newest chunk is left as it is
    short = config.replace(history_range=(chunk, chunk))
    short_batch = Trainer(short, tmp_path / "short", progress=False).batches.batch(0, 0)
    training_loss(spy, short_batch, short, step_generator(0, 0, 0, 1))
    assert len(spy.calls) == 1 and torch.equal(spy.calls[0]["history_latents"], short_batch.history_latents)
    with pytest.raises(AstraError, match="self_history_prob"):
        config.replace(self_history_prob=1.5).validate()


def test_faded_memory_shrinks_all_but_the_oldest_history_frame_toward_its_mean(tmp_path):
    config = TINY.replace(history_range=(3, 3), noisy_memory_prob=0.0, faded_memory_prob=1.0,
                          faded_memory_range=(0.5, 0.5), batch_size=3)
    trainer = Trainer(config, tmp_path, progress=False)
    batch = trainer.batches.batch(0, 0)
    real = batch.history_latents
    faded = faded_history(real, config, step_generator(0, 0, 0, 1))
    assert torch.equal(faded[:, :, :1], real[:, :, :1])  # the oldest frame is the clean reference
    mean = real[:, :, 1:].mean(dim=(3, 4), keepdim=True)
    assert torch.allclose(faded[:, :, 1:], mean + 0.5 * (real[:, :, 1:] - mean), atol=1e-6)
    assert torch.allclose(faded[:, :, 1:].mean(dim=(3, 4)), mean[..., 0, 0], atol=1e-6)  # colour kept, contrast halved

    spy = Spy(trainer.model)
    training_loss(spy, batch, config, step_generator(0, 0, 0, 1))
    assert torch.allclose(spy.calls[0]["history_latents"], faded)  # what the model sees
    assert torch.equal(faded_history(real, config.replace(faded_memory_prob=0.0), step_generator(0, 0, 0, 1)), real)
    one_frame = real[:, :, :1]
    assert torch.equal(faded_history(one_frame, config, step_generator(0, 0, 0, 1)), one_frame)
    with pytest.raises(AstraError, match="faded_memory_range"):
        config.replace(faded_memory_range=(0.0, 0.5)).validate()


def test_change_weighted_loss_weighs_what_moves_and_keeps_the_scale(tmp_path):
    newest = torch.zeros(2, 4, 1, 3, 3)
    target = torch.zeros(2, 4, 2, 3, 3)
    target[0, :, 1, 0, 0] = 1.0  # sample 0: one element moves; sample 1: nothing moves
    weight = change_weights(target, newest, strength=2.0)
    assert weight.shape == (2, 1, 2, 3, 3)
    assert torch.allclose(weight.flatten(1).mean(1), torch.ones(2))  # mean 1 per sample
    assert weight[0, 0, 1, 0, 0] > 5 * weight[0, 0, 0, 0, 0]  # the moving element outweighs the static ones
    assert torch.allclose(weight[1], torch.ones_like(weight[1]))  # no change anywhere: the plain loss

    config = TINY.replace(history_range=(2, 2), batch_size=3)
    trainer = Trainer(config, tmp_path, progress=False)
    batch = trainer.batches.batch(0, 0)
    plain = training_loss(trainer.model, batch, config, step_generator(0, 0, 0, 1))
    weighted = training_loss(trainer.model, batch, config.replace(change_weight=3.0), step_generator(0, 0, 0, 1))
    assert torch.isfinite(weighted.loss) and not torch.allclose(weighted.sample_flow_loss, plain.sample_flow_loss)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(AstraError, match="change_weight"):
            config.replace(change_weight=bad).validate()


def test_resume_continues_the_exact_loss_curve(tmp_path):
    config = TINY.replace(steps=4, save_every=2, log_every=1)
    full = Trainer(config, tmp_path / "full", progress=False).fit()
    interrupted = Trainer(config, tmp_path / "resumed", progress=False)
    first = interrupted.fit(stop_after=2)
    assert [row["step"] for row in first] == [1, 2]
    resumed = Trainer(config, tmp_path / "resumed", progress=False)
    rest = resumed.fit(resume=True)
    assert [row["step"] for row in rest] == [3, 4]
    assert [r["loss"] for r in full] == [r["loss"] for r in first + rest]  # exact on CPU
    assert [r["loss"] for r in read_metrics(tmp_path / "resumed")] == [r["loss"] for r in full]
    end_full = load_checkpoint(latest_checkpoint(tmp_path / "full"))
    end_resumed = load_checkpoint(latest_checkpoint(tmp_path / "resumed"))
    assert end_resumed["step"] == 4
    for name, tensor in end_full["model"].items():
        assert torch.equal(tensor, end_resumed["model"][name]), name
    for name, tensor in end_full["ema"].items():
        assert torch.equal(tensor, end_resumed["ema"][name]), name
    before = latest_checkpoint(tmp_path / "full").read_bytes()
    with pytest.raises(AstraError, match="already holds a training run"):  # a fresh run would overwrite it
        Trainer(config, tmp_path / "full", progress=False).fit()
    assert latest_checkpoint(tmp_path / "full").read_bytes() == before


class ScaledActions(SyntheticBatches):
    """The same batches with every action 50x larger: the run's data, changed after a checkpoint."""

    def batch(self, step, rank):
        batch = super().batch(step, rank)
        batch.action_values = 50.0 * batch.action_values
        return batch


def test_resume_restores_the_data_derived_state_the_run_took_not_what_the_data_gives_now(tmp_path):
    import dataclasses

    overrides = {**TINY.model_overrides, "normalize_actions": True, "motion_prior": True}
    config = TINY.replace(model_overrides=overrides, copy_prior=True, motion_fit_batches=2, motion_fit_iterations=5)
    first = Trainer(config, tmp_path, progress=False)
    first.fit(stop_after=2)
    derived = lambda trainer: {  # noqa: E731
        name: value.clone() for name, value in trainer.model.state_dict().items()
        if "normalizers" in name or name.startswith("motion_prior.")
    }  # fmt: skip
    saved = derived(first)
    assert saved.keys() == load_checkpoint(latest_checkpoint(tmp_path))["derived"].keys()
    changed = ScaledActions(**dataclasses.asdict(first.batches))

    resumed = Trainer(config, tmp_path, batches=changed, progress=False)
    recomputed = derived(resumed)
    assert any(not torch.equal(saved[name], recomputed[name]) for name in saved)  # the new data gives other state
    assert resumed.resume() and resumed.step == 2
    assert all(torch.equal(saved[name], value) for name, value in derived(resumed).items())

    path = latest_checkpoint(tmp_path)
    state = load_checkpoint(path)
    state["derived"]["action_projectors.normalizers.extra.mean"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="data-derived state.*unexpected.*normalizers.extra.mean"):
        Trainer(config, tmp_path, batches=changed, progress=False).resume()
    del state["derived"]  # a checkpoint from before they were saved: recomputed as before, with a warning
    torch.save(state, path)
    older = Trainer(config, tmp_path, batches=changed, progress=False)
    with pytest.warns(UserWarning, match="without the data-derived state"):
        assert older.resume() and older.step == 2
    assert all(torch.equal(recomputed[name], value) for name, value in derived(older).items())


def test_a_resumed_run_takes_its_data_derived_state_from_the_checkpoint_without_computing_it(tmp_path, monkeypatch):
    """Setting up a resume must not spend minutes computing what the resume overwrites (the action statistics over
    64 batches, the motion prior's fit), and must still go on exactly."""
    import astra.train.trainer as trainer_module

    overrides = {**TINY.model_overrides, "normalize_actions": True, "motion_prior": True}
    config = TINY.replace(
        model_overrides=overrides, copy_prior=True, motion_fit_batches=2, motion_fit_iterations=5, steps=4,
        save_every=2, log_every=1,
    )
    full = Trainer(config, tmp_path / "full", progress=False).fit()
    Trainer(config, tmp_path / "resumed", progress=False).fit(stop_after=2)
    state = load_checkpoint(latest_checkpoint(tmp_path / "resumed"))

    def computed(*args, **kwargs):
        raise AssertionError("the resume computed data-derived state its checkpoint holds")

    monkeypatch.setattr(trainer_module, "action_statistics", computed)
    monkeypatch.setattr(trainer_module, "fit_motion_prior", computed)
    resumed = Trainer(config, tmp_path / "resumed", progress=False, resume=True)
    assert resumed.resume() and resumed.step == 2
    weights = resumed.model.state_dict()
    assert state["derived"].keys() == resumed.derived.keys()
    for name, tensor in {**state["model"], **state["derived"]}.items():
        assert torch.equal(weights[name], tensor), name
    assert [r["loss"] for r in resumed.fit()] == [r["loss"] for r in full[2:]]
    with pytest.raises(AssertionError, match="computed data-derived state"):  # a fresh run still computes them
        Trainer(config, tmp_path / "fresh", progress=False, resume=True)


def test_a_resume_folds_the_runs_own_statistics_into_frozen_carried_over_projectors(tmp_path):
    """A raw checkpoint carried into normalised actions has the statistics folded into its projectors; frozen, those
    are not in the training checkpoint, so a resume must fold the run's statistics again, not the data's now."""
    import dataclasses

    from astra.model.checkpoints import save_astra

    save_astra(Trainer(TINY, tmp_path / "raw", progress=False).model, tmp_path / "raw-ckpt")
    overrides = {**TINY.model_overrides, "normalize_actions": True, "trainable": ["blocks"]}
    config = TINY.replace(model_overrides=overrides, init_from=str(tmp_path / "raw-ckpt"), steps=2, save_every=2)
    first = Trainer(config, tmp_path / "run", progress=False)
    first.fit()
    projectors = {name: value.clone() for name, value in first.model.action_projectors.state_dict().items()}
    assert not any(p.requires_grad for p in first.model.action_projectors.parameters())
    changed = ScaledActions(**dataclasses.asdict(first.batches))
    resumed = Trainer(config, tmp_path / "run", batches=changed, progress=False, resume=True)
    for name, value in resumed.model.action_projectors.state_dict().items():
        assert torch.equal(projectors[name], value), name


def test_train_config_json_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """--resume and --export read the run's train_config.json: a write that fails halfway must leave the old one."""
    from pathlib import Path

    config = TINY.replace(steps=4, save_every=2)
    Trainer(config, tmp_path, progress=False).fit(stop_after=2)
    before = (tmp_path / "train_config.json").read_text()
    write_text = Path.write_text

    def torn(self, text, *args, **kwargs):  # the disk fills up (or the process dies) halfway through the write
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("No space left on device")

    monkeypatch.setattr(Path, "write_text", torn)
    with pytest.raises(OSError, match="No space"):
        Trainer(config.replace(steps=6), tmp_path, progress=False).fit(resume=True)
    assert (tmp_path / "train_config.json").read_text() == before


def test_diffusion_forcing_settings_that_do_not_fit_the_model_are_named_before_training(tmp_path):
    from astra.model.config import HistoryBudget

    full = HistoryBudget(keep_first=True, full=4, compressed_2x=0, compressed_4x=0)
    overrides = {**TINY.model_overrides, "chunk_frames": 2, "history": full}
    config = TINY.replace(model_overrides=overrides, diffusion_forcing=True, history_range=(1, 4))
    with pytest.raises(AstraError, match=r"target_frames .*chunk_frames \(2\), got 3"):
        Trainer(config.replace(target_frames=3), tmp_path, progress=False)
    compressed = {**overrides, "history": HistoryBudget(keep_first=True, full=1, compressed_2x=2, compressed_4x=0)}
    with pytest.raises(AstraError, match="full resolution, got compressed_2x=2"):
        Trainer(config.replace(model_overrides=compressed), tmp_path, progress=False)
    gated = {**overrides, "motion_prior": True, "motion_prior_min_t": 0.5}
    with pytest.raises(AstraError, match="motion_prior_min_t = 0 .* got 0.5"):
        Trainer(config.replace(model_overrides=gated, target_frames=4, copy_prior=True), tmp_path, progress=False)
    assert Trainer(config.replace(target_frames=4, steps=1), tmp_path, progress=False).fit()[-1]["step"] == 1


def test_checkpoints_are_pruned_and_corrupt_ones_are_named(tmp_path):
    config = TINY.replace(steps=4, save_every=1, keep_checkpoints=2)
    Trainer(config, tmp_path, progress=False).fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003.pt", "step-00000004.pt"]
    latest = latest_checkpoint(tmp_path)
    latest.write_bytes(latest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="step-00000004.pt"):
        Trainer(config, tmp_path, progress=False).fit(resume=True)


def test_gradient_checkpointing_gives_the_same_gradients_with_fewer_saved_activations(tmp_path):
    from astra.train.measure import _saved_activation_bytes

    grads, saved = [], []
    for checkpointing in (False, True):
        trainer = Trainer(TINY.replace(grad_checkpointing=checkpointing), tmp_path / str(checkpointing), progress=False)
        saved.append(_saved_activation_bytes(trainer))
        out = training_loss(trainer.model, trainer.batches.batch(0, 0), trainer.config, step_generator(0, 0, 0, 1))
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)
    assert saved[1] < 0.7 * saved[0], saved


def test_copy_prior_makes_copying_free_for_a_zero_network(tmp_path):
    trainer = Trainer(TINY.replace(noisy_memory_prob=0.0, action_dropout=0.0, batch_size=4), tmp_path, progress=False)
    with torch.no_grad():  # v_net = 0: all that is left is the prior
        trainer.model.head.head.weight.zero_()
        trainer.model.head.head.bias.zero_()
    batch = trainer.batches.batch(0, 0)
    # a static scene: the target repeats the newest history frame
    batch.target_latents = batch.history_latents[:, :, -1:].expand_as(batch.target_latents).clone()
    losses = {
        prior: training_loss(trainer.model, batch, trainer.config.replace(copy_prior=prior), step_generator(0, 0, 0, 1))
        .flow_loss.item()
        for prior in (False, True)
    }
    assert losses[False] > 1.5  # |eps - x0|^2 of unit-variance latents
    assert losses[True] < 0.2 * losses[False], losses


def test_clean_anchor_copies_the_history_frame_before_noisy_memory_corrupts_it(tmp_path):
    """A zero network on a static scene with every history noised: the prior around the clean frame nearly copies the
    target, the prior around the remembered (noised) frame cannot."""
    config = TINY.replace(copy_prior=True, noisy_memory_prob=1.0, noisy_memory_range=(0.5, 0.5), batch_size=4)
    trainer = Trainer(config, tmp_path, progress=False)
    with torch.no_grad():
        trainer.model.head.head.weight.zero_()
        trainer.model.head.head.bias.zero_()
    batch = trainer.batches.batch(0, 0)
    batch.target_latents = batch.history_latents[:, :, -1:].expand_as(batch.target_latents).clone()
    losses = {
        clean: training_loss(trainer.model, batch, config.replace(clean_anchor=clean), step_generator(0, 0, 0, 1))
        .flow_loss.item()
        for clean in (False, True)
    }
    assert losses[True] < 0.5 * losses[False], losses


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_action_lr_scale_puts_the_action_modules_in_a_faster_group_that_the_schedule_also_warms(tmp_path):
    trainer = Trainer(TINY.replace(action_lr_scale=10.0, warmup_steps=5), tmp_path, progress=False)
    base, action = trainer.optimizer.param_groups
    names = {id(p): name for name, p in trainer.trainable}
    assert {names[id(p)].split(".")[0] for p in action["params"]} <= {"blocks", "action_projectors"}
    assert all("action_experts" in names[id(p)] or names[id(p)].startswith("action_projectors")
               for p in action["params"])
    assert len(base["params"]) + len(action["params"]) == len(trainer.trainable)
    assert action["lr"] == pytest.approx(10.0 * base["lr"])
    before = {id(p): p.detach().clone() for p in action["params"]}
    trainer.fit()
    assert action["lr"] == pytest.approx(10.0 * base["lr"])  # one schedule for both
    assert any(not torch.equal(before[id(p)], p) for p in action["params"])
    assert len(Trainer(TINY, tmp_path / "one", progress=False).optimizer.param_groups) == 1  # old checkpoints resume
    with pytest.raises(AstraError, match="action_lr_scale"):
        Trainer(TINY.replace(action_lr_scale=0.0), tmp_path / "bad", progress=False)


def test_synthetic_batches_are_a_function_of_step_and_rank():
    source = SyntheticBatches(4, (4, 4), (1, 3), 2, 2, seed=0)
    a, b = source.batch(5, 0), source.batch(5, 0)
    assert torch.equal(a.target_latents, b.target_latents)
    assert not torch.equal(a.target_latents, source.batch(5, 1).target_latents)
    frames = a.action_values.shape[1]
    assert frames == a.history_latents.shape[2] + 2 and a.action_values[:, 0].eq(0).all()


def test_export_writes_an_astra_checkpoint_with_ema_weights(tmp_path):
    from astra.model.checkpoints import load_astra

    trainer = Trainer(TINY.replace(steps=2), tmp_path, progress=False)
    trainer.fit()
    path = trainer.export()
    model, metadata = load_astra(path)
    assert metadata["step"] == 2 and metadata["weights"] == "ema" and "git_revision" in metadata
    name = next(iter(trainer.ema.shadow))
    assert torch.equal(model.state_dict()[name], trainer.ema.shadow[name])


def test_exported_sampling_noises_memory_as_training_did(tmp_path):
    """The exported model plays with its memory at the lowest level training noised memory at, else clean."""
    from astra.model.checkpoints import load_astra

    noisy = Trainer(TINY.replace(steps=0, noisy_memory_prob=0.5, noisy_memory_range=(0.25, 0.7)), tmp_path / "a",
                    progress=False)  # fmt: skip
    clean = Trainer(TINY.replace(steps=0, noisy_memory_prob=0.0), tmp_path / "b", progress=False)
    assert noisy.sampling_defaults()["history_noise"] == 0.25
    assert clean.sampling_defaults()["history_noise"] == 0.0
    _, metadata = load_astra(noisy.export())
    assert metadata["sampling"]["history_noise"] == 0.25


def test_diffusion_forcing_splits_the_kept_window_into_memory_and_causal_targets(tmp_path):
    from astra.model.config import HistoryBudget
    from astra.train.trainer import diffusion_forcing_split

    overrides = {"text_dim": 0, "text_len": 0, "chunk_frames": 1,
                 "history": HistoryBudget(keep_first=True, full=2, compressed_2x=0, compressed_4x=0)}  # fmt: skip
    config = TINY.replace(model_overrides=overrides, history_range=(6, 6), diffusion_forcing=True, batch_size=2)
    trainer = Trainer(config, tmp_path, progress=False)
    batch = trainer.batches.batch(0, 0)  # 6 history frames + 1 target
    window = torch.cat((batch.history_latents[:, :, [0, 4, 5]], batch.target_latents), dim=2)  # first + 2 newest
    window_actions = batch.action_values[:, [0, 4, 5, 6]]
    splits = set()
    for seed in range(40):
        split = diffusion_forcing_split(batch, trainer.model_config, torch.Generator().manual_seed(seed))
        memory = split.history_latents.shape[2]
        splits.add(memory)
        assert torch.equal(torch.cat((split.history_latents, split.target_latents), dim=2), window)
        assert torch.equal(split.action_values, window_actions)
    assert splits == {1, 2, 3}  # every boundary after the first frame is drawn

    spy = Spy(trainer.model)
    out = training_loss(spy, batch, config, step_generator(0, 0, 0, 1), trainer.model_config)
    kwargs = spy.calls[0]
    assert kwargs["causal_target"] is True and torch.isfinite(out.loss)
    with pytest.raises(AstraError, match="model config"):
        training_loss(spy, batch, config, step_generator(0, 0, 0, 1))


@pytest.mark.parametrize("chunk_frames", [1, 2])
def test_diffusion_forcing_draws_one_flow_time_per_target_chunk(tmp_path, chunk_frames):
    from astra.model.config import HistoryBudget

    overrides = {"text_dim": 0, "text_len": 0, "chunk_frames": chunk_frames,
                 "history": HistoryBudget(keep_first=True, full=3, compressed_2x=0, compressed_4x=0)}  # fmt: skip
    config = TINY.replace(model_overrides=overrides, history_range=(4, 4), diffusion_forcing=True, batch_size=2)
    trainer = Trainer(config, tmp_path, progress=False)
    seen = []
    model = trainer.model

    def record(target, timesteps, **kwargs):
        seen.append(timesteps.clone())
        return model(target, timesteps, **kwargs)

    for seed in range(10):
        training_loss(record, trainer.batches.batch(0, 0), config, step_generator(0, 0, seed, 1), trainer.model_config)
    several = [t.unflatten(1, (-1, chunk_frames)) for t in seen if t.shape[1] > chunk_frames]
    assert several, "no draw gave more than one target chunk"
    assert all(torch.all(t == t[..., :1]) for t in several)  # one level per chunk
    assert all(not torch.all(t == t[:, :1]) for t in several)  # chunks of one sample have their own levels
    assert Trainer(config.replace(steps=2), tmp_path / "fit", progress=False).fit()[-1]["step"] == 2


@pytest.mark.parametrize("clean_anchor", [False, True])
def test_diffusion_forcing_anchors_each_target_chunk_at_the_last_frame_of_the_chunk_before(tmp_path, clean_anchor):
    """As a rollout anchors each chunk at the finished chunk before and moves it by that chunk's actions alone: with a
    zero network, the loss is the copy prior's around the newest memory frame (first chunk) or chunk k - 1's last
    clean frame (chunk k), moved by a motion that restarts at each chunk."""
    from astra.diffusion.flow import copy_anchor, copy_prior_velocity, flow_matching_loss, velocity_target
    from astra.model.config import HistoryBudget
    from astra.train.trainer import diffusion_forcing_split

    overrides = {"text_dim": 0, "text_len": 0, "chunk_frames": 2, "motion_prior": True,
                 "history": HistoryBudget(keep_first=True, full=5, compressed_2x=0, compressed_4x=0)}  # fmt: skip
    config = TINY.replace(
        model_overrides=overrides, history_range=(6, 6), diffusion_forcing=True, batch_size=2, copy_prior=True,
        clean_anchor=clean_anchor, noisy_memory_prob=1.0, noisy_memory_range=(0.3, 0.3), action_dropout=0.0,
    )
    trainer = Trainer(config, tmp_path, progress=False)
    model, chunk = trainer.model, 2
    with torch.no_grad():
        model.head.head.weight.zero_()
        model.head.head.bias.zero_()
        model.motion_prior.steps["keyboard_mouse"].weight.normal_(std=0.2, generator=torch.Generator().manual_seed(0))
    seen = {}

    def record(target, timesteps, **kwargs):
        seen.update(noisy=target, timesteps=timesteps, **kwargs)
        return model(target, timesteps, **kwargs)

    chunks = set()
    batch = trainer.batches.batch(0, 0)  # 6 history frames + 1 two-frame target chunk: 1 to 3 target chunks
    for seed in range(8):
        out = training_loss(record, batch, config, step_generator(0, 0, seed, 1), trainer.model_config)
        split = diffusion_forcing_split(batch, trainer.model_config, step_generator(0, 0, seed, 1))
        clean, memory = split.target_latents, split.history_latents.shape[2]
        t = seen["timesteps"]
        noise = (seen["noisy"] - (1 - t[:, None, :, None, None]) * clean) / t[:, None, :, None, None]
        newest = (split.history_latents if clean_anchor else seen["history_latents"])[:, :, -1:]
        starts = [newest] + [clean[:, :, k * chunk - 1 : k * chunk] for k in range(1, clean.shape[2] // chunk)]
        chunks.add(len(starts))
        with torch.no_grad():
            anchor = torch.cat([
                copy_anchor(start, model.motion_prior(seen["actions"].frames(memory + k * chunk, memory + (k + 1) * chunk)))
                for k, start in enumerate(starts)
            ], dim=2)  # fmt: skip
        velocity = copy_prior_velocity(seen["noisy"], t, anchor, config.copy_prior_sigma)
        expected = flow_matching_loss(
            velocity, velocity_target(clean, noise), t, config.flow.loss_weighting, per_sample=True
        )
        torch.testing.assert_close(out.sample_flow_loss, expected, rtol=1e-4, atol=1e-6)
    assert chunks == {1, 2, 3}


def test_init_from_an_astra_checkpoint_continues_its_weights(tmp_path):
    from astra.model.checkpoints import save_astra

    source = Trainer(TINY, tmp_path / "source", progress=False)
    save_astra(source.model, tmp_path / "ckpt")
    follow = Trainer(TINY.replace(init_from=str(tmp_path / "ckpt")), tmp_path / "follow", progress=False)
    for name, tensor in source.model.state_dict().items():
        assert torch.equal(tensor, follow.model.state_dict()[name]), name
    other = TINY.replace(init_from=str(tmp_path / "ckpt"), model_overrides={**TINY.model_overrides, "num_layers": 1})
    with pytest.raises(AstraError, match="differs .* in num_layers;"):
        Trainer(other, tmp_path / "other", progress=False)
    # which parameters train is a training choice, not the checkpoint's: a fine-tune of the action modules alone
    action_only = TINY.replace(
        init_from=str(tmp_path / "ckpt"), model_overrides={**TINY.model_overrides, "trainable": ["action_projectors"]}
    )
    trainer = Trainer(action_only, tmp_path / "action-only", progress=False)
    trains = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trains and all(name.startswith("action_projectors.") for name in trains)


def test_training_on_from_a_checkpoint_keeps_its_sampling_settings_and_its_motion_prior(tmp_path):
    """Going on from our own checkpoint must not silently change how it plays (its history noise was chosen for
    it) nor, with motion_fit_batches=0, its fitted motion prior: loaded, then frozen like a fitted one."""
    from astra.model.checkpoints import load_astra, save_astra

    motion = {**TINY.model_overrides, "motion_prior": True, "normalize_actions": True}
    source = Trainer(TINY.replace(model_overrides=motion, copy_prior=True), tmp_path / "source", progress=False)
    with torch.no_grad():
        for parameter in source.model.motion_prior.parameters():
            parameter.normal_()
    sampling = {"num_steps": 6, "shift": 1.5, "guidance_scale": 2.0, "guidance_interval": [0.5, 1.0],
                "guidance_outside": 0.0, "history_noise": 0.3, "noise_scale": 0.7, "stats_anchor": 0.2,
                "stats_anchor_match": "covariance", "guide_anchor": True}
    save_astra(source.model, tmp_path / "ckpt", {"sampling": sampling})
    config = TINY.replace(
        model_overrides=motion, copy_prior=True, init_from=str(tmp_path / "ckpt"), steps=2, noisy_memory_range=(0.2, 0.8)
    )
    follow = Trainer(config, tmp_path / "follow", progress=False)
    assert not any(p.requires_grad for p in follow.model.motion_prior.parameters())
    follow.fit()
    _, metadata = load_astra(follow.export())
    assert metadata["sampling"] == sampling
    chosen = Trainer(config.replace(sampling={"guidance_scale": 1.5}), tmp_path / "chosen", progress=False)
    assert chosen.sampling_defaults() == sampling | {"guidance_scale": 1.5}  # the config's own choice wins
    followed, _ = load_astra(tmp_path / "follow" / "export")
    for name, tensor in source.model.motion_prior.state_dict().items():
        assert torch.equal(tensor, followed.motion_prior.state_dict()[name]), name

    # a setting without weights (motion_prior_min_t) comes from the training config, not the checkpoint
    gated = {**motion, "motion_prior_min_t": 0.6}
    regated = Trainer(config.replace(model_overrides=gated), tmp_path / "gated", progress=False)
    assert regated.model.config.motion_prior_min_t == 0.6
    assert load_astra(regated.export())[0].config.motion_prior_min_t == 0.6


def test_action_statistics_are_the_per_column_mean_and_std_of_the_batches():
    from astra.train.trainer import action_statistics

    batches = SyntheticBatches(4, (4, 4), (1, 3), 2, batch_size=3)
    mean, std = action_statistics(batches, num_batches=5)["keyboard_mouse"]
    values = torch.cat([row for step in range(5) for row in batches.batch(step, 0).action_values])
    assert torch.allclose(mean, values.mean(0)) and torch.allclose(std, values.std(0, unbiased=False))
    assert 0.2 < float(mean[0]) < 0.6  # the 'forward' key is pressed in about half the frames


def test_normalised_actions_take_data_statistics_and_a_raw_checkpoint_carries_over_exactly(tmp_path):
    from astra.model.action_experts import ActionInput
    from astra.model.checkpoints import load_astra, save_astra

    normalised = {**TINY.model_overrides, "normalize_actions": True}
    fresh = Trainer(TINY.replace(model_overrides=normalised), tmp_path / "fresh", progress=False).model
    assert float(fresh.action_projectors.normalizers["keyboard_mouse"].mean[0]) > 0.1  # set from the batches
    save_astra(fresh, tmp_path / "normalised")  # the statistics travel with the weights
    assert torch.equal(load_astra(tmp_path / "normalised")[0].action_projectors.normalizers["keyboard_mouse"].std,
                       fresh.action_projectors.normalizers["keyboard_mouse"].std)

    raw = Trainer(TINY, tmp_path / "raw", progress=False).model
    with torch.no_grad():
        raw.action_projectors.projectors["keyboard_mouse"].weight.normal_()  # an action pathway that matters
        for expert in (expert for block in raw.blocks for expert in block.action_experts.experts):
            expert[-1].weight.normal_(std=0.1)
    save_astra(raw, tmp_path / "raw-ckpt")
    carried_config = TINY.replace(model_overrides=normalised, init_from=str(tmp_path / "raw-ckpt"))
    carried = Trainer(carried_config, tmp_path / "carried", progress=False).model
    batch = SyntheticBatches(4, (4, 4), (2, 2), 2, batch_size=2).batch(0, 0)
    inputs = (torch.randn_like(batch.target_latents), torch.full((2,), 0.5))
    kwargs = {"history_latents": batch.history_latents, "actions": ActionInput(batch.action_values, batch.modality)}
    with torch.no_grad():
        assert torch.allclose(carried(*inputs, **kwargs).velocity, raw(*inputs, **kwargs).velocity, atol=1e-5)
    assert float(carried.action_projectors.normalizers["keyboard_mouse"].mean[0]) > 0.1


def test_a_motion_prior_that_matches_the_actions_moves_the_copy_anchor_and_lowers_the_loss(tmp_path):
    """Synthetic latents roll one pixel along width whenever 'forward' is held: a motion prior with that shift
    makes a zero network's loss clearly lower than the plain copy prior."""
    from astra.model.action_experts import ActionInput

    motion = {**TINY.model_overrides, "motion_prior": True, "normalize_actions": True}
    config = TINY.replace(
        model_overrides=motion, noisy_memory_prob=0.0, action_dropout=0.0, batch_size=8, copy_prior=True
    )
    trainer = Trainer(config, tmp_path, progress=False)
    model = trainer.model
    with torch.no_grad():
        model.head.head.weight.zero_()
        model.head.head.bias.zero_()
    batch = trainer.batches.batch(0, 0)
    actions = ActionInput(batch.action_values, batch.modality)
    out = model(batch.target_latents, torch.full((8,), 0.5), history_latents=batch.history_latents, actions=actions)
    assert out.motion.abs().max() == 0  # a fresh motion prior is the plain copy prior

    def loss():
        return training_loss(model, batch, config, step_generator(0, 0, 0, 1)).flow_loss.item()

    plain = loss()
    with torch.no_grad():  # shift x = -1 pixel when 'forward' (raw column 0, standardised by the model) is held
        normalizer = model.action_projectors.normalizers["keyboard_mouse"]
        one_pixel = -2.0 / batch.target_latents.shape[-1]
        step = model.motion_prior.steps["keyboard_mouse"]
        step.weight[0, 0], step.bias[0] = one_pixel * normalizer.std[0], one_pixel * normalizer.mean[0]
    assert loss() < 0.8 * plain, (loss(), plain)

    # motion_prior_min_t: the anchor moves only for target frames at t >= it (per frame), else stays
    frames = batch.target_latents.shape[2]
    timesteps = torch.tensor([0.9, 0.2]).repeat_interleave(4)[:, None].expand(8, frames)
    moving = model(batch.target_latents, timesteps, history_latents=batch.history_latents, actions=actions).motion
    model.config = model.config.replace(motion_prior_min_t=0.5)
    gated = model(batch.target_latents, timesteps, history_latents=batch.history_latents, actions=actions).motion
    assert moving[:4].abs().max() > 0 and torch.equal(gated[:4], moving[:4])
    assert gated[4:].abs().max() == 0 and moving[4:].abs().max() > 0


def test_fitting_the_motion_prior_before_training_learns_the_datas_shift(tmp_path):
    """Synthetic latents roll one pixel along width whenever 'forward' is held: the fit (astra/train/motion_fit.py)
    must find that shift from the actions, on batches it did not see, and keep it (frozen) through training."""
    from astra.diffusion.flow import copy_anchor
    from astra.model.action_experts import ActionInput

    motion = {**TINY.model_overrides, "motion_prior": True, "normalize_actions": True}
    config = TINY.replace(
        model_overrides=motion, batch_size=8, copy_prior=True, motion_fit_batches=8, motion_fit_iterations=200
    )
    trainer = Trainer(config, tmp_path, progress=False)
    model = trainer.model
    batch = trainer.batches.batch(100, 0)  # not among the fitted batches
    target_frames = batch.target_latents.shape[2]
    actions = ActionInput(batch.action_values[:, -target_frames:], batch.modality)
    with torch.no_grad():
        fitted = model.motion_prior(actions, model.action_projectors.normalizers)
    forward = batch.action_values[:, -target_frames:, 0]
    one_pixel = -2.0 / batch.target_latents.shape[-1]  # grid units; the content moves right by one latent pixel
    assert 0 < forward.mean() < 1
    assert torch.allclose(fitted[..., 0], one_pixel * forward.cumsum(dim=1), atol=0.1 * abs(one_pixel))
    newest = batch.history_latents[:, :, -1:]
    moved = ((copy_anchor(newest, fitted) - batch.target_latents) ** 2).mean()
    still = ((newest - batch.target_latents) ** 2).mean()
    assert moved < 0.5 * still, (moved, still)  # what remains: the column the roll wraps around (of 4)
    assert not any(p.requires_grad for p in model.motion_prior.parameters())  # frozen as fitted
    assert not any(name.startswith("motion_prior.") for name in trainer.ema.shadow)


def test_the_fitted_motion_prior_holds_every_modalitys_still_action_still():
    """A free intercept would learn the data's mean drift (here every frame slides one latent pixel whatever the
    action) and slide an idle player's view; the fit keeps the still action (no key, identity pose) at zero motion
    while still fitting the motion that the actions explain."""
    from astra.actions.align import identity_action
    from astra.actions.modalities import get_modality
    from astra.model.action_experts import ActionInput
    from astra.model.transformer import AstraTransformer
    from astra.train.batches import TrainBatch
    from astra.train.motion_fit import fit_motion_prior

    modalities = ("keyboard_mouse", "camera7")
    overrides = {**TINY.model_overrides, "motion_prior": True, "normalize_actions": True, "modalities": modalities}
    model = AstraTransformer(build_model_config(TINY.replace(model_overrides=overrides)))
    generator = torch.Generator().manual_seed(0)

    class Drifting:
        sources = ("drift",)

        def batch(self, step, rank):
            newest = torch.randn(4, 4, 1, 8, 16, generator=generator)
            target = torch.cat([torch.roll(newest, shifts=k + 1, dims=-1) for k in range(3)], dim=2)
            actions = torch.rand(4, 4, 8, generator=generator)
            modality = tuple(modalities[i % 2] for i in range(4))
            for i, name in enumerate(modality):
                actions[i, :, : get_modality(name).width] += torch.from_numpy(identity_action(name))
            return TrainBatch(newest, target, actions, modality)

    model.action_projectors.set_statistics(
        {name: (torch.from_numpy(identity_action(name)) + 0.5, torch.full((get_modality(name).width,), 0.3))
         for name in modalities},
        keep_function=False,
    )
    errors = fit_motion_prior(model, Drifting(), 8, 50, action_dropout=0.0, seed=0, radius=2)
    assert all(after < before for before, after in errors.values()), errors  # the actions' mean still moves it
    for name in modalities:
        still = torch.from_numpy(identity_action(name)).expand(1, 3, -1)
        with torch.no_grad():
            motion = model.motion_prior(ActionInput(still, (name,)), model.action_projectors.normalizers)
        assert motion.abs().max() < 1e-6, (name, motion)


def test_the_shift_search_finds_shifts_up_to_its_radius_only():
    """The least-squares start only sees motion inside the search radius (motion_fit_radius): a fast turn of 3
    latent pixels per frame is found with radius 3 and clipped with radius 1."""
    from astra.train.motion_fit import best_pixel_shifts

    newest = torch.randn(2, 4, 1, 8, 16, generator=torch.Generator().manual_seed(0))
    target = torch.roll(newest, shifts=3, dims=-1)  # content moves right by 3 latent pixels
    found = best_pixel_shifts(newest, target, radius=3)
    assert torch.allclose(found[..., 0], torch.tensor(-2.0 * 3 / 16)) and torch.all(found[..., 1] == 0)
    clipped = best_pixel_shifts(newest, target, radius=1)
    assert torch.all(clipped[..., 0].abs() <= 2.0 / 16 + 1e-6)
    with pytest.raises(AstraError, match="motion_fit_radius"):
        TINY.replace(motion_fit_radius=0).validate()


def test_fitting_a_motion_prior_needs_a_model_that_has_one(tmp_path):
    with pytest.raises(AstraError, match="no motion prior"):
        Trainer(TINY.replace(copy_prior=True, motion_fit_batches=2), tmp_path, progress=False)
    with pytest.raises(AstraError, match="copy_prior"):
        TINY.replace(motion_fit_batches=2).validate()


def test_max_minutes_stops_saves_and_resumes_where_the_clock_stopped_it(tmp_path, capsys):
    config = TINY.replace(steps=6, save_every=100, log_every=100, max_minutes=1e-9, val_every=100, val_batches=1)
    Trainer(config, tmp_path, progress=False).fit()
    assert "max_minutes (1e-09) reached: stopped at step 1 of 6" in capsys.readouterr().err
    assert [path.name for path in list_checkpoints(tmp_path)] == ["step-00000001.pt"]
    assert [row["step"] for row in read_metrics(tmp_path, "validation.csv")] == [0, 1]  # the curve ends at the stop
    assert [row["step"] for row in read_metrics(tmp_path)] == [1]  # so does the training log
    resumed = Trainer(config.replace(max_minutes=0.0), tmp_path, progress=False)
    resumed.fit(resume=True)
    assert resumed.step == 6
    with pytest.raises(AstraError, match="max_minutes must be >= 0"):
        TINY.replace(max_minutes=-1.0).validate()


def test_bf16_autocast_training_runs_validates_and_exports(tmp_path):
    """What a CUDA machine runs by default (mixed_precision auto -> bf16 autocast), here on the CPU: an action
    projector's bf16 output written into its float32 buffer crashed the first step."""
    from astra.model.checkpoints import load_astra

    overrides = {"text_dim": 0, "text_len": 0, "normalize_actions": True, "motion_prior": True}
    config = TINY.replace(model_overrides=overrides, copy_prior=True, mixed_precision="bf16", steps=3, val_every=3,
                          val_batches=1)  # fmt: skip
    trainer = Trainer(config, tmp_path, progress=False)
    assert trainer.autocast_dtype == torch.bfloat16
    rows = trainer.fit()
    assert all(math.isfinite(row["loss"]) for row in rows)
    assert all(math.isfinite(row["val_loss"]) for row in read_metrics(tmp_path, "validation.csv"))
    model, _ = load_astra(trainer.export())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
