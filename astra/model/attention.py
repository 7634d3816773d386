"""Attention for the Astra transformer: Wan2.1 self/cross-attention, 3-D RoPE, block-causal masks, the KV cache.

RoPE is computed from float positions (angle = position * frequency) rather than read from a table, so that
compressed history tokens can sit at the fractional centre of what they cover. Keys are cached AFTER RoPE (a cached
forward rotates only its own tokens); when the rolling window drops old chunks, the kept keys are re-based by
rotating them back in time (a rotation by the position shift, exact up to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


NO_FLOAT64_DEVICE_TYPES = {"mps"}  # Apple's MPS has no float64


def float64_device(device: torch.device) -> torch.device:
    """Where float64 bookkeeping (RoPE angles, timestep sinusoids) for `device` is computed: the device itself, or
    the CPU for a device without float64 (a CUDA device keeps it on the GPU: no host sync per forward)."""
    device = torch.device(device)
    return torch.device("cpu") if device.type in NO_FLOAT64_DEVICE_TYPES else device


def rope_tables(
    positions: torch.Tensor, split: tuple[int, int, int], theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation tables [N, head_dim] on `device` for float positions [N, 3] (time, height, width), Wan's 3-D
    complex RoPE.

    Each axis owns `split[axis]` channels of the head (44/42/42 at head_dim 128) with frequencies
    theta^(-2i/width), computed in float64 like the reference code (on `float64_device`). Returned per channel,
    ready for `apply_rope`: cos repeated for both channels of a pair, sin signed (-sin, +sin), so the rotation is
    two multiplies and an add.
    """
    work = float64_device(device)
    positions = positions.to(work, torch.float64)
    angles = []
    for axis, width in enumerate(split):
        inv_freq = 1.0 / theta ** (torch.arange(0, width, 2, dtype=torch.float64, device=work) / width)
        angles.append(positions[:, axis, None] * inv_freq)
    angle = torch.cat(angles, dim=-1)
    cos, sin = angle.cos().float().to(device), angle.sin().float().to(device)
    return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x [B, heads, N, head_dim] by the angles of its N positions:
    (re, im) -> (re cos - im sin, im cos + re sin), with the tables of `rope_tables`."""
    real = x.float()
    swapped = real.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (im, re) per pair
    return (real * cos + swapped * sin).type_as(x)


def block_causal_mask(query_chunks: torch.Tensor, key_chunks: torch.Tensor) -> torch.Tensor | None:
    """Boolean mask [Nq, Nk]: a query attends keys of its own chunk and older ones. None when nothing is masked."""
    if bool(query_chunks.min() >= key_chunks.max()):
        return None
    return key_chunks[None, :] <= query_chunks[:, None]


class HeadAttention(nn.Module):
    """The projections Wan's self- and cross-attention share: q/k/v/o linears and q/k RMSNorm over all heads
    together (parameter names match Wan's checkpoints)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(dim, eps=eps) if qk_norm else nn.Identity()

    @staticmethod
    def _qk_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The q/k RMSNorm computed in float32 whatever the model or autocast dtype (as Wan does), returned in x's
        dtype; also keeps bf16 autocast on the fused kernel, which needs input and weight of one dtype."""
        if isinstance(norm, nn.RMSNorm):
            weight = None if norm.weight is None else norm.weight.float()
            return F.rms_norm(x.float(), norm.normalized_shape, weight, norm.eps).type_as(x)
        return norm(x)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, dim] -> [B, heads, N, head_dim]."""
        return x.unflatten(2, (self.num_heads, -1)).transpose(1, 2)

    def _output(self, out: torch.Tensor) -> torch.Tensor:
        """[B, heads, N, head_dim] -> the output projection of [B, N, dim]."""
        return self.o(out.transpose(1, 2).flatten(2))


class SelfAttention(HeadAttention):
    """Wan self-attention: q/k RMSNorm over all heads together, RoPE, optional past keys/values (KV cache)."""

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, N, dim]; rope: the tables of the N new tokens; past: cached (keys after RoPE, values).

        Returns the output and this call's (keys after RoPE, values), [B, heads, N, head_dim] each.
        """
        cos, sin = rope
        query = apply_rope(self._heads(self._qk_norm(self.norm_q, self.q(x))), cos, sin)
        new_keys = apply_rope(self._heads(self._qk_norm(self.norm_k, self.k(x))), cos, sin)
        new_values = self._heads(self.v(x))
        keys, values = new_keys, new_values
        if past is not None:
            keys, values = torch.cat((past[0], new_keys), dim=2), torch.cat((past[1], new_values), dim=2)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
        return self._output(out), (new_keys, new_values)


class CrossAttention(HeadAttention):
    """Wan text cross-attention: queries from video tokens, keys/values from text states, no RoPE, no mask."""

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        query = self._heads(self._qk_norm(self.norm_q, self.q(x)))
        keys = self._heads(self._qk_norm(self.norm_k, self.k(context)))
        values = self._heads(self.v(context))
        return self._output(F.scaled_dot_product_attention(query, keys, values))


@dataclass
class KVCache:
    """Per-layer keys (after RoPE) and values of clean, full-resolution history frames, oldest first.

    Every cached frame has `tokens_per_frame` tokens on the grid `grid` (height, width in tokens). The time
    position of cached frame i is i: after the rolling window drops old chunks the kept keys are rotated back to
    consecutive positions, as an uncached forward over the same kept frames would place them (`rope_split`,
    `rope_theta`: the model's RoPE, needed for that rotation).
    Frame 0 (the video's first frame) is chunk 0 and is never dropped.
    """

    keys: list[torch.Tensor]  # per layer [B, heads, num_frames * tokens_per_frame, head_dim]
    values: list[torch.Tensor]
    frame_chunks: list[int]  # chunk id of every cached frame, oldest first
    grid: tuple[int, int]
    rope_split: tuple[int, int, int]
    rope_theta: float
    text: torch.Tensor | None = None  # raw text states given to prefill (reused by extend_cache)
    max_chunks: int = 8  # rolling window: chunks kept besides the first frame's
    batch_size: int = field(init=False)

    def __post_init__(self) -> None:
        self.batch_size = self.keys[0].shape[0]

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_frames(self) -> int:
        return len(self.frame_chunks)

    @property
    def next_chunk(self) -> int:
        return max(self.frame_chunks) + 1

    def token_chunks(self, device: torch.device) -> torch.Tensor:
        chunks = torch.tensor(self.frame_chunks, dtype=torch.long, device=device)
        return chunks.repeat_interleave(self.tokens_per_frame)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def append(self, keys: list[torch.Tensor], values: list[torch.Tensor], num_frames: int) -> None:
        """Add one finished chunk of `num_frames` frames (per-layer K/V), then apply the rolling window."""
        chunk = self.next_chunk
        self.keys = [torch.cat((old, new), dim=2) for old, new in zip(self.keys, keys)]
        self.values = [torch.cat((old, new), dim=2) for old, new in zip(self.values, values)]
        self.frame_chunks = self.frame_chunks + [chunk] * num_frames
        self.trim()

    def trim(self) -> None:
        """Drop the oldest chunks beyond `max_chunks` (the first frame's chunk 0 always stays)."""
        later = sorted(set(self.frame_chunks) - {0})
        dropped = set(later[: max(0, len(later) - self.max_chunks)])
        if not dropped:
            return
        device = self.keys[0].device
        keep = torch.tensor([c not in dropped for c in self.frame_chunks])  # on the CPU, as the float64 shifts
        kept_tokens = keep.repeat_interleave(self.tokens_per_frame).nonzero().squeeze(1).to(device)
        # every kept frame moves back in time by the number of dropped frames older than it
        frame_shift = (~keep).cumsum(0)[keep].double().repeat_interleave(self.tokens_per_frame)
        shift = torch.zeros(frame_shift.shape[0], 3, dtype=torch.float64)
        shift[:, 0] = -frame_shift
        cos, sin = rope_tables(shift, self.rope_split, self.rope_theta, device)
        self.keys = [apply_rope(k.index_select(2, kept_tokens), cos, sin) for k in self.keys]
        self.values = [v.index_select(2, kept_tokens) for v in self.values]
        self.frame_chunks = [c for c in self.frame_chunks if c not in dropped]
