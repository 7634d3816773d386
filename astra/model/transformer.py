"""The Astra flow transformer: Wan2.1's video DiT + ACT-Adapters + Mixture of Action Experts + history packing.

Reading order: time embedding -> Head -> AstraBlock -> AstraTransformer (forward, prefill, extend_cache).

Backbone parameter names follow the original Wan2.1 release exactly, so its checkpoint loads with no renames.
With actions=None and no history, the model computes exactly Wan2.1 (the ACT-Adapters start at the identity and
the experts' last layers at zero, so a fresh Astra on Wan weights is Wan even with actions).

Two ways to give history:
- uncached: `model(target, t, history_latents=...)` packs the history FramePack-style (history.py) and runs
  history + target tokens together (block-causal mask or bidirectional, per config.attention);
- streaming: `cache = model.prefill(history)`, `model(target, t, kv_cache=cache)`, `model.extend_cache(cache,
  chunk)`. The cache holds history at FULL resolution (no compression; the rolling window
  `config.kv_cache_chunks` bounds its memory instead). Needs attention="block_causal" and per-frame timesteps.

Text: `text` [B, L, text_dim] is used as given (Wan's pipeline zero-pads it to text_len before the call). With
text_dim > 0 and text=None the cross-attention is skipped (adds nothing); with text_dim == 0 it does not exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from astra.model.action_experts import ActionExperts, ActionInput, ActionProjectors, fixed_experts_of
from astra.model.attention import (
    CrossAttention,
    KVCache,
    SelfAttention,
    block_causal_mask,
    float64_device,
    rope_tables,
)
from astra.model.config import AstraConfig
from astra.model.history import (
    FrameGroup,
    HistoryEmbedders,
    PackedSequence,
    history_chunk_ids,
    pack_frames,
    plan_history,
)
from astra.model.motion_prior import MotionPrior

TIMESTEP_SCALE = 1000.0  # flow time t in [0, 1] -> Wan's timestep in [0, 1000]
SINUSOID_BASE = 10000.0


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's sinusoid of timesteps (already x1000): [cos | sin] of t * 10000^(-i/half), in float64 (on
    `float64_device`: the caller moves it to the model's device and dtype)."""
    half = dim // 2
    work = float64_device(timesteps.device)
    exponents = torch.arange(half, dtype=torch.float64, device=work) / half
    angles = timesteps.to(work, torch.float64)[..., None] * SINUSOID_BASE ** (-exponents)
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


def fp32_layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """LayerNorm computed in float32 whatever the model dtype (as Wan does), returned in float32."""
    weight = None if norm.weight is None else norm.weight.float()
    bias = None if norm.bias is None else norm.bias.float()
    return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps)


@dataclass
class AstraOutput:
    velocity: torch.Tensor  # [B, C, Ft, H, W]
    aux_loss: torch.Tensor  # scalar load-balancing loss of the action experts (0 without actions)
    expert_usage: torch.Tensor  # [num_experts] fraction of routed action frames per expert
    motion: torch.Tensor | None = None  # [B, Ft, 3] copy-prior anchor motion per target frame (motion_prior)


class Head(nn.Module):
    """Final adaLN (shift, scale from a [1, 2, dim] table + the time embedding) and the patch projection."""

    def __init__(self, config: AstraConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.dim, config.eps, elementwise_affine=False)
        self.head = nn.Linear(config.dim, config.out_channels * math.prod(config.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, config.dim) / config.dim**0.5)

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.unsqueeze(0) + time_embedding.float().unsqueeze(2)).unbind(2)
        return self.head((fp32_layer_norm(self.norm, x) * (1 + scale) + shift).type_as(x))


class SlotLayout:
    """Applies per-slot values (timestep modulation, action embedding) to the tokens of each slot.

    When every slot covers the same number of consecutive tokens (full-resolution frames: streaming, prefill,
    uncompressed history) the tokens are viewed as [B, S, tokens_per_slot, dim] and per-slot values broadcast
    over that view, so nothing per token is materialised; otherwise (compressed history) they are gathered per token.
    """

    def __init__(self, sequence: PackedSequence):
        self.slot_of_token = sequence.slot_of_token
        self.tokens_per_slot = sequence.tokens_per_slot

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, ...] tokens -> [B, S, tokens_per_slot, ...] (uniform) or unchanged."""
        return x if self.tokens_per_slot is None else x.unflatten(1, (-1, self.tokens_per_slot))

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `split`."""
        return x if self.tokens_per_slot is None else x.flatten(1, 2)

    def to_tokens(self, per_slot: torch.Tensor) -> torch.Tensor:
        """[B, S, ...] -> broadcastable against `split(tokens)`."""
        if self.tokens_per_slot is None:
            return per_slot.index_select(1, self.slot_of_token)
        return per_slot.unsqueeze(2)


class AstraBlock(nn.Module):
    """Wan block with the action embedding added to the self-attention input and the ACT-Adapter on its output:

    h = modulate(norm1(x)) + action;  x += gate * act_adapter(self_attn(h));  x += cross_attn(norm3(x), text);
    x += gate' * ffn(modulate'(norm2(x))).
    """

    def __init__(self, config: AstraConfig):
        super().__init__()
        dim, eps = config.dim, config.eps
        self.norm1 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, config.num_heads, config.qk_norm, eps)
        self.act_adapter = nn.Linear(dim, dim) if config.act_adapter else None
        if config.text_dim:
            self.norm3 = nn.LayerNorm(dim, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
            self.cross_attn = CrossAttention(dim, config.num_heads, config.qk_norm, eps)
        self.norm2 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, config.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(config.ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.action_experts = ActionExperts(config) if config.inject_actions else None

    def forward(
        self,
        x: torch.Tensor,
        time_modulation: torch.Tensor,
        layout: SlotLayout,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        context: torch.Tensor | None,
        action_embedding: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B, N, dim]; time_modulation [B, S, 6, dim] and action_embedding [B, S, dim] (or None) per slot."""
        shift, scale, gate, ffn_shift, ffn_scale, ffn_gate = (self.modulation + time_modulation.float()).unbind(2)
        if action_embedding is not None:  # the action is added to the attention input: fold it into the shift
            shift = shift + action_embedding.float()
        shift, scale, gate, ffn_shift, ffn_scale, ffn_gate = (
            layout.to_tokens(m) for m in (shift, scale, gate, ffn_shift, ffn_scale, ffn_gate)
        )
        h = layout.merge(fp32_layer_norm(self.norm1, layout.split(x)) * (1 + scale) + shift)
        attended, keys_values = self.self_attn(h.type_as(x), rope, mask, past)
        if self.act_adapter is not None:
            attended = self.act_adapter(attended)
        x = layout.merge(layout.split(x.float()) + layout.split(attended) * gate).type_as(x)
        if context is not None:
            norm3 = fp32_layer_norm(self.norm3, x) if isinstance(self.norm3, nn.LayerNorm) else x
            x = x + self.cross_attn(norm3.type_as(x), context)
        h = layout.merge(fp32_layer_norm(self.norm2, layout.split(x)) * (1 + ffn_scale) + ffn_shift).type_as(x)
        x = layout.merge(layout.split(x.float()) + layout.split(self.ffn(h).float()) * ffn_gate).type_as(x)
        return x, keys_values


class AstraTransformer(nn.Module):
    def __init__(self, config: AstraConfig):
        super().__init__()
        config.validate()
        self.config = config
        dim = config.dim
        self.patch_embedding = nn.Conv3d(config.in_channels, dim, config.patch_size, stride=config.patch_size)
        if config.text_dim:
            self.text_embedding = nn.Sequential(
                nn.Linear(config.text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
            )
        self.time_embedding = nn.Sequential(nn.Linear(config.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(AstraBlock(config) for _ in range(config.num_layers))
        self.head = Head(config)
        self.action_projectors = ActionProjectors(config) if config.inject_actions else None
        self.motion_prior = MotionPrior(config) if config.motion_prior else None
        self.history_embedders = HistoryEmbedders(config)
        self.init_weights()

    def init_weights(self) -> None:
        """Wan's init (xavier Linear/Conv, normal(0.02) embeddings) + identity ACT-Adapters + zero expert outputs."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv3d)):
                nn.init.xavier_uniform_(module.weight.flatten(1))
                nn.init.zeros_(module.bias)
        embeddings = [self.time_embedding] + ([self.text_embedding] if self.config.text_dim else [])
        for embedding in embeddings:
            for layer in embedding:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=0.02)
        for block in self.blocks:
            if block.act_adapter is not None:
                nn.init.eye_(block.act_adapter.weight)
                nn.init.zeros_(block.act_adapter.bias)
            if block.action_experts is not None:
                block.action_experts.reset_last_layers()
        if self.motion_prior is not None:
            self.motion_prior.reset_parameters()
        if self.config.zero_init_head:  # the velocity starts at 0 (with the copy prior: the model starts by copying)
            nn.init.zeros_(self.head.head.weight)
            nn.init.zeros_(self.head.head.bias)

    # --- public API ------------------------------------------------------------------------------
    def forward(
        self,
        target_latents: torch.Tensor,
        target_timesteps: torch.Tensor,
        history_latents: torch.Tensor | None = None,
        history_timesteps: torch.Tensor | None = None,
        actions: ActionInput | None = None,
        text: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        causal_target: bool = False,
    ) -> AstraOutput:
        """Velocity of the target frames. `actions` covers history + target frames (uncached) or only the target
        frames (with kv_cache). target_timesteps: [B, Ft] (or [B], shared by all target frames), in [0, 1].

        The target is one chunk (its frames attend to each other) unless `causal_target`: then it is a sequence
        of chunks of `chunk_frames` frames, each attending only to the history and to older chunks, so one call
        denoises several future chunks at once, each at its own flow time (diffusion forcing, used in training).
        """
        batch_size, _, num_target, height, width = self._check_latents("target_latents", target_latents)
        if causal_target and (self.config.attention != "block_causal" or num_target % self.config.chunk_frames):
            raise ValueError(
                f"causal_target needs attention='block_causal' and a whole number of {self.config.chunk_frames}-frame "
                f"chunks; got attention={self.config.attention!r} and {num_target} target frames"
            )
        target_timesteps = self._check_timesteps(
            "target_timesteps", target_timesteps, batch_size, num_target, target_latents.device
        )
        if kv_cache is not None:
            if history_latents is not None or history_timesteps is not None:
                raise ValueError("with kv_cache the history is in the cache: history_latents/timesteps must be None")
            if kv_cache.batch_size != batch_size or kv_cache.grid != self._grid(height, width):
                raise ValueError("kv_cache was built for another batch size or frame size than target_latents")
            if text is None:  # the prompt the cache was filled with (as extend_cache does)
                text = kv_cache.text
            first_rank, first_chunk = kv_cache.num_frames, kv_cache.next_chunk
            groups = [FrameGroup(tuple(range(num_target)), 1, is_target=True)]
            latents, timesteps, num_history, frame_chunk = target_latents, target_timesteps, 0, []
        else:
            num_history, latents, timesteps = 0, target_latents, target_timesteps
            if history_latents is not None:
                num_history = self._check_latents("history_latents", history_latents, target_latents.shape)[2]
                if history_timesteps is None:
                    history_timesteps = target_timesteps.new_zeros(batch_size, num_history)
                history_timesteps = self._check_timesteps(
                    "history_timesteps", history_timesteps, batch_size, num_history, history_latents.device
                )
                latents = torch.cat((history_latents, target_latents), dim=2)
                timesteps = torch.cat((history_timesteps, target_timesteps), dim=1)
            elif history_timesteps is not None:
                raise ValueError("history_timesteps given without history_latents")
            first_rank = 0
            frame_chunk = history_chunk_ids(num_history, self.config.chunk_frames)
            first_chunk = max(frame_chunk) + 1 if frame_chunk else 0
            groups = plan_history(num_history, self.config.history)
            groups.append(FrameGroup(tuple(range(num_history, num_history + num_target)), 1, is_target=True))
        if not self.config.per_frame_timesteps:
            if bool((target_timesteps != target_timesteps[:, :1]).any()):
                raise ValueError("per_frame_timesteps=False: all target frames must share one timestep")
            timesteps = target_timesteps[:, :1].expand_as(timesteps)
        kept = sorted(f for group in groups for f in group.frames)
        frame_rank = {f: first_rank + i for i, f in enumerate(kept)}
        chunk_frames = self.config.chunk_frames if causal_target else num_target
        frame_chunk = frame_chunk + [first_chunk + i // chunk_frames for i in range(num_target)]
        sequence = pack_frames(latents, groups, self._embedders(), self.config.patch_size, frame_rank, frame_chunk)
        is_history = torch.arange(latents.shape[2], device=latents.device) < num_history
        hidden, _, time_embedding, aux_loss, usage = self._run(
            sequence, timesteps, actions, is_history, self._check_text(text, batch_size), kv_cache
        )
        target_tokens = slice(hidden.shape[1] - sequence.num_target_tokens, None)
        target_slots = sequence.slot_of_token[target_tokens]
        out = self.head(hidden[:, target_tokens], time_embedding[:, target_slots])
        motion = None
        if self.motion_prior is not None and actions is not None:
            normalizers = self.action_projectors.normalizers
            motion = self.motion_prior(actions.frames(actions.num_frames - num_target, actions.num_frames), normalizers)
            if self.config.motion_prior_min_t > 0:
                moves = (target_timesteps >= self.config.motion_prior_min_t).to(motion.dtype)
                motion = motion * moves.unsqueeze(-1)
        return AstraOutput(self._unpatchify(out, num_target, height, width), aux_loss, usage, motion)

    @torch.no_grad()
    def prefill(
        self,
        history_latents: torch.Tensor,
        history_timesteps: torch.Tensor | None = None,
        actions: ActionInput | None = None,
        text: torch.Tensor | None = None,
    ) -> KVCache:
        """Run clean full-resolution history once (block-causal among itself) and cache every layer's K/V."""
        self._check_streaming()
        batch_size, _, num_history, height, width = self._check_latents("history_latents", history_latents)
        if history_timesteps is None:
            history_timesteps = history_latents.new_zeros(batch_size, num_history)
        history_timesteps = self._check_timesteps(
            "history_timesteps", history_timesteps, batch_size, num_history, history_latents.device
        )
        chunks = history_chunk_ids(num_history, self.config.chunk_frames)
        keys, values = self._cache_frames(history_latents, history_timesteps, actions, text, None, 0, chunks)
        cache = KVCache(
            keys,
            values,
            chunks,
            self._grid(height, width),
            self.config.rope_split,
            self.config.rope_theta,
            text,
            self.config.kv_cache_chunks,
        )
        cache.trim()
        return cache

    @torch.no_grad()
    def extend_cache(
        self,
        cache: KVCache,
        chunk_latents: torch.Tensor,
        actions: ActionInput | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> KVCache:
        """Run a finished chunk against the cache (at t = 0 unless `timesteps` [B, F] say how noised it is, as
        with inference-time history noise), append its K/V, apply the rolling window."""
        self._check_streaming()
        batch_size, _, num_frames, height, width = self._check_latents("chunk_latents", chunk_latents)
        if cache.batch_size != batch_size or cache.grid != self._grid(height, width):
            raise ValueError("chunk_latents do not match the cache's batch size or frame size")
        if timesteps is None:
            timesteps = chunk_latents.new_zeros(batch_size, num_frames)
        timesteps = self._check_timesteps("timesteps", timesteps, batch_size, num_frames, chunk_latents.device)
        chunks = [cache.next_chunk] * num_frames
        keys, values = self._cache_frames(
            chunk_latents, timesteps, actions, cache.text, cache, cache.num_frames, chunks
        )
        cache.append(keys, values, num_frames)
        return cache

    # --- internals -------------------------------------------------------------------------------
    def _cache_frames(self, latents, timesteps, actions, text, cache, first_rank, chunks):
        """Per-layer K/V of clean history frames at full resolution (positions from `first_rank`)."""
        frames = tuple(range(latents.shape[2]))
        frame_rank = {f: first_rank + f for f in frames}
        sequence = pack_frames(
            latents, [FrameGroup(frames, 1)], self._embedders(), self.config.patch_size, frame_rank, chunks
        )
        is_history = torch.ones(len(frames), dtype=torch.bool, device=latents.device)
        text = self._check_text(text, latents.shape[0])
        _, keys_values, _, _, _ = self._run(sequence, timesteps, actions, is_history, text, cache)
        return [k for k, _ in keys_values], [v for _, v in keys_values]

    def _run(self, sequence: PackedSequence, timesteps, actions, is_history, context, cache):
        """The block stack over `sequence` (attending to `cache` too). Returns hidden states, per-layer new K/V,
        the per-slot time embedding (for the head), the mean aux loss and expert usage."""
        config = self.config
        x = sequence.tokens
        work = float64_device(x.device)
        slot_timesteps = timesteps.to(work, torch.float64) @ sequence.slot_frames.to(work).T  # [B, S]
        time_embedding = self.time_embedding(
            sinusoidal_embedding(slot_timesteps * TIMESTEP_SCALE, config.freq_dim).to(x.device, x.dtype)
        )
        time_modulation = self.time_projection(time_embedding).unflatten(-1, (6, config.dim))  # [B, S, 6, dim]
        layout = SlotLayout(sequence)
        key_chunks = sequence.chunk_ids
        if cache is not None:
            key_chunks = torch.cat((cache.token_chunks(x.device), key_chunks))
        rope = rope_tables(sequence.positions, config.rope_split, config.rope_theta, x.device)
        mask = block_causal_mask(sequence.chunk_ids, key_chunks) if config.attention == "block_causal" else None
        if context is not None:
            context = self.text_embedding(context.to(x.dtype))
        features = fixed = None
        if actions is not None:
            if self.action_projectors is None:
                raise ValueError("this model has no action module (inject_actions=False) but actions were given")
            features = self.action_projectors(actions, is_history)
            if config.expert_routing == "fixed":
                fixed = fixed_experts_of(actions.modality, config, x.device)
        aux_losses, usages, keys_values = [], [], []
        slot_frames = sequence.slot_frames.to(x.device, x.dtype)
        for index, block in enumerate(self.blocks):
            action_embedding = None
            if features is not None:
                experts = block.action_experts(features, fixed)
                action_embedding = torch.einsum("sf,bfd->bsd", slot_frames, experts.embedding)
                aux_losses.append(experts.aux_loss)
                usages.append(experts.usage)
            past = None if cache is None else (cache.keys[index], cache.values[index])
            x, layer_keys_values = block(x, time_modulation, layout, rope, mask, context, action_embedding, past)
            keys_values.append(layer_keys_values)
        if aux_losses:
            aux_loss, usage = torch.stack(aux_losses).mean(), torch.stack(usages).mean(dim=0)
        else:
            aux_loss = x.new_zeros((), dtype=torch.float32)
            usage = x.new_zeros(config.num_experts, dtype=torch.float32)
        return x, keys_values, time_embedding, aux_loss, usage

    def _embedders(self) -> dict[tuple[int, bool], nn.Conv3d]:
        history_1x = getattr(self.history_embedders, "proj_1x", self.patch_embedding)
        return {
            (1, True): self.patch_embedding,
            (1, False): history_1x,
            (2, False): self.history_embedders.proj_2x,
            (4, False): self.history_embedders.proj_4x,
        }

    def _grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.config.patch_size[1], width // self.config.patch_size[2]

    def _unpatchify(self, out: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        pt, ph, pw = self.config.patch_size
        grid_h, grid_w = self._grid(height, width)
        out = out.reshape(out.shape[0], frames // pt, grid_h, grid_w, pt, ph, pw, self.config.out_channels)
        return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(out.shape[0], -1, frames, height, width)

    def _check_streaming(self) -> None:
        if self.config.attention != "block_causal" or not self.config.per_frame_timesteps:
            raise ValueError("the KV cache needs attention='block_causal' and per_frame_timesteps=True")

    def _check_latents(self, name: str, latents: torch.Tensor, like: torch.Size | None = None) -> tuple[int, ...]:
        config = self.config
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"{name} must be a tensor [B, C, F, H, W], got {shape}")
        batch_size, channels, frames, height, width = latents.shape
        if channels != config.in_channels:
            raise ValueError(f"{name} has {channels} channels; the model expects {config.in_channels}")
        if frames < 1 or height % config.patch_size[1] or width % config.patch_size[2]:
            raise ValueError(
                f"{name}: {frames} frames of {height}x{width}; need >= 1 frame and H, W divisible by "
                f"the patch {config.patch_size[1:]}"
            )
        if like is not None and (batch_size, height, width) != (like[0], like[3], like[4]):
            raise ValueError(f"{name} {tuple(latents.shape)} does not match target_latents {tuple(like)} in B, H, W")
        if not bool(torch.isfinite(latents).all()):
            raise ValueError(f"{name} contains NaN or inf")
        return tuple(latents.shape)

    def _check_timesteps(
        self, name: str, timesteps: torch.Tensor, batch_size: int, frames: int, device: torch.device
    ) -> torch.Tensor:
        """Timesteps [B, F] on the latents' `device` (a list or a CPU tensor would meet device tensors later)."""
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.as_tensor(timesteps, dtype=torch.float32)
        if timesteps.ndim == 1 and timesteps.shape[0] == batch_size:
            timesteps = timesteps[:, None].expand(batch_size, frames)
        if tuple(timesteps.shape) != (batch_size, frames):
            raise ValueError(
                f"{name} must have shape [B={batch_size}, F={frames}] (or [B]), got {tuple(timesteps.shape)}"
            )
        if not bool(torch.isfinite(timesteps).all()) or bool((timesteps < 0).any()) or bool((timesteps > 1).any()):
            raise ValueError(f"{name} must be finite flow times in [0, 1]")
        return timesteps.to(device)

    def _check_text(self, text: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
        if text is None:
            return None
        if not self.config.text_dim:
            raise ValueError("this model has no text cross-attention (text_dim=0) but text was given")
        if text.ndim != 3 or text.shape[0] != batch_size or text.shape[2] != self.config.text_dim:
            raise ValueError(
                f"text must be [B={batch_size}, L, {self.config.text_dim}] text-encoder states, got {tuple(text.shape)}"
            )
        return text
