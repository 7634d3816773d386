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
