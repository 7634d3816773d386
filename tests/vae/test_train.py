"""Small-VAE training on synthetic episodes: joint sampling, learning, exact resume, CLI."""

import dataclasses

import numpy as np
import pytest
import torch

from astra.cli import main
from astra.data.format import Episode, write_episode
from astra.errors import CheckpointError
from astra.vae import SMALL_VAE_PRESETS, SmallVAE, load_vae
from astra.vae.train import VAETrainConfig, evaluate_vae, load_clip_pool, ssim, train_vae

WORLDS = ("stripes", "blobs")


def synthetic_frames(world: str, seed: int, frames: int = 21, size: int = 16) -> np.ndarray:
    """Smoothly moving patterns, different per world."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    phase = rng.uniform(0, 2 * np.pi, 3)
    video = []
    for t in range(frames):
        if world == "stripes":
            channels = [np.sin(2 * np.pi * 2 * (x + 0.05 * t) + p) for p in phase]
        else:
            centre = 0.5 + 0.2 * np.sin(0.3 * t + phase)
            channels = [np.exp(-((x - c) ** 2 + (y - 0.5) ** 2) * 10) * 2 - 1 for c in centre]
        video.append(np.stack(channels, -1))
    return ((np.stack(video) + 1) * 127.5).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    for world_index, world in enumerate(WORLDS):
        for index, split in enumerate(("train", "train", "heldout")):
            frames = synthetic_frames(world, seed=10 * world_index + index)
            episode = Episode(
                frames=frames,
                actions=np.zeros((len(frames), 8), np.float32),
                modality="keyboard_mouse",
                fps=16.0,
                split=split,
                meta={"world": world},
            )
            write_episode(root, f"{world}-{index}", episode)
    return root


FAST = VAETrainConfig(
    preset="astra-tiny-vae", batch_size=4, clip_frames=5, learning_rate=5e-3, warmup_steps=0, stats_clips=4
)


def _with(config, **changes):
    return dataclasses.replace(config, **changes)


def test_pool_samples_all_worlds_deterministically(episodes):
    pool = load_clip_pool([episodes], split="train")
    assert pool.worlds == sorted(WORLDS) and all(len(v) == 2 for v in pool.episodes.values())
    first = pool.sample(torch.Generator().manual_seed(0), 4, 9, (16, 16))
    again = pool.sample(torch.Generator().manual_seed(0), 4, 9, (16, 16))
    assert first.shape == (4, 3, 9, 16, 16) and torch.equal(first, again)
    assert -1 <= first.min() and first.max() <= 1


def test_training_improves_reconstruction_and_sets_statistics(episodes, tmp_path):
    pool = load_clip_pool([episodes], split="train")
    torch.manual_seed(0)
    untrained = evaluate_vae(SmallVAE(SMALL_VAE_PRESETS["astra-tiny-vae"]).eval(), pool)
    vae = train_vae(pool, tmp_path / "vae", _with(FAST, steps=100))
    trained = evaluate_vae(vae, pool)
    for world in WORLDS:
        assert trained[world]["psnr"] > untrained[world]["psnr"] + 3.0
    latents = vae.encode(pool.sample(torch.Generator().manual_seed(5), 4, 5, (16, 16)))
    assert 0.3 < latents.std().item() < 3.0  # normalised to about unit variance
    assert vae.config.latents_std is not None
    assert trained["speed"]["decode_ms_per_frame"] > 0


def test_resume_continues_exactly(episodes, tmp_path):
    pool = load_clip_pool([episodes], split="train")
    config = _with(FAST, final_lr_fraction=1.0, checkpoint_every=2)  # constant LR: schedule ignores `steps`
    straight = train_vae(pool, tmp_path / "straight", _with(config, steps=4))
    train_vae(pool, tmp_path / "resumed", _with(config, steps=2))
    resumed = train_vae(pool, tmp_path / "resumed", _with(config, steps=4), resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(Exception, match="--resume"):
        train_vae(pool, tmp_path / "resumed", _with(config, steps=4))
    with pytest.raises(CheckpointError, match=r"learning_rate: .* -> 0\.5; seed: 0 -> 3"):  # not a silent mix
        train_vae(pool, tmp_path / "resumed", _with(config, steps=6, learning_rate=0.5, seed=3), resume=True)
    train_vae(pool, tmp_path / "resumed", _with(config, steps=6, checkpoint_every=3), resume=True)  # may change


def test_ssim_is_one_for_identical_and_lower_for_noisy():
    video = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    assert ssim(video, video) == pytest.approx(1.0, abs=1e-5)
    assert ssim(video + 0.3 * torch.randn_like(video), video) < 0.9


def test_cli_train_and_eval(episodes, tmp_path, capsys):
    out = tmp_path / "cli-vae"
    args = ["vae", "train", "--episodes", str(episodes), "--out", str(out), "--preset", "astra-tiny-vae"]
    assert main(args + ["--steps", "2", "--batch-size", "1", "--clip-frames", "5"]) == 0
    assert isinstance(load_vae(out).encode(torch.zeros(1, 3, 5, 16, 16)), torch.Tensor)
    assert main(["vae", "eval", "--vae", str(out), "--episodes", str(episodes), "--max-frames", "9"]) == 0
    printed = capsys.readouterr().out
    assert all(world in printed for world in WORLDS) and "ms/frame" in printed
    for frames in ("4", "0"):  # 4 printed a meaningless timing; 0 a message about T=6
        assert main(["vae", "eval", "--vae", str(out), "--episodes", str(episodes), "--max-frames", frames]) == 2
        assert f"--max-frames must be 4k + 1 (1, 5, 9, ...), got {frames}" in capsys.readouterr().err
    assert main(args + ["--steps", "2", "--clip-frames", "8"]) == 2
    assert "4k+1" in capsys.readouterr().err
    assert main(args + ["--steps", "2", "--lr", "-1"]) == 2
    assert "--lr" in capsys.readouterr().err
    assert main(args + ["--steps", "2", "--kl-weight", "nan"]) == 2
    assert "kl_weight" in capsys.readouterr().err
    assert main(args + ["--steps", "2", "--init-from", str(tmp_path / "nowhere")]) == 2
    assert "nowhere/config.json" in capsys.readouterr().err


def test_decoder_finetune_keeps_the_latent_space(tmp_path):
    """--freeze-encoder: encodings (and their statistics) are bit-identical, only the decoder changes."""
    import torch

    from astra.vae.small import SMALL_VAE_PRESETS, SmallVAE, load_small_vae, save_small_vae
    from astra.vae.train import ClipPool, VAETrainConfig, train_vae

    torch.manual_seed(0)
    base = SmallVAE(SMALL_VAE_PRESETS["astra-tiny-vae"])
    base.set_latent_stats(torch.full((4,), 0.5), torch.full((4,), 2.0))
    save_small_vae(base, tmp_path / "base")
    rng = np.random.default_rng(0)
    pool = ClipPool({"doom": [rng.integers(0, 255, (9, 16, 16, 3), dtype=np.uint8)]})
    config = VAETrainConfig(preset="astra-tiny-vae", steps=3, batch_size=2, clip_frames=5, checkpoint_every=10,
                            init_from=str(tmp_path / "base"), freeze_encoder=True)
    tuned = train_vae(pool, tmp_path / "tuned", config)
    reloaded, original = load_small_vae(tmp_path / "tuned"), load_small_vae(tmp_path / "base")
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    assert torch.equal(reloaded.encode(video), original.encode(video))
    assert any(not torch.equal(a, b) for a, b in zip(tuned.decoder.parameters(), original.decoder.parameters()))


def test_latent_change_against_a_reference(episodes, tmp_path, capsys):
    """--latents-vs: zero for the same encoder (a decoder-only change too), positive once the encoder moved,
    a named error for a reference with another latent layout."""
    from astra.errors import AstraError
    from astra.vae.small import save_small_vae

    pool = load_clip_pool([episodes], split="heldout")
    torch.manual_seed(0)
    reference = SmallVAE(SMALL_VAE_PRESETS["astra-tiny-vae"]).eval()
    new_decoder, new_encoder = SmallVAE(reference.config).eval(), SmallVAE(reference.config).eval()
    new_decoder.load_state_dict(reference.state_dict())
    new_encoder.load_state_dict(reference.state_dict())
    with torch.no_grad():
        for parameter in new_decoder.decoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        for parameter in new_encoder.encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    decoder_moved = evaluate_vae(new_decoder, pool, max_frames=9, reference=reference)
    encoder_moved = evaluate_vae(new_encoder, pool, max_frames=9, reference=reference)
    for world in WORLDS:
        assert decoder_moved[world]["latent_change"] == 0.0
        assert encoder_moved[world]["latent_change"] > 1e-4
    assert "latent_change" not in evaluate_vae(reference, pool, max_frames=9)[WORLDS[0]]
    other_layout = SmallVAE(dataclasses.replace(reference.config, z_dim=8)).eval()
    with pytest.raises(AstraError, match="same latent layout"):
        evaluate_vae(reference, pool, max_frames=9, reference=other_layout)

    save_small_vae(reference, tmp_path / "reference")
    save_small_vae(new_encoder, tmp_path / "moved")
    args = ["vae", "eval", "--vae", str(tmp_path / "moved"), "--episodes", str(episodes), "--max-frames", "9"]
    assert main(args + ["--latents-vs", str(tmp_path / "reference")]) == 0
    printed = capsys.readouterr().out
    assert "latent change" in printed and all(world in printed for world in WORLDS)
    assert main(args + ["--latents-vs", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_reference_frame_training_extends_the_decoder_and_resumes(tmp_path):
    """--reference-frame: the latent space stays, the new path trains, and an interrupted run resumes exactly."""
    from astra.errors import AstraError
    from astra.vae.small import load_small_vae, save_small_vae
    from astra.vae.train import ClipPool

    torch.manual_seed(0)
    save_small_vae(SmallVAE(SMALL_VAE_PRESETS["astra-tiny-vae"]), tmp_path / "base")
    rng = np.random.default_rng(0)
    pool = ClipPool({"doom": [rng.integers(0, 255, (13, 16, 16, 3), dtype=np.uint8)]})
    config = VAETrainConfig(preset="astra-tiny-vae", steps=4, batch_size=2, clip_frames=9, checkpoint_every=2,
                            init_from=str(tmp_path / "base"), freeze_encoder=True, reference_frame=True)
    tuned = train_vae(pool, tmp_path / "tuned", config)
    assert tuned.config.reference_frame
    assert any(p.abs().sum() > 0 for p in tuned.decoder.reference.to_decoder.parameters())  # left its zero start
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    base = load_small_vae(tmp_path / "base")
    assert torch.equal(tuned.encode(video), base.encode(video))
    for name, tensor in base.state_dict().items():  # only the new path trained
        assert torch.equal(tuned.state_dict()[name], tensor), name
    train_vae(pool, tmp_path / "halted", dataclasses.replace(config, steps=2))
    resumed = train_vae(pool, tmp_path / "halted", config, resume=True)
    for a, b in zip(resumed.state_dict().values(), tuned.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(AstraError, match="needs init_from"):
        dataclasses.replace(config, init_from=None, freeze_encoder=False).validate()


def test_temporal_gradient_loss_charges_hidden_motion():
    """A reconstruction that freezes a moving video costs more with the temporal term on; a still one does not."""
    from astra.errors import AstraError
    from astra.vae.train import vae_loss

    torch.manual_seed(0)
    vae = SmallVAE(SMALL_VAE_PRESETS["astra-tiny-vae"])
    moving = torch.from_numpy(synthetic_frames("stripes", seed=0, frames=5)).float().permute(3, 0, 1, 2)[None] / 127.5 - 1
    still = moving[:, :, :1].expand_as(moving).contiguous()
    on = _with(FAST, temporal_gradient_weight=1.0)
    losses = {}
    for name, video in (("moving", moving), ("still", still)):
        loss_off, parts = vae_loss(vae, video, FAST, torch.Generator().manual_seed(1))
        loss_on, _ = vae_loss(vae, video, on, torch.Generator().manual_seed(1))
        losses[name] = (loss_on - loss_off).item()
        assert abs(losses[name] - parts["motion"]) < 1e-5
    assert losses["moving"] > losses["still"]
    with pytest.raises(AstraError, match="temporal_gradient_weight"):
        _with(FAST, temporal_gradient_weight=-1.0).validate()
