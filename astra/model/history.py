"""Turning latent frames (history + target) into one token sequence: FramePack-style packing.

Frames are embedded in groups. A group of scale s goes through a Conv3d with kernel = stride = patch * (1|s, s, s)
(s = 1: the patch embedding, one token slot per frame; s = 2, 4: `proj_2x`, `proj_4x`, s frames per slot).
Remainders are filled by replicate-padding the INPUT (older side in time, bottom/right in space), so no token is a
padding token. Every token gets:
- a RoPE position at the centre of the real frames/pixels it covers (fractional for compressed tokens),
- the chunk id of the newest real frame it covers (for the block-causal mask),
- a "slot": the set of frames it covers; per-token timesteps and action embeddings are averages over that set.
Token order is chronological: first frame, 4x group, 2x group, newest full-resolution frames, target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from astra.model.config import AstraConfig, HistoryBudget

SCALES = (2, 4)  # compression factors of the history embedders besides full resolution


class HistoryEmbedders(nn.Module):
    """Conv3d embedders of compressed history (and of full-resolution history when `history_embedder_1x`)."""

    def __init__(self, config: AstraConfig):
        super().__init__()
        patch = config.patch_size
        if config.history_embedder_1x:
            self.proj_1x = nn.Conv3d(config.in_channels, config.dim, kernel_size=patch, stride=patch)
        for scale in SCALES:
            kernel = (patch[0] * scale, patch[1] * scale, patch[2] * scale)
            self.add_module(f"proj_{scale}x", nn.Conv3d(config.in_channels, config.dim, kernel, stride=kernel))


@dataclass(frozen=True)
class FrameGroup:
    """Frames (indices into the latents given to the model, oldest first) embedded together at one scale."""

    frames: tuple[int, ...]
    scale: int
    is_target: bool = False


def plan_history(num_history: int, budget: HistoryBudget) -> list[FrameGroup]:
    """Which history frames are kept and at which scale (chronological). Older frames are dropped.

    The first frame (if `keep_first`) and the newest `full` frames stay at full resolution, the next older
    `compressed_2x` frames are compressed 2x, the next `compressed_4x` frames 4x.
    """
    start = 1 if budget.keep_first and num_history > 0 else 0
    rest = list(range(start, num_history))
    full = rest[max(0, len(rest) - budget.full) :]
    rest = rest[: len(rest) - len(full)]
    by_2x = rest[max(0, len(rest) - budget.compressed_2x) :]
    rest = rest[: len(rest) - len(by_2x)]
    by_4x = rest[max(0, len(rest) - budget.compressed_4x) :]
    groups = [FrameGroup((0,), 1)] if start else []
    groups += [FrameGroup(tuple(frames), scale) for frames, scale in ((by_4x, 4), (by_2x, 2), (full, 1)) if frames]
    return groups


def history_chunk_ids(num_history: int, chunk_frames: int, first_chunk: int = 0) -> list[int]:
    """Chunk id of every history frame: frame 0 alone is chunk `first_chunk`; the others are grouped in chunks of
    `chunk_frames` counted from the newest frame, so the chunk boundaries line up with the generated chunks."""
    if num_history == 0:
        return []
    num_chunks = -(-(num_history - 1) // chunk_frames)
    return [first_chunk] + [
        first_chunk + num_chunks - (num_history - 1 - f) // chunk_frames for f in range(1, num_history)
    ]


@dataclass
class PackedSequence:
    """Tokens plus the per-token bookkeeping the transformer needs."""

    tokens: torch.Tensor  # [B, N, dim]
    # positions and slot_frames stay float64 on the CPU (some devices, Apple's MPS, have no float64); the rest
    # lives on the latents' device
    positions: torch.Tensor  # [N, 3] RoPE positions (time, height, width)
    chunk_ids: torch.Tensor  # [N] long
    slot_of_token: torch.Tensor  # [N] long, index into the rows of slot_frames
    slot_frames: torch.Tensor  # [S, F] averaging weights over the input frames (rows sum to 1)
    num_target_tokens: int
    tokens_per_slot: int | None = None  # set when every slot covers the same number of (consecutive) tokens


def _centres(length: int, block: int, patch: int) -> torch.Tensor:
    """Token-grid position of the centre of the real pixels covered by each block along one spatial axis."""
    starts = torch.arange(0, length, block, dtype=torch.float64)
    ends = (starts + block).clamp(max=length) - 1
    return ((starts + ends) / 2 - (patch - 1) / 2) / patch


def pack_frames(
    latents: torch.Tensor,
    groups: list[FrameGroup],
    embedders: dict[tuple[int, bool], nn.Conv3d],
    patch: tuple[int, int, int],
    frame_rank: dict[int, float],
    frame_chunk: list[int],
) -> PackedSequence:
    """Embed `groups` of `latents` [B, C, F, H, W] into one sequence.

    embedders[(scale, is_target)] is the Conv3d for a group; frame_rank gives the RoPE time position of every kept
    frame (kept frames are numbered consecutively, dropped ones have none); frame_chunk the chunk id of every frame.
    """
    num_frames, height, width = latents.shape[2:]
    tokens, positions, chunks, slot_of_token, slot_rows, slot_sizes = [], [], [], [], [], []
    num_target_tokens = 0
    for group in groups:
        scale = group.scale
        kernel = (patch[0] * scale, patch[1] * scale, patch[2] * scale)
        frames = list(group.frames)
        pad_t, pad_h, pad_w = (-len(frames)) % kernel[0], (-height) % kernel[1], (-width) % kernel[2]
        x = latents[:, :, frames]
        if pad_t or pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h, pad_t, 0), mode="replicate")
        embedded = embedders[(scale, group.is_target)](x)  # [B, dim, nt, nh, nw]
        nt, nh, nw = embedded.shape[2:]
        tokens.append(embedded.flatten(2).transpose(1, 2))
        rows_h, cols_w = _centres(height, kernel[1], patch[1]), _centres(width, kernel[2], patch[2])
        grid_h, grid_w = torch.meshgrid(rows_h, cols_w, indexing="ij")
        for slot in range(nt):
            covered = [frames[i - pad_t] for i in range(slot * kernel[0], (slot + 1) * kernel[0]) if i >= pad_t]
            weights = torch.zeros(num_frames, dtype=torch.float64)
            weights[covered] = 1.0 / len(covered)
            slot_rows.append(weights)
            time = sum(frame_rank[f] for f in covered) / len(covered)
            positions.append(torch.stack((torch.full_like(grid_h, time), grid_h, grid_w), dim=-1).flatten(0, 1))
            chunks.append(torch.full((nh * nw,), max(frame_chunk[f] for f in covered), dtype=torch.long))
            slot_of_token.append(torch.full((nh * nw,), len(slot_rows) - 1, dtype=torch.long))
            slot_sizes.append(nh * nw)
        if group.is_target:
            num_target_tokens += nt * nh * nw
    device = latents.device
    return PackedSequence(
        tokens=torch.cat(tokens, dim=1),
        positions=torch.cat(positions),
        chunk_ids=torch.cat(chunks).to(device),
        slot_of_token=torch.cat(slot_of_token).to(device),
        slot_frames=torch.stack(slot_rows),
        num_target_tokens=num_target_tokens,
        tokens_per_slot=slot_sizes[0] if len(set(slot_sizes)) == 1 else None,
    )
