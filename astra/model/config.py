"""Typed configuration of the Astra flow transformer, with named presets.

One config describes the whole denoiser: the Wan2.1 backbone, the Mixture of Action Experts, the
FramePack-style history packing and the freeze policy. Presets are looked up by name
(`AstraConfig.from_preset("wan2.1-t2v-1.3b")`); every field can be overridden.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from astra.config_fields import dataclass_from_dict


@dataclass(frozen=True)
class HistoryBudget:
    """How many latent frames of history are kept at each compression scale.

    Token order in the packed sequence is chronological: first frame, 4x, 2x, newest 1x history, target.
    The first frame of the video always stays at full resolution (it anchors the scene); the
    `full` newest frames are also kept at full resolution; the next `compressed_2x` older frames go
    through a (2,4,4) patch embedder and the next `compressed_4x` through a (4,8,8) one (sizes are for
    the Wan (1,2,2) patch: the compressed embedders use patch * (2,2,2) and patch * (4,4,4)).
    Frames older than all of that are dropped (the first frame excepted).
    """

    keep_first: bool = True
    full: int = 2
    compressed_2x: int = 2
    compressed_4x: int = 16


@dataclass(frozen=True)
class AstraConfig:
    # --- Wan2.1 flow-transformer backbone -------------------------------------------------------
    in_channels: int = 16
    out_channels: int = 16
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    patch_size: tuple[int, int, int] = (1, 2, 2)
    freq_dim: int = 256  # sinusoidal timestep embedding width
    text_len: int = 512
    text_dim: int = 4096  # 0 = no text cross-attention at all (the small presets)
    eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_max_positions: int = 1024
    qk_norm: bool = True
    cross_attn_norm: bool = True
    zero_init_head: bool = False  # from-scratch training: start from a zero velocity (DiT's adaLN-Zero habit)

    # --- Mixture of Action Experts ----------------------------------------------------------------
    modalities: tuple[str, ...] = ("camera7", "camera12", "robot7", "keyboard_mouse", "vehicle7")
    action_space_dim: int = 24  # shared action space; +1 history bit is appended before the router
    num_experts: int = 4
    top_k: int = 1
    expert_hidden_dim: int = 32
    expert_routing: str = "learned"  # "learned" (softmax router, top-k) or "fixed" (expert chosen by modality)
    fixed_expert_of_modality: tuple[tuple[str, int], ...] = ()  # used when expert_routing == "fixed"
    normalize_actions: bool = False  # standardise each action column with the training data's mean/std (buffers)
    inject_actions: bool = True  # add the action embedding inside every block
    motion_prior: bool = False  # actions also move the copy-prior anchor (model/motion_prior.py; small presets)
    # The anchor moves only for target frames at flow time t >= this. At low t the noisy frame already shows the
    # motion and a network trained without the prior corrects for it, so moving the anchor there too corrects twice
    # (measured: held-out validation loss 0.14 -> 0.49 when a fitted prior is switched on under trained weights).
    # 0 = at every t (the shipped model).
    motion_prior_min_t: float = 0.0
    act_adapter: bool = True  # identity-initialised Linear(dim, dim) after each self-attention

    # --- Attention and timesteps --------------------------------------------------------------------
    attention: str = "block_causal"  # "block_causal" (native) or "bidirectional" (authors' checkpoint)
    per_frame_timesteps: bool = True  # False: every token shares the target's timestep (authors' checkpoint)
    history_embedder_1x: bool = False  # True: full-resolution history has its own patch embedder (authors')

    # --- History packing and streaming ---------------------------------------------------------------
    history: HistoryBudget = field(default_factory=HistoryBudget)
    chunk_frames: int = 2  # latent frames generated per autoregressive step
    kv_cache_chunks: int = 8  # rolling window of cached history chunks (the first frame is always kept)

    # --- Freeze policy ------------------------------------------------------------------------------
    # Parameter-name prefixes (module paths) that train; everything else is frozen.
    # None = train everything (a small model trained from scratch).
    trainable: tuple[str, ...] | None = (
        "blocks.*.self_attn",
        "blocks.*.act_adapter",
        "blocks.*.action_experts",
        "action_projectors",
        "motion_prior",
        "history_embedders",
    )

    # --- Latent space / pixels (informational; used by rollout and data code) -------------------------
    vae: str = "wan2.1"  # name of the VAE preset this denoiser's latents come from
    resolution: tuple[int, int] = (480, 832)  # (height, width) in pixels
    fps: int = 16

    # --- helpers ----------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """(time, height, width) widths of the head dimension: 44/42/42 for head_dim 128, as in Wan."""
        d = self.head_dim
        hw = 2 * (d // 6)
        return d - 2 * hw, hw, hw

    def replace(self, **changes: Any) -> "AstraConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AstraConfig":
        return dataclass_from_dict(cls, data, "AstraConfig")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "AstraConfig":
        from astra.errors import ConfigError  # an AstraError: the CLI prints it as one line

        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]

    def validate(self) -> None:
        sizes = ("in_channels", "out_channels", "dim", "ffn_dim", "num_heads", "num_layers", "freq_dim",
                 "rope_max_positions", "action_space_dim", "num_experts")  # fmt: skip
        for name in sizes:  # a zero or negative size built a model with no blocks or failed deep inside torch
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.expert_hidden_dim < 0:  # 0: each expert is one Linear (the authors' layout)
            raise ValueError(f"expert_hidden_dim must be >= 0, got {self.expert_hidden_dim}")
        if min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be positive, got {self.patch_size}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or min(self.rope_split) <= 0 or any(s % 2 for s in self.rope_split):
            raise ValueError(f"head_dim {self.head_dim} cannot be split into even 3-D RoPE parts")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k {self.top_k} must lie in [1, num_experts={self.num_experts}]")
        if self.attention not in ("block_causal", "bidirectional"):
            raise ValueError(f"attention must be 'block_causal' or 'bidirectional', got {self.attention!r}")
        if self.expert_routing not in ("learned", "fixed"):
            raise ValueError(f"expert_routing must be 'learned' or 'fixed', got {self.expert_routing!r}")
        if self.expert_routing == "fixed":  # else a bad entry fails at the first forward, or routes nothing
            for modality, expert in self.fixed_expert_of_modality:
                if modality not in self.modalities:
                    raise ValueError(
                        f"fixed_expert_of_modality names modality {modality!r}, which is not in modalities "
                        f"{self.modalities}"
                    )
                if not 0 <= expert < self.num_experts:
                    raise ValueError(
                        f"fixed_expert_of_modality routes {modality!r} to expert {expert}, outside "
                        f"[0, num_experts={self.num_experts})"
                    )
        if self.motion_prior and not self.inject_actions:
            raise ValueError("motion_prior needs the action module (inject_actions=True)")
        if not 0.0 <= self.motion_prior_min_t <= 1.0:
            raise ValueError(f"motion_prior_min_t must lie in [0, 1], got {self.motion_prior_min_t}")
        if self.chunk_frames < 1:
            raise ValueError("chunk_frames must be >= 1")
        for name in ("full", "compressed_2x", "compressed_4x"):
            if getattr(self.history, name) < 0:
                raise ValueError(f"history.{name} (frames kept) must be >= 0, got {getattr(self.history, name)}")
        if self.kv_cache_chunks < 0:
            raise ValueError(f"kv_cache_chunks (chunks kept in the cache) must be >= 0, got {self.kv_cache_chunks}")
        if self.patch_size[0] != 1:
            raise ValueError(
                f"patch_size {self.patch_size}: the time patch must be 1 (timesteps, actions and chunks are per frame)"
            )


PRESETS: dict[str, AstraConfig] = {
    # The real backbone: numbers from the Wan2.1-T2V-1.3B release (shared/spec/wan21.md).
    "wan2.1-t2v-1.3b": AstraConfig(),
    # The shipped small model: trained from scratch on CPU on our simulator worlds, no text.
    # Streaming layout: history at full resolution only (first frame + the newest `full` frames), the frames the
    # rolling KV cache holds at inference (kv_cache_chunks * chunk_frames = full), so training sees what play keeps.
    # Not bit for bit: once the window rolls, the kept frames' deeper-layer keys and values still carry attention to
    # the dropped ones (shipped model, 10 chunks: 0.1-0.6 / 255 mean pixel difference from a full recompute).
    "astra-small": AstraConfig(
        in_channels=16,
        out_channels=16,
        dim=192,
        ffn_dim=576,
        num_heads=3,
        num_layers=6,
        patch_size=(1, 2, 2),
        text_dim=0,
        text_len=0,
        rope_max_positions=256,
        action_space_dim=24,
        expert_hidden_dim=64,
        normalize_actions=True,
        motion_prior=True,
        history=HistoryBudget(keep_first=True, full=4, compressed_2x=0, compressed_4x=0),
        chunk_frames=1,
        kv_cache_chunks=4,
        trainable=None,
        zero_init_head=True,
        vae="astra-small-vae",
        resolution=(64, 64),
        fps=16,
    ),
    # A tiny config for unit tests (fast on two CPU cores).
    "astra-tiny": AstraConfig(
        in_channels=4,
        out_channels=4,
        dim=64,
        ffn_dim=128,
        num_heads=2,
        num_layers=2,
        patch_size=(1, 2, 2),
        text_dim=32,
        text_len=8,
        rope_max_positions=64,
        action_space_dim=8,
        expert_hidden_dim=16,
        history=HistoryBudget(keep_first=True, full=1, compressed_2x=2, compressed_4x=4),
        chunk_frames=2,
        kv_cache_chunks=4,
        vae="astra-tiny-vae",
        resolution=(32, 32),
    ),
}
