"""Every training setting in one typed dataclass, with named presets; saved as JSON next to the checkpoints.

`astra train --preset NAME [--config file.json] [--set key=value ...]`: the preset first, then the JSON file,
then each `--set` (dotted keys reach into `flow`, e.g. `--set flow.shift=3`).
"""

from __future__ import annotations

import dataclasses
import math
import json
from dataclasses import dataclass, field
from typing import Any

from astra.config_fields import dataclass_from_dict
from astra.diffusion.flow import FlowConfig
from astra.errors import AstraError


@dataclass(frozen=True)
class TrainConfig:
    # --- model ----------------------------------------------------------------------------------------
    model: str = "astra-tiny"  # an AstraConfig preset name or a path to a config.json
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # Wan2.1 weights (file or diffusers folder) or an Astra checkpoint; None = scratch

    # --- data -----------------------------------------------------------------------------------------
    data: str = "synthetic"  # "synthetic" (random latents: smoke tests, benchmarks) or a latents dir
    world_weights: dict[str, float] = field(default_factory=dict)  # joint training: source -> sampling weight
    history_range: tuple[int, int] = (1, 8)  # history length in latent frames, sampled per batch
    target_frames: int = 0  # latent frames per target chunk; 0 = the model's chunk_frames
    batch_size: int = 2  # per process
    latent_size: tuple[int, int] = (8, 8)  # (h, w) of synthetic latents

    # --- optimisation ---------------------------------------------------------------------------------
    steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    action_lr_scale: float = 1.0  # lr multiplier for the action experts and projectors (newly initialised, small)
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # 0 = no EMA
    seed: int = 0

    # --- flow matching and the Astra recipe -----------------------------------------------------------
    flow: FlowConfig = field(default_factory=FlowConfig)
    noisy_memory_prob: float = 0.5  # probability that a sample's history is corrupted
    noisy_memory_range: tuple[float, float] = (0.0, 0.5)  # t_hist ~ U[lo, hi], told to the model per frame
    action_dropout: float = 0.1  # probability that a sample's target actions become the null action
    aux_loss_weight: float = 0.01  # weight of the experts' load-balancing loss
    diffusion_forcing: bool = False  # several causal target chunks per sequence at their own noise levels
    copy_prior: bool = False  # predict the velocity relative to copying the newest history frame
    copy_prior_sigma: float = 0.5  # typical std of the latent change between frames (copy prior width)
    # The copy prior's anchor is the newest history frame as it was before noisy memory corrupted it (at inference:
    # the newest generated frame before `history_noise`), instead of as the model remembers it. Why: a noised anchor
    # puts the memory's noise into the prior velocity; the network can cancel it for the unmoved anchor (it sees that
    # frame) but not once the motion prior has warped it, which is most of why its loss is higher with the actions
    # (docs/results.md, session 33: 44 % lower held-out loss, samples no better)
    clean_anchor: bool = False
    # Noisy memory spares the oldest history frame, as a rollout keeps its start frame (always memory slot 0) clean
    # while it noises the frames it generated (`history_noise`); otherwise the start frame is noised in training like
    # the rest, and the clean one-frame history every rollout starts from is 3 % of the samples
    clean_first_memory: bool = False
    motion_fit_batches: int = 0  # before step 0, fit the motion prior on this many batches (0 = keep it as loaded)
    motion_fit_iterations: int = 300  # full-batch Adam steps of that fit (astra/train/motion_fit.py)
    motion_fit_radius: int = 3  # latent pixels each way the fit's whole-pixel shift search covers per frame
    # Self-generated memory (rollout training): with this probability a sample's newest history chunk is replaced by
    # the model's own sample of it (no gradient), so it learns to correct its errors instead of compounding them
    self_history_prob: float = 0.0
    self_history_steps: int = 4  # sampler steps of that sample (the rollout default)
    self_history_guidance: float = 3.0  # its action-free guidance scale (the rollout default, the paper's s)
    # Faded memory: with this probability a sample's history, all but its oldest frame (a clean reference, as the start
    # frame is in a rollout), is shrunk toward each frame's per-channel spatial mean by a contrast factor drawn from
    # faded_memory_range, with the real target: rollouts lose contrast chunk by chunk and a model that copies its memory
    # hands the loss on, so it should learn to restore it (docs/results.md, session 26)
    faded_memory_prob: float = 0.0
    faded_memory_range: tuple[float, float] = (0.3, 1.0)  # contrast kept, ~ U[lo, hi]
    # Change-weighted loss: each target element's squared error is weighted by 1 + change_weight * (its distance from
    # the newest clean history frame, over the sample's mean distance), normalised to mean 1 per sample. Copying
    # already gets the static background right; what moves with the action (the arm, the turning scene) is a small
    # share of the elements and so of the plain loss (0 = the plain loss)
    change_weight: float = 0.0
    # Rollout settings the exported model plays with (RolloutConfig fields, e.g. {"guidance_scale": 2.0}); they win
    # over those inherited from init_from, which win over the generic defaults (Trainer.sampling_defaults)
    sampling: dict[str, Any] = field(default_factory=dict)

    # --- systems --------------------------------------------------------------------------------------
    mixed_precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "no"
    grad_checkpointing: bool = False
    parallel: str = "auto"  # under torchrun: "ddp", "fsdp" or "auto" (fsdp when the backbone is frozen)
    log_every: int = 10
    save_every: int = 500
    keep_checkpoints: int = 3
    val_every: int = 0  # held-out validation loss every this many steps, at the start and at the end (0 = never)
    val_batches: int = 16  # fixed held-out batches per validation (astra/train/validation.py)
    # Stop (saving a checkpoint, then exporting as at the end) once this call has trained this many minutes, 0 = no
    # limit: a lent machine is taken back at a fixed time. The schedule still runs to `steps`; size `steps` to the
    # time (scripts/gpu_train.sh measures the rate first) so the learning rate has decayed by then
    max_minutes: float = 0.0

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return dataclass_from_dict(cls, data, "TrainConfig")

    def with_updates(self, updates: dict[str, Any]) -> "TrainConfig":
        """Apply (possibly dotted, e.g. "flow.shift") updates; values are validated by `validate`."""
        data = self.to_dict()
        for key, value in updates.items():
            head, _, rest = key.partition(".")
            if rest:
                if not isinstance(data.get(head), dict):
                    raise AstraError(f"setting {key!r}: {head!r} is not a nested setting")
                data[head] = {**data[head], rest: value}
            else:
                data[key] = value
        return TrainConfig.from_dict(data)

    def validate(self) -> None:
        self.flow.validate()
        lo, hi = self.history_range
        if not 0 <= lo <= hi:
            raise AstraError(f"history_range must satisfy 0 <= lo <= hi, got {self.history_range}")
        lo, hi = self.noisy_memory_range
        if not 0.0 <= lo <= hi <= 1.0 or lo == 1.0:  # lo is the exported history_noise, which rollout needs < 1
            raise AstraError(
                f"noisy_memory_range must satisfy 0 <= lo <= hi <= 1 and lo < 1, got {self.noisy_memory_range}"
            )
        lo, hi = self.faded_memory_range
        if not 0.0 < lo <= hi <= 1.0:
            raise AstraError(f"faded_memory_range must satisfy 0 < lo <= hi <= 1, got {self.faded_memory_range}")
        for name in ("noisy_memory_prob", "action_dropout", "self_history_prob", "faded_memory_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise AstraError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.change_weight < math.inf:
            raise AstraError(f"change_weight must be a finite number >= 0, got {self.change_weight}")
        if self.batch_size < 1 or self.steps < 0 or self.warmup_steps < 0:
            raise AstraError(
                f"batch_size must be >= 1, steps and warmup_steps >= 0, got {self.batch_size}, {self.steps}, "
                f"{self.warmup_steps}"
            )
        if self.target_frames < 0:
            raise AstraError(f"target_frames must be >= 0 (0 = the model's chunk_frames), got {self.target_frames}")
        if len(self.latent_size) != 2 or min(self.latent_size) < 1:
            raise AstraError(f"latent_size must be two sizes >= 1 (h, w), got {self.latent_size}")
        if self.lr <= 0 or not 0.0 <= self.ema_decay < 1.0:
            raise AstraError(f"lr must be > 0 and ema_decay in [0, 1), got {self.lr}, {self.ema_decay}")
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise AstraError(f"betas must both lie in [0, 1), got {self.betas}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise AstraError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        if not self.grad_clip > 0:  # the norm gradients are clipped to: 0 would zero them, < 0 flip them
            raise AstraError(f"grad_clip must be > 0, got {self.grad_clip}")
        self.validate_seed()
        if self.action_lr_scale <= 0:
            raise AstraError(f"action_lr_scale must be > 0, got {self.action_lr_scale}")
        if self.mixed_precision not in ("auto", "bf16", "no"):
            raise AstraError(f"mixed_precision must be 'auto', 'bf16' or 'no', got {self.mixed_precision!r}")
        if self.parallel not in ("auto", "ddp", "fsdp"):
            raise AstraError(f"parallel must be 'auto', 'ddp' or 'fsdp', got {self.parallel!r}")
        if self.copy_prior and self.history_range[0] < 1:
            raise AstraError("copy_prior needs at least one history frame: set history_range lo >= 1")
        if self.diffusion_forcing and self.history_range[0] < 1:
            raise AstraError("diffusion_forcing needs at least one memory frame: set history_range lo >= 1")
        if self.self_history_prob > 0 and self.diffusion_forcing:
            raise AstraError(
                "self_history_prob and diffusion_forcing cannot be combined (diffusion forcing re-splits the history)"
            )
        if self.self_history_steps < 1:
            raise AstraError(f"self_history_steps must be >= 1, got {self.self_history_steps}")
        if self.motion_fit_batches < 0 or self.motion_fit_iterations < 1:
            raise AstraError(
                f"motion_fit_batches must be >= 0 and motion_fit_iterations >= 1, got {self.motion_fit_batches}, "
                f"{self.motion_fit_iterations}"
            )
        if self.motion_fit_radius < 1:
            raise AstraError(f"motion_fit_radius must be >= 1 latent pixel, got {self.motion_fit_radius}")
        if self.motion_fit_batches and not self.copy_prior:
            raise AstraError("motion_fit_batches fits the copy prior's motion: it needs copy_prior=True")
        if self.val_every < 0 or self.val_batches < 1:
            raise AstraError(f"val_every must be >= 0 and val_batches >= 1, got {self.val_every}, {self.val_batches}")
        for name in ("log_every", "save_every"):  # cadences in steps (the loop takes step % it)
            if getattr(self, name) < 1:
                raise AstraError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.max_minutes >= 0:
            raise AstraError(f"max_minutes must be >= 0 (0 = no limit), got {self.max_minutes}")
        if self.keep_checkpoints < 0:
            raise AstraError(f"keep_checkpoints must be >= 0 (0 = keep all), got {self.keep_checkpoints}")
        if self.copy_prior_sigma <= 0:
            raise AstraError(f"copy_prior_sigma must be > 0, got {self.copy_prior_sigma}")
        self.validate_sampling()

    def validate_seed(self) -> None:
        """Seeds the per-step generators take (astra/train/batches.py), the held-out ones included (seed + offset)."""
        from astra.train.batches import MAX_GENERATOR_SEED
        from astra.train.validation import HELDOUT_SEED_OFFSET

        highest = MAX_GENERATOR_SEED - HELDOUT_SEED_OFFSET
        if not 0 <= self.seed <= highest:
            raise AstraError(f"seed must lie in [0, {highest}], got {self.seed}")

    def validate_sampling(self) -> None:
        """`sampling` names only the model's rollout settings, with values a RolloutConfig accepts."""
        from astra.rollout.session import SAMPLING_FIELDS, RolloutConfig

        unknown = sorted(set(self.sampling) - set(SAMPLING_FIELDS))
        if unknown:
            raise AstraError(f"sampling: unknown setting(s) {', '.join(unknown)}; known: {', '.join(SAMPLING_FIELDS)}")
        try:
            values = {key: tuple(value) if key == "guidance_interval" else value for key, value in self.sampling.items()}
            RolloutConfig(**values).validate()
        except TypeError as error:
            raise AstraError(f"sampling {self.sampling}: a value has the wrong type ({error})") from None


PRESETS: dict[str, TrainConfig] = {
    # Unit tests and smoke runs: a tiny model on random latents, a few steps.
    "astra-tiny": TrainConfig(
        model="astra-tiny",
        data="synthetic",
        history_range=(1, 3),
        batch_size=2,
        latent_size=(4, 4),
        steps=4,
        lr=1e-3,
        warmup_steps=1,
        ema_decay=0.9,
        log_every=1,
        save_every=2,
    ),
    # The shipped small model: from scratch on the latents of all four simulator worlds (`astra data encode`),
    # joint training with per-world weights; every parameter trains (the preset's trainable = None).
    "astra-small": TrainConfig(
        model="astra-small",
        data="data/latents",
        world_weights={"doom": 1.0, "robot": 1.0, "camera": 1.0, "drive": 1.0},
        history_range=(1, 12),
        batch_size=8,
        latent_size=(16, 16),
        steps=100_000,
        lr=5e-4,
        weight_decay=0.01,
        warmup_steps=200,
        ema_decay=0.999,
        noisy_memory_prob=0.7,  # stronger than the first 2,250 shipped steps (0.5, up to 0.5): against visual inertia
        noisy_memory_range=(0.2, 0.8),
        copy_prior=True,
        # the shipped model's sampler (docs/results.md, sessions 19, 22, 27 and 28: chosen on training episodes; also
        # 1.1 dB better than the generic defaults for the session-22 rebuild)
        sampling={"guidance_scale": 2.0, "history_noise": 0.3, "noise_scale": 0.3, "stats_anchor": 0.2,
                  "stats_anchor_match": "covariance"},  # fmt: skip
        motion_fit_batches=256,  # 2,048 frames, ~1 min on 2 CPU cores; --resume restores it from the checkpoint
        log_every=20,
        save_every=250,
        val_every=250,  # 16 held-out batches scored four ways, ~30 s on 2 CPU cores
    ),
    # Astra on Wan2.1-T2V-1.3B, the paper's recipe: lr 1e-5, backbone frozen except self-attention and the
    # added modules (the model preset's freeze policy), shift 5 and the authors' bell loss weighting, noisy memory
    # with probability 0.8 at t_hist in [0.63, 1.0] (their code), bf16 autocast over fp32 masters, FSDP.
    "wan2.1-t2v-1.3b": TrainConfig(
        model="wan2.1-t2v-1.3b",
        data="data/latents-wan",
        history_range=(1, 20),
        batch_size=1,
        latent_size=(60, 104),
        steps=30_000,
        lr=1e-5,
        warmup_steps=200,
        ema_decay=0.9999,
        flow=FlowConfig(timestep_sampling="uniform", shift=5.0, loss_weighting="bell"),
        noisy_memory_prob=0.8,
        noisy_memory_range=(0.63, 1.0),
        action_dropout=0.1,
        grad_checkpointing=True,
        mixed_precision="auto",
        parallel="fsdp",
        log_every=10,
        save_every=500,
    ),
}


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise AstraError(f"unknown training preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
