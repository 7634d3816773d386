"""Streaming generation: start from an image, then each `step(actions)` returns the next chunk of frames.

Per chunk: draw seeded noise, integrate the flow with the Euler sampler (action-free guidance batched into the
same forward), run the finished chunk once at t = 0 to extend the clean-history KV cache (a rolling window keeps
memory constant), and decode it with the VAE's streaming decoder (its causal state carries across chunks, so the
stream equals a one-shot decode of the same latents).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from astra.actions.align import FRAMES_PER_LATENT, identity_action, latent_actions
from astra.actions.modalities import check_action_values, get_modality
from astra.diffusion.flow import add_noise
from astra.diffusion.guidance import guidance_passes
from astra.diffusion.sampler import SamplerConfig, sample_chunk
from astra.errors import AstraError, UnusualActionWarning
from astra.images import to_rgb
from astra.model.action_experts import ActionInput, unusual_actions
from astra.rollout.anchor import MATCHES, anchor_stats


# The RolloutConfig fields that belong to the model (stored in its checkpoint's metadata, compared by `astra eval
# --compare`); copy_prior_sigma is fixed by training and seed by the caller.
SAMPLING_FIELDS = (
    "num_steps", "shift", "guidance_scale", "guidance_interval", "guidance_outside", "history_noise", "noise_scale",
    "stats_anchor", "stats_anchor_match", "guide_anchor",
)


@dataclass(frozen=True)
class RolloutConfig:
    num_steps: int = 4
    shift: float = 1.0
    guidance_scale: float = 3.0  # action-free guidance (the paper's s = 3)
    # Noise level of the generated frames in the model's memory (what it attends to and copies from), told to it as
    # their flow time (0 = clean). A model trained with noisy memory then sees its own output as it saw noised real
    # frames in training instead of as perfect ground truth, so its errors stop compounding (GameNGen's noise
    # augmentation). The start frame is real and stays clean.
    history_noise: float = 0.0
    copy_prior_sigma: float | None = None  # must match training (read from the checkpoint's metadata)
    clean_anchor: bool = False  # the copy prior copies the newest frame before history_noise (training's, likewise)
    guidance_interval: tuple[float, float] = (0.0, 1.0)  # flow times at which guidance applies (SamplerConfig)
    guidance_outside: float = 1.0  # the action scale outside that interval (1 = conditional, 0 = action-free)
    # Guidance moves the copy prior's anchor along the motion prior's move too (the whole velocity guided, as the
    # paper's formula reads) instead of amplifying the network's residual alone: follows actions more, at the cost
    # of next-chunk PSNR (SamplerConfig, guided_velocity).
    guide_anchor: bool = False
    # Scale of the noise each chunk starts from (the sampling temperature): 1 draws from the trained distribution;
    # below 1 the Euler path starts nearer the noise's centre and lands nearer the frame the network expects, with less
    # detail drawn at random (0 = deterministic given the memory and actions).
    noise_scale: float = 1.0
    # Rollouts of a small model drift chunk by chunk: the latents' colour wanders and their contrast fades to a flat
    # field. With an anchor a > 0, each generated latent frame's spatial statistics are pulled that fraction of the
    # way toward the start frame's before the frame is decoded and remembered: 1 matches them, 0 leaves the latents
    # as sampled. It keeps colour and contrast, not content. The match (astra.rollout.anchor): "mean" pulls each
    # channel's mean only, "channels" each channel's mean and spread, "covariance" the mean and the channels' joint
    # covariance.
    stats_anchor: float = 0.0
    stats_anchor_match: str = "channels"
    seed: int = 0

    def validate(self) -> None:
        if self.num_steps < 1:
            raise AstraError(f"num_steps (--steps) must be >= 1, got {self.num_steps}")
        if not 0.0 <= self.history_noise < 1.0:
            raise AstraError(f"history_noise must lie in [0, 1), got {self.history_noise}")
        if not math.isfinite(self.guidance_scale):
            raise AstraError(f"guidance scale (--guidance) must be a finite number, got {self.guidance_scale}")
        if not (isinstance(self.guidance_outside, (int, float)) and math.isfinite(self.guidance_outside)):
            raise AstraError(f"guidance outside the interval must be a finite number, got {self.guidance_outside}")
        if not (math.isfinite(self.shift) and self.shift > 0):
            raise AstraError(f"shift (--shift) must be a finite number > 0, got {self.shift}")
        interval = self.guidance_interval
        if not (
            len(interval) == 2
            and all(isinstance(t, (int, float)) for t in interval)
            and 0.0 <= interval[0] <= interval[1] <= 1.0
        ):
            raise AstraError(f"guidance interval must be two flow times 0 <= lo <= hi <= 1, got {interval}")
        scale = self.noise_scale
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
            raise AstraError(f"noise scale (--noise-scale) must be a finite number >= 0, got {self.noise_scale}")
        anchor = self.stats_anchor
        if not (isinstance(anchor, (int, float)) and math.isfinite(anchor) and 0 <= anchor <= 1):
            raise AstraError(f"stats anchor (--stats-anchor) must be a number in [0, 1], got {anchor}")
        if self.stats_anchor_match not in MATCHES:
            raise AstraError(
                f"stats anchor match (--stats-anchor-match) must be one of {', '.join(MATCHES)}, "
                f"got {self.stats_anchor_match!r}"
            )
        for name in ("guide_anchor", "clean_anchor"):
            if not isinstance(getattr(self, name), bool):
                raise AstraError(f"{name} must be true or false, got {getattr(self, name)!r}")
        sigma = self.copy_prior_sigma
        if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
            raise AstraError(f"copy_prior_sigma must be a finite number > 0, got {sigma}")

    def sampling(self) -> dict[str, Any]:
        """The settings a checkpoint's `sampling` metadata holds (what load_rollout reads back), JSON-ready."""
        values = {name: getattr(self, name) for name in SAMPLING_FIELDS}
        return values | {"guidance_interval": list(self.guidance_interval)}

    def sampler(self) -> SamplerConfig:
        return SamplerConfig(
            num_steps=self.num_steps,
            shift=self.shift,
            action_guidance=self.guidance_scale,
            copy_prior_sigma=self.copy_prior_sigma,
            guidance_interval=self.guidance_interval,
            guidance_outside=self.guidance_outside,
            guide_anchor=self.guide_anchor,
        )


def read_image(path: str | Path) -> Image.Image:
    """An image file as RGB; an unreadable file, or one whose header claims more pixels than PIL's
    decompression-bomb limit, is an AstraError naming it."""
    try:
        with Image.open(path) as opened:
            return to_rgb(opened)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise AstraError(f"cannot read image {path}: {error}") from None


def prepare_image(image: np.ndarray | Image.Image | str | Path, size: tuple[int, int]) -> np.ndarray:
    """Any RGB image -> uint8 [H, W, 3] at `size` (height, width): centre-crop to the aspect ratio, then resize."""
    if isinstance(image, (str, Path)):
        image = read_image(image)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise AstraError(f"start image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        image = Image.fromarray(image[..., :3])
    elif image.mode != "RGB":  # grey, palette or alpha: [H, W] or 4 channels would reach the VAE
        image = to_rgb(image)
    height, width = size
    if image.size != (width, height):
        # The crop is taken in the source's pixels and only it is resampled: scaling the whole picture first would
        # allocate (long side x scale) pixels, gigabytes for a 1 x 16M upload of a few kilobytes.
        source_w, source_h = image.size
        scale = max(width / source_w, height / source_h)
        crop_w, crop_h = width / scale, height / scale
        left, top = (source_w - crop_w) / 2, (source_h - crop_h) / 2
        image = image.resize((width, height), Image.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
        warnings.warn(f"start image {source_w}x{source_h} resized and centre-cropped to {width}x{height}", stacklevel=3)
    return np.asarray(image, dtype=np.uint8)


def frames_to_video(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [1, 3, T, H, W] in [-1, 1]."""
    video = torch.from_numpy(np.array(frames, dtype=np.uint8)).float().div(127.5).sub(1.0)
    return video.permute(3, 0, 1, 2).unsqueeze(0)


def video_to_frames(video: torch.Tensor) -> np.ndarray:
    """float [1, 3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3]."""
    frames = video[0].permute(1, 2, 3, 0).float().clamp(-1, 1).add(1).mul(127.5).round()
    return frames.to(torch.uint8).cpu().numpy()


class RolloutSession:
    """A live world: `start(image)` then `step(frame_rows)` -> the next `frames_per_step` frames."""

    def __init__(
        self,
        model: torch.nn.Module,
        vae: Any,
        modality: str,
        config: RolloutConfig = RolloutConfig(),
        action_meta: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ):
        if modality not in model.config.modalities:
            raise AstraError(f"this model has no {modality!r} actions; it knows: {', '.join(model.config.modalities)}")
        self.model = model.eval()
        self.vae = vae
        self.modality = modality
        self.width = get_modality(modality).width
        config.validate()
        self.config = config
        self.action_meta = dict(action_meta or {})
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype  # bf16 on GPU: inputs follow the weights
        self.vae_dtype = next(vae.parameters()).dtype
        self.chunk_frames = model.config.chunk_frames
        self.frames_per_step = FRAMES_PER_LATENT * self.chunk_frames
        self.passes = guidance_passes(config.sampler().passes_action_scale, 1.0, True, False)
        self.generator = torch.Generator(device="cpu")
        # Streaming (block-causal, per-frame timesteps) keeps a KV cache; other models (the authors' checkpoint in
        # compatibility mode: bidirectional, shared timestep) recompute their packed history at every step.
        self.streaming = model.config.attention == "block_causal" and model.config.per_frame_timesteps
        budget = model.config.history
        self.max_history = int(budget.keep_first) + budget.full + budget.compressed_2x + budget.compressed_4x
        self.cache = None
        self.history_latents: torch.Tensor | None = None
        self.history_levels: torch.Tensor | None = None  # their flow times [1, F] (history_noise; 0 = the start)
        self.history_actions: np.ndarray | None = None
        self.started = False
        self.decoder = None
        self.newest_latent: torch.Tensor | None = None
        self.newest_memory: torch.Tensor | None = None  # the newest latent as the model remembers it (noised)
        self.start_latent: torch.Tensor | None = None  # the stats anchor's reference
        self.unusual_columns: set[str] = set()  # action columns already warned about (once each per session)

    @property
    def resolution(self) -> tuple[int, int]:
        return tuple(self.model.config.resolution)

    def _actions(self, latent_rows: np.ndarray) -> ActionInput:
        """[F, width] per-latent actions -> an ActionInput for the guidance batch (padded to the widest modality)."""
        max_width = max(get_modality(m).width for m in self.model.config.modalities)
        values = torch.zeros(self.passes, latent_rows.shape[0], max_width)
        values[:, :, : self.width] = torch.from_numpy(latent_rows).float()
        return ActionInput(values.to(self.device, self.dtype), (self.modality,) * self.passes)

    @torch.no_grad()
    def start(self, image: np.ndarray | Image.Image | str | Path, seed: int | None = None) -> np.ndarray:
        """Encode the start image as latent frame 0 and fill the cache; returns the frame as the model sees it."""
        frame = prepare_image(image, self.resolution)
        self.generator.manual_seed(self.config.seed if seed is None else seed)
        video = frames_to_video(frame[None]).to(self.device, self.vae_dtype)
        latent = self.vae.encode(video).to(self.dtype)
        identity = identity_action(self.modality)[None]  # latent frame 0's action: nothing happened yet
        # The start frame is real, not generated: it enters the memory clean (flow time 0).
        if self.streaming:
            self.cache = self.model.prefill(latent.repeat(self.passes, 1, 1, 1, 1), actions=self._actions(identity))
        else:
            levels = torch.zeros(latent.shape[0], 1, device=self.device, dtype=self.dtype)
            self.history_latents, self.history_levels, self.history_actions = latent, levels, identity
        self.started = True
        self.decoder = self.vae.stream_decoder(start=video)  # a reference-frame decoder starts from the real image
        self.newest_latent = self.newest_memory = latent
        self.start_latent = latent[:, :, :1]
        return video_to_frames(self.decoder.decode_chunk(latent.to(self.vae_dtype)))[0]

    def _anchored(self, latents: torch.Tensor) -> torch.Tensor:
        """Generated latents with each frame's statistics pulled toward the start frame's (stats_anchor)."""
        return anchor_stats(latents, self.start_latent, self.config.stats_anchor, self.config.stats_anchor_match)

    def _as_memory(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Finished latents -> (the memory the model attends to: noised to `history_noise` with seeded noise, and
        its per-frame flow times [B, F])."""
        level = self.config.history_noise
        levels = torch.full(latents.shape[:1] + latents.shape[2:3], level, device=self.device, dtype=self.dtype)
        if level == 0.0:
            return latents, levels
        noise = torch.randn(latents.shape, generator=self.generator).to(self.device, latents.dtype)
        return add_noise(latents, noise, levels), levels

    def _step_recompute(self, noise: torch.Tensor, chunk_actions: np.ndarray, anchor: torch.Tensor) -> torch.Tensor:
        """No cache: the whole (bounded) history runs with the target at every denoising step."""
        actions = self._actions(np.concatenate([self.history_actions, chunk_actions]))
        actions = dataclasses.replace(actions, values=actions.values[:1], modality=actions.modality[:1])
        latents = sample_chunk(
            self.model, noise, history_latents=self.history_latents, history_timesteps=self.history_levels,
            actions=actions, anchor=anchor, config=self.config.sampler(),
        )
        latents = self._anchored(latents)
        self.newest_memory, new_levels = self._as_memory(latents)
        history = torch.cat([self.history_latents, self.newest_memory], dim=2)
        levels = torch.cat([self.history_levels, new_levels], dim=1)
        rows = np.concatenate([self.history_actions, chunk_actions])
        if history.shape[2] > self.max_history:  # the model would drop these frames anyway: keep the first
            keep = [0] + list(range(history.shape[2] - self.max_history + 1, history.shape[2]))
            history, levels, rows = history[:, :, keep], levels[:, keep], rows[keep]
        self.history_latents, self.history_levels, self.history_actions = history, levels, rows
        return latents

    def _checked(self, values: np.ndarray, rows: int, what: str) -> np.ndarray:
        """float32 [rows, width] after checking the session has started, the shape and finiteness."""
        if not self.started:
            raise AstraError("call start(image) before step(actions)")
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (rows, self.width):
            raise AstraError(
                f"{what} needs {rows} rows of {self.modality} actions (width {self.width}), got shape {list(values.shape)}"
            )
        try:
            check_action_values(values, what)
        except ValueError as error:
            raise AstraError(str(error)) from None
        return values

    @torch.no_grad()
    def step(self, frame_rows: np.ndarray) -> np.ndarray:
        """Per-frame action rows [frames_per_step, width] -> the next frames, uint8 [frames_per_step, H, W, 3]."""
        rows = self._checked(frame_rows, self.frames_per_step, "step()")
        # Rows 4c-4..4c-1 drive latent frame c; a trailing copy makes the 4k+1 layout latent_actions expects.
        padded = np.concatenate([rows, rows[-1:]], axis=0)
        try:
            latent_rows = latent_actions(self.modality, padded, meta=self.action_meta)
        except ValueError as error:
            raise AstraError(f"step(): {error}") from None
        return self.step_latent(latent_rows[1:])

    def unusual_action_warnings(self, latent_rows: np.ndarray) -> list[str]:
        """One line per action column of per-latent rows [F, width] far outside the model's training actions,
        each column once per session (`step_latent` warns with these; `astra generate` prints them up front)."""
        normalizers = getattr(getattr(self.model, "action_projectors", None), "normalizers", None)
        lines = []
        for unusual in unusual_actions(normalizers, self.modality, latent_rows):
            if unusual.column not in self.unusual_columns:
                self.unusual_columns.add(unusual.column)
                lines.append(unusual.describe(self.modality))
        return lines

    @torch.no_grad()
    def step_latent(self, chunk_actions: np.ndarray) -> np.ndarray:
        """One action vector per latent frame [chunk_frames, width] -> the next frames (uint8)."""
        chunk_actions = self._checked(chunk_actions, self.chunk_frames, "step_latent()")
        for line in self.unusual_action_warnings(chunk_actions):
            warnings.warn(line, UnusualActionWarning, stacklevel=2)
        actions = self._actions(chunk_actions)
        batch = 1
        latent_shape = self.newest_latent.shape
        noise = self.config.noise_scale * torch.randn(
            (batch, latent_shape[1], self.chunk_frames, *latent_shape[3:]), generator=self.generator
        ).to(self.device, self.dtype)
        cond_actions = dataclasses.replace(actions, values=actions.values[:batch], modality=actions.modality[:batch])
        # copied as the model remembers it, or as generated for a model trained with clean_anchor
        anchor = (self.newest_latent if self.config.clean_anchor else self.newest_memory)[:, :, -1:]
        if self.streaming:
            latents = sample_chunk(
                self.model, noise, actions=cond_actions, kv_cache=self.cache, anchor=anchor, config=self.config.sampler()
            )
            latents = self._anchored(latents)
            self.newest_memory, levels = self._as_memory(latents)
            self.model.extend_cache(
                self.cache, self.newest_memory.repeat(self.passes, 1, 1, 1, 1), actions, levels.repeat(self.passes, 1)
            )
        else:
            latents = self._step_recompute(noise, chunk_actions, anchor)
        self.newest_latent = latents
        frames = video_to_frames(self.decoder.decode_chunk(latents.to(self.vae_dtype)))
        return frames


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A shipped model name (a folder under weights/ or $ASTRA_WEIGHTS) or a path to a checkpoint folder."""
    from astra.weights import resolve_weights, weights_root

    path = resolve_weights(name_or_path)
    if path is not None:
        return path
    raise AstraError(
        f"no checkpoint {name_or_path!r}: not a path, and not a shipped model under {weights_root()} "
        "(set ASTRA_WEIGHTS to the folder holding the shipped weights if astra was not installed from a clone)"
    )


def load_rollout(
    checkpoint: str | Path = "astra-small",
    *,
    steps: int | None = None,
    shift: float | None = None,
    guidance_scale: float | None = None,
    history_noise: float | None = None,
    guidance_interval: tuple[float, float] | None = None,
    guidance_outside: float | None = None,
    noise_scale: float | None = None,
    stats_anchor: float | None = None,
    stats_anchor_match: str | None = None,
    guide_anchor: bool | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> tuple[torch.nn.Module, Any, dict[str, Any], RolloutConfig]:
    """Load (model, vae, metadata, rollout config) from an Astra checkpoint folder and the VAE it names."""
    from astra.model.checkpoints import load_astra
    from astra.vae import load_vae

    folder = resolve_checkpoint(checkpoint)
    model, metadata = load_astra(folder, device=device)
    # The VAE the latents were encoded with: the path recorded at training time where it exists (a local run),
    # else the shipped VAE the config names (a shipped model, its VAE committed beside it).
    recorded = metadata.get("vae")
    vae = load_vae(recorded if recorded and Path(recorded).exists() else model.config.vae).to(device)
    sampling = metadata.get("sampling", {})

    given = {"num_steps": steps, "shift": shift, "guidance_scale": guidance_scale, "history_noise": history_noise,
             "guidance_interval": guidance_interval, "guidance_outside": guidance_outside, "noise_scale": noise_scale,
             "stats_anchor": stats_anchor, "stats_anchor_match": stats_anchor_match,
             "guide_anchor": guide_anchor}  # fmt: skip
    # per field: the caller's value, else the checkpoint's, else the default
    values = {
        name: given[name] if given[name] is not None else sampling.get(name, getattr(RolloutConfig, name))
        for name in SAMPLING_FIELDS
    }
    values["guidance_interval"] = tuple(values["guidance_interval"])
    config = RolloutConfig(
        **values,
        copy_prior_sigma=metadata.get("copy_prior_sigma"),
        clean_anchor=metadata.get("clean_anchor", False),
        seed=seed,
    )
    config.validate()
    return model, vae, metadata, config


MODALITY_OF_WORLD = {"doom": "keyboard_mouse", "robot": "robot7", "camera": "camera7", "drive": "vehicle7"}


def rollout_factory(
    checkpoint: str | Path = "astra-small", **sampling: Any
) -> tuple[Callable[[str], RolloutSession], tuple[int, int]]:
    """Load a model once; return (world name -> new RolloutSession, the model's (height, width)). `sampling`:
    the sampler keywords of `load_rollout` (steps, guidance_scale, history_noise, guidance_interval, ...)."""
    model, vae, metadata, config = load_rollout(checkpoint, **sampling)
    action_meta = metadata.get("action_meta", {})

    def make(world: str) -> RolloutSession:
        if world not in MODALITY_OF_WORLD:
            raise AstraError(f"unknown world {world!r}; known: {', '.join(MODALITY_OF_WORLD)}")
        return RolloutSession(model, vae, MODALITY_OF_WORLD[world], config, action_meta.get(world, {}))

    return make, tuple(model.config.resolution)
