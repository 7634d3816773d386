"""Video VAEs behind one protocol (docs/architecture.md, `VideoVAE`).

`load_vae(name_or_path)` returns either the small causal VAE trained here (`astra-small-vae`, a folder
with `model.safetensors` + `config.json`) or the Wan2.1 VAE through diffusers (a diffusers folder or the
original `Wan2.1_VAE.pth`). Both expose `encode`, `decode(latents, start=None)`, `stream_decoder(start=None)`,
`latent_channels`, `temporal_stride` and `spatial_stride`; latents are normalised per channel.
"""

from __future__ import annotations

from pathlib import Path

from astra.config_fields import read_json_object
from astra.errors import CheckpointError
from astra.weights import resolve_weights, weights_root
from astra.vae.common import TEMPORAL_STRIDE
from astra.vae.small import (
    CONFIG_FILE,
    SMALL_VAE_PRESETS,
    VAE_TYPE,
    SmallVAE,
    SmallVAEConfig,
    load_small_vae,
    save_small_vae,
)

def _is_small_vae_folder(path: Path) -> bool:
    config = path / CONFIG_FILE
    if not (path.is_dir() and config.is_file()):
        return False
    # an unreadable config.json is an error that names it: no VAE layout (ours or diffusers') loads without one
    return read_json_object(config, f"VAE config {config}", error=CheckpointError).get("type") == VAE_TYPE


def load_vae(name_or_path: str | Path):
    """A name under the weights folder (`astra-small-vae`) or a path to either VAE's checkpoint."""
    path = resolve_weights(name_or_path)
    if path is None:
        hint = " (train it with `astra vae train`, see weights/README.md)" if str(name_or_path) == VAE_TYPE else ""
        raise CheckpointError(f"no VAE named or found at {name_or_path!r}; looked in {weights_root()}{hint}")
    if _is_small_vae_folder(path):
        return load_small_vae(path)
    from astra.vae.wan import load_wan_vae

    return load_wan_vae(path)


__all__ = [
    "SMALL_VAE_PRESETS",
    "TEMPORAL_STRIDE",
    "SmallVAE",
    "SmallVAEConfig",
    "load_small_vae",
    "load_vae",
    "save_small_vae",
    "weights_root",
]
