import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from astra.data.encode import INDEX_FILE, LATENT_FORMAT_VERSION
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


def write_latents(root, specs, channels=4, size=8, frames=9, seed=0):
    """A latent folder in `astra data encode`'s format: float16 [C, F, h, w] latents, float32 actions, one shard per
    two clips, index entries as encode writes them. `specs`: (source, modality, width, split) per episode."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries, shards = [], {}
    for number, (source, modality, width, split) in enumerate(specs):
        shard = f"shard-r0-{number // 2:05d}.safetensors"
        key = str(number % 2)
        scale = 0.5 + 0.5 * np.arange(channels)[:, None, None, None]  # channels of different spread
        latents = (rng.standard_normal((channels, frames, size, size)) * scale + 0.3).astype(np.float16)
        shards.setdefault(shard, {})[f"{key}.latents"] = torch.from_numpy(latents)
        shards[shard][f"{key}.actions"] = torch.from_numpy(rng.standard_normal((frames, width)).astype(np.float32))
        entries.append({"episode": f"{source}-{split}-{number:06d}", "key": key, "frame_range": [0, 4 * frames - 3],
                        "latent_frames": frames, "modality": modality, "source": source, "split": split,
                        "caption": "", "scales": {"translation_scale": 0.1}, "shard": shard})  # fmt: skip
    for shard, tensors in shards.items():
        save_file(tensors, str(root / shard))
    (root / INDEX_FILE).write_text(json.dumps({"format_version": LATENT_FORMAT_VERSION, "vae": "v", "entries": entries}))
    return root


@pytest.fixture(scope="session")
def latent_folder():
    """Function writing a latent folder in `astra data encode`'s format (see write_latents)."""
    return write_latents
