"""Oracle: our transformer reproduces diffusers' WanTransformer3DModel on the same (renamed) weights."""

import pytest
import torch

from astra.model.config import AstraConfig
from astra.model.transformer import AstraTransformer
from astra.model.wan_keys import diffusers_to_original, original_to_diffusers

diffusers = pytest.importorskip("diffusers")

CONFIG = AstraConfig.from_preset("astra-tiny").replace(num_heads=2, dim=64, ffn_dim=96, text_dim=24, num_layers=2)
ASTRA_ONLY = ("act_adapter", "action_experts", "action_projectors", "history_embedders")


def make_pair():
    torch.manual_seed(0)
    reference = diffusers.WanTransformer3DModel(
        patch_size=CONFIG.patch_size,
        num_attention_heads=CONFIG.num_heads,
        attention_head_dim=CONFIG.head_dim,
        in_channels=CONFIG.in_channels,
        out_channels=CONFIG.out_channels,
        text_dim=CONFIG.text_dim,
        freq_dim=CONFIG.freq_dim,
        ffn_dim=CONFIG.ffn_dim,
        num_layers=CONFIG.num_layers,
        cross_attn_norm=True,
        eps=CONFIG.eps,
        rope_max_seq_len=CONFIG.rope_max_positions,
    ).eval()
    with torch.no_grad():  # diffusers zero-inits nothing we rely on; make every weight non-trivial anyway
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    ours = AstraTransformer(CONFIG).eval()
    missing, unexpected = ours.load_state_dict(diffusers_to_original(reference.state_dict()), strict=False)
    assert unexpected == []
    assert missing and all(any(part in key for part in ASTRA_ONLY) for key in missing), missing
    return reference, ours


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_key_map_round_trips_and_covers_every_backbone_key():
    reference, ours = make_pair()
    diffusers_keys = set(reference.state_dict())
    original = diffusers_to_original(reference.state_dict())
    assert set(original_to_diffusers(original)) == diffusers_keys
    backbone = {k for k in ours.state_dict() if not any(part in k for part in ASTRA_ONLY)}
    assert set(original) == backbone


@pytest.mark.parametrize("flow_time", [0.625, 0.0])
def test_forward_matches_diffusers(flow_time):
    reference, ours = make_pair()
    torch.manual_seed(1)
    latents = torch.randn(1, CONFIG.in_channels, 3, 8, 12)
    text = torch.randn(1, 7, CONFIG.text_dim)
    with torch.no_grad():
        expected = reference(latents, torch.tensor([flow_time * 1000.0]), text, return_dict=False)[0]
        actual = ours(latents, torch.full((1, 3), flow_time), text=text).velocity
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) < 1e-5
