import pytest
import torch

from astra.model.config import AstraConfig
from astra.model.transformer import AstraTransformer
from astra.rollout.session import RolloutConfig, RolloutSession
from astra.vae.small import SMALL_VAE_PRESETS, SmallVAE


def make_tiny(chunk_frames: int = 1, guidance: float = 3.0, seed: int = 0, normalize_actions: bool = False):
    """A random tiny Astra + random tiny VAE at 32x32 (checks the plumbing, not the picture)."""
    torch.manual_seed(seed)
    vae = SmallVAE(SMALL_VAE_PRESETS["astra-tiny-vae"]).eval()
    config = AstraConfig.from_preset(
        "astra-tiny", in_channels=vae.latent_channels, out_channels=vae.latent_channels, text_dim=0, text_len=0,
        chunk_frames=chunk_frames, kv_cache_chunks=3, resolution=(16, 16), normalize_actions=normalize_actions,
    )
    model = AstraTransformer(config).eval()
    # Random non-zero expert outputs so that actions matter in these tests.
    for block in model.blocks:
        for parameter in block.action_experts.parameters():
            torch.nn.init.normal_(parameter, std=0.2)
    return model, vae, RolloutConfig(num_steps=2, guidance_scale=guidance, seed=seed)


@pytest.fixture
def tiny_parts():
    """Function building (model, vae, rollout config) of a random tiny Astra."""
    return make_tiny


@pytest.fixture
def tiny_session():
    def build(modality: str = "keyboard_mouse", **options):
        model, vae, config = make_tiny(**options)
        return RolloutSession(model, vae, modality, config)

    return build
