"""The committed weights must load with the code beside them (strict: a renamed module fails here, not in `astra
play`)."""

import torch

from astra.rollout.session import load_rollout


def test_the_shipped_model_and_its_vae_load_strictly_and_decode():
    model, vae, metadata, config = load_rollout("astra-small")
    assert metadata["step"] > 0 and config.num_steps >= 1
    assert set(metadata["action_meta"]) == {"doom", "robot", "camera", "drive"}
    latents = torch.zeros(1, model.config.in_channels, 1, 16, 16)
    with torch.no_grad():
        frames = vae.decode(latents)
    assert torch.isfinite(frames).all()


def test_given_sampler_settings_override_the_checkpoints_and_unset_ones_keep_them():
    _, _, metadata, own = load_rollout("astra-small")
    _, _, _, given = load_rollout("astra-small", shift=3.0, noise_scale=0.5)
    assert (given.shift, given.noise_scale) == (3.0, 0.5)
    assert own.shift == metadata["sampling"]["shift"] and own.noise_scale == metadata["sampling"]["noise_scale"]
    assert given.guidance_scale == own.guidance_scale == metadata["sampling"]["guidance_scale"]


def test_the_shipped_model_keeps_its_latents_bounded_over_a_long_drive():
    """With its own sampling settings (memory noised to `history_noise`) the shipped model's latents stay at the
    data's scale (std ~1) over 32 chunks; with clean memory the same weights reach std 8.9 on this input."""
    import numpy as np

    from astra.rollout.session import RolloutSession

    model, vae, metadata, config = load_rollout("astra-small")
    session = RolloutSession(model, vae, "vehicle7", config, metadata["action_meta"]["drive"])
    image = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    session.start(image, seed=0)
    stds = []
    for chunk in range(32):
        rows = np.zeros((session.frames_per_step, 7), np.float32)
        rows[:, 6] = 1.0  # identity rotation (qw)...
        rows[:, 2] = 0.5  # ...driving forward, steering back and forth
        rows[:, 4] = 0.02 * np.sin(chunk / 3)
        session.step(rows)
        stds.append(float(session.newest_latent.float().std()))
    assert max(stds) < 2.0, [round(s, 2) for s in stds]
