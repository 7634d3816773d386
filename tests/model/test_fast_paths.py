"""The CPU fast paths give the reference results: real-valued RoPE, per-slot modulation, keys cached after RoPE."""

import dataclasses

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from astra.model import attention
from astra.model.attention import KVCache, apply_rope, rope_tables
from astra.model.config import AstraConfig
from astra.model.history import FrameGroup, HistoryEmbedders, pack_frames
from astra.model.transformer import AstraTransformer, SlotLayout

CONFIG = AstraConfig.from_preset("astra-tiny")


def test_real_rope_equals_complex_rotation():
    torch.manual_seed(0)
    head_dim, split = CONFIG.head_dim, CONFIG.rope_split
    x = torch.randn(2, 3, 7, head_dim)
    positions = torch.rand(7, 3, dtype=torch.float64) * 20
    # reference: Wan's complex form, one frequency table per axis, angle = position * frequency
    frequencies = [CONFIG.rope_theta ** (-torch.arange(0, w, 2, dtype=torch.float64) / w) for w in split]
    angles = torch.cat([positions[:, axis, None] * f for axis, f in enumerate(frequencies)], dim=-1)
    rotated = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous()) * torch.polar(
        torch.ones_like(angles), angles
    )
    expected = torch.view_as_real(rotated).flatten(-2).float()
    actual = apply_rope(x, *rope_tables(positions, split, CONFIG.rope_theta, "cpu"))
    assert torch.allclose(actual, expected, atol=1e-5)
    assert not torch.allclose(actual, x, atol=1e-2)


def test_slot_layout_view_equals_per_token_gather():
    torch.manual_seed(0)
    embedders = {(1, False): HistoryEmbedders(CONFIG.replace(history_embedder_1x=True)).proj_1x}
    latents = torch.randn(2, CONFIG.in_channels, 3, 4, 6)
    ranks, chunks = {0: 0, 1: 1, 2: 2}, [0, 1, 1]
    sequence = pack_frames(latents, [FrameGroup((0, 1, 2), 1)], embedders, CONFIG.patch_size, ranks, chunks)
    assert sequence.tokens_per_slot == 6  # 4x6 latents, patch 2 -> 2x3 tokens per frame
    uniform, gathered = SlotLayout(sequence), SlotLayout(dataclasses.replace(sequence, tokens_per_slot=None))
    x, per_slot = sequence.tokens, torch.randn(2, 3, CONFIG.dim)
    results = [layout.merge(layout.split(x) * layout.to_tokens(per_slot)) for layout in (uniform, gathered)]
    assert torch.equal(results[0], results[1])
    assert torch.equal(results[0][:, 6:12], x[:, 6:12] * per_slot[:, 1:2])
    embedders[(2, False)] = HistoryEmbedders(CONFIG).proj_2x
    groups = [FrameGroup((0,), 1), FrameGroup((1, 2), 2)]
    compressed = pack_frames(latents, groups, embedders, CONFIG.patch_size, ranks, chunks)
    assert compressed.tokens_per_slot is None  # 6 tokens for frame 0, 1x2 for the 2x slot


def frame_positions(num_frames: int, grid: tuple[int, int]) -> torch.Tensor:
    t, h, w = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in (num_frames, *grid)), indexing="ij")
    return torch.stack((t, h, w), dim=-1).flatten(0, 2)


def test_rolling_window_rotates_kept_keys_to_consecutive_positions():
    """Trimming equals roping the kept raw keys at their new (re-based) positions."""
    torch.manual_seed(0)
    grid, split, theta = (2, 3), CONFIG.rope_split, CONFIG.rope_theta
    frame_chunks = [0, 1, 1, 2, 2, 3, 3]  # keep chunk 0 and the 2 newest chunks: drop chunk 1 (frames 1, 2)
    raw_keys = torch.randn(2, CONFIG.num_heads, len(frame_chunks) * 6, CONFIG.head_dim)
    keys = apply_rope(raw_keys, *rope_tables(frame_positions(len(frame_chunks), grid), split, theta, "cpu"))
    cache = KVCache([keys], [raw_keys.clone()], frame_chunks, grid, split, theta, max_chunks=2)
    cache.trim()
    kept_tokens = torch.tensor([0] + [3, 4, 5, 6]).repeat_interleave(6) * 6 + torch.arange(6).repeat(5)
    expected = apply_rope(raw_keys[:, :, kept_tokens], *rope_tables(frame_positions(5, grid), split, theta, "cpu"))
    assert cache.frame_chunks == [0, 2, 2, 3, 3]
    assert torch.allclose(cache.keys[0], expected, atol=1e-5)
    assert torch.equal(cache.values[0], raw_keys[:, :, kept_tokens])


class DeviceFloat64(TorchDispatchMode):
    """Records the ops that leave a float64 tensor off the CPU."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tensors = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.dtype == torch.float64 and t.device.type != "cpu" for t in tensors):
            self.ops.append(func)
        return out


def test_no_float64_tensor_reaches_a_device_without_float64(monkeypatch):
    """Apple's MPS has no float64: RoPE tables, timestep sinusoids, slot weights and the rolling window's re-basing
    compute in float64 on the CPU and send float32 (meta stands in for such a device; it would hold float64)."""
    monkeypatch.setattr(attention, "NO_FLOAT64_DEVICE_TYPES", {"mps", "meta"})
    config = CONFIG.replace(attention="bidirectional", num_layers=1)  # no block-causal mask: it reads the meta chunks
    with torch.device("meta"):
        model = AstraTransformer(config)
        latents = torch.empty(1, config.in_channels, 3, 4, 4)
        is_history = torch.tensor([True, True, False])
        keys = torch.empty(1, config.num_heads, 3 * 4, config.head_dim)
    groups = [FrameGroup((0, 1), 1), FrameGroup((2,), 1, is_target=True)]
    with DeviceFloat64() as watch:
        sequence = pack_frames(latents, groups, model._embedders(), config.patch_size, {0: 0, 1: 1, 2: 2}, [0, 1, 2])
        hidden = model._run(sequence, torch.tensor([[0.0, 0.0, 0.5]]), None, is_history, None, None)[0]
        cache = KVCache([keys], [keys], [0, 1, 2], (2, 2), config.rope_split, config.rope_theta, max_chunks=1)
        cache.trim()
    assert hidden.device.type == "meta" and cache.keys[0].device.type == "meta" and cache.frame_chunks == [0, 2]
    assert watch.ops == []
