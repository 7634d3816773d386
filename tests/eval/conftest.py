import pytest
import torch

from astra.model.checkpoints import save_astra
from astra.model.config import AstraConfig
from astra.model.transformer import AstraTransformer
from astra.vae.small import SMALL_VAE_PRESETS, SmallVAE, save_small_vae


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random tiny model + random tiny VAE saved as a real checkpoint (checks the plumbing, not the numbers)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny")
    save_small_vae(SmallVAE(SMALL_VAE_PRESETS["astra-tiny-vae"]), root / "vae")
    config = AstraConfig.from_preset("astra-tiny", text_dim=0, text_len=0)
    metadata = {"vae": str(root / "vae"), "sampling": {"num_steps": 1, "guidance_scale": 1.0}}
    return save_astra(AstraTransformer(config), root / "model", metadata)
