"""Training and evaluation of the small VAE on recorded episodes (all worlds jointly).

Loss: L1 + `gradient_weight` * L1 of image gradients (a cheap, LPIPS-free sharpness term) + a small KL
to a unit Gaussian (`kl_weight`, as in the Wan VAE; the posterior sample is the decoder's input, so the
latent space stays smooth for the flow model). After training, per-channel mean/std of the posterior
means are measured on training clips and stored in the config, so `encode` returns ~unit-variance
latents.

A checkpoint folder holds `model.safetensors` + `config.json` (what `load_vae` reads) and
`training_state.pt` (optimizer, step, sampler RNG), each written atomically; `resume=True` continues it.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from astra.config_fields import changed_settings
from astra.errors import AstraError, CheckpointError, DataError
from astra.vae.common import TEMPORAL_STRIDE
from astra.vae.small import (
    SMALL_VAE_PRESETS, SmallVAE, add_reference_path, load_small_vae, read_small_vae_config, save_small_vae,
)

TRAINING_STATE_FILE = "training_state.pt"


@dataclass(frozen=True)
class VAETrainConfig:
    preset: str = "astra-small-vae"
    steps: int = 20_000
    batch_size: int = 8
    clip_frames: int = 9  # 4k+1 video frames per training clip
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    final_lr_fraction: float = 0.1  # cosine decay to this fraction of the peak learning rate
    gradient_weight: float = 0.5
    # L1 between the frame-to-frame changes of reconstruction and video: a decoder that copies a reference frame
    # where the truth moved is charged for the motion it hides (0 = off, as the shipped VAE's first stages trained)
    temporal_gradient_weight: float = 0.0
    kl_weight: float = 1e-6
    checkpoint_every: int = 500
    stats_clips: int = 64  # clips used to measure the latent mean/std at the end
    seed: int = 0
    # Fine-tune only the decoder of an existing VAE (`init_from`): the encoder, and so the latent space and its
    # statistics, stay exactly as they are, so a transformer trained on its latents stays valid.
    init_from: str | None = None
    freeze_encoder: bool = False
    # Add a reference path to init_from's decoder (SmallVAEConfig.reference_frame) and train only that path (the
    # rest of the VAE stays as it was, so where the path does not help, decoding is unchanged); each batch decodes
    # without the real start frame with probability reference_dropout, so the decoder also works when none is known.
    reference_frame: bool = False
    reference_dropout: float = 0.1

    def validate(self) -> None:
        if self.preset not in SMALL_VAE_PRESETS:
            raise AstraError(f"unknown small-VAE preset {self.preset!r}; known: {', '.join(SMALL_VAE_PRESETS)}")
        if self.clip_frames < 1 or (self.clip_frames - 1) % TEMPORAL_STRIDE:
            raise AstraError(f"clip_frames must be 4k+1 (5, 9, 17, ...), got {self.clip_frames}")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1 or self.stats_clips < 1:
            raise AstraError("steps, batch_size, checkpoint_every and stats_clips must be >= 1")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise AstraError(f"learning rate (--lr) must be a finite number > 0, got {self.learning_rate}")
        for name in ("weight_decay", "gradient_weight", "temporal_gradient_weight", "kl_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise AstraError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.warmup_steps < 0 or not 0.0 <= self.final_lr_fraction <= 1.0:
            raise AstraError(
                f"warmup_steps must be >= 0 and final_lr_fraction in [0, 1], got {self.warmup_steps}, "
                f"{self.final_lr_fraction}"
            )
        if not 0.0 <= self.reference_dropout <= 1.0:
            raise AstraError(f"reference_dropout must lie in [0, 1], got {self.reference_dropout}")
        if self.freeze_encoder and self.init_from is None:
            raise AstraError("freeze_encoder needs init_from: the VAE whose encoder is kept")
        if self.reference_frame and self.init_from is None:
            raise AstraError("reference_frame adds a reference path to a trained decoder: it needs init_from")


class ClipPool:
    """Decoded frames of many episodes, grouped by world; samples clips with every world equally likely."""

    def __init__(self, episodes: dict[str, list[np.ndarray]]):
        self.episodes = {world: clips for world, clips in sorted(episodes.items()) if clips}
        if not self.episodes:
            raise DataError("no episodes to sample clips from")

    @property
    def worlds(self) -> list[str]:
        return list(self.episodes)

    def sample(
        self, generator: torch.Generator, batch_size: int, clip_frames: int, resolution: tuple[int, int]
    ) -> torch.Tensor:
        """[B, 3, clip_frames, H, W] in [-1, 1]."""
        clips = []
        for _ in range(batch_size):
            world = self.worlds[int(torch.randint(len(self.worlds), (), generator=generator))]
            candidates = [frames for frames in self.episodes[world] if len(frames) >= clip_frames]
            if not candidates:
                raise DataError(f"world {world!r} has no episode with {clip_frames} frames")
            frames = candidates[int(torch.randint(len(candidates), (), generator=generator))]
            start = int(torch.randint(len(frames) - clip_frames + 1, (), generator=generator))
            clips.append(frames_to_video(frames[start : start + clip_frames], resolution))
        return torch.cat(clips)


def frames_to_video(frames: np.ndarray, resolution: tuple[int, int]) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [1, 3, T, h, w] in [-1, 1], area-resized to `resolution` if needed."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)
    if tuple(video.shape[-2:]) != tuple(resolution):
        video = F.interpolate(video.transpose(0, 1), size=resolution, mode="area").transpose(0, 1)
    return video.unsqueeze(0)


def load_clip_pool(roots: Iterable[str | Path], split: str) -> ClipPool:
    """Read every episode of `split` under `roots` (frames only) into memory, keyed by meta["world"]."""
    from astra.data.format import list_episodes, read_frames, read_meta

    episodes: dict[str, list[np.ndarray]] = defaultdict(list)
    paths = [path for root in roots for path in list_episodes(root, split=split)]
    if not paths:
        raise DataError(f"no {split} episodes under {', '.join(map(str, roots))}")
    for path in tqdm(paths, desc=f"reading {split} episodes", leave=False):
        world = read_meta(path).get("meta", {}).get("world", "unknown")
        episodes[world].append(read_frames(path))
    return ClipPool(episodes)


def image_gradient_l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 between horizontal and vertical finite differences of two videos."""
    loss = 0.0
    for dim in (-1, -2):
        loss = loss + (prediction.diff(dim=dim) - target.diff(dim=dim)).abs().mean()
    return loss


def vae_loss(
    vae: SmallVAE, video: torch.Tensor, config: VAETrainConfig, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    mean, logvar = vae.encode_distribution(video)
    noise = torch.randn(mean.shape, generator=generator)
    start = None
    if vae.config.reference_frame:  # (no draw otherwise: older runs keep their random stream)
        start = None if torch.rand(1, generator=generator).item() < config.reference_dropout else video[:, :, :1]
    reconstruction = vae.decode_raw(mean + (0.5 * logvar).exp() * noise, start=start)
    l1 = (reconstruction - video).abs().mean()
    gradient = image_gradient_l1(reconstruction, video)
    motion = (reconstruction.diff(dim=2) - video.diff(dim=2)).abs().mean() if video.shape[2] > 1 else l1 * 0
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
    loss = l1 + config.gradient_weight * gradient + config.temporal_gradient_weight * motion + config.kl_weight * kl
    return loss, {"l1": l1.item(), "grad": gradient.item(), "motion": motion.item(), "kl": kl.item()}


def learning_rate(step: int, config: VAETrainConfig) -> float:
    """Linear warmup, then cosine decay to `final_lr_fraction` of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.learning_rate * (config.final_lr_fraction + (1.0 - config.final_lr_fraction) * cosine)


@torch.no_grad()
def measure_latent_statistics(
    vae: SmallVAE, pool: ClipPool, config: VAETrainConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the raw posterior means over `stats_clips` random clips."""
    vae.eval()
    means = []
    for first in range(0, config.stats_clips, config.batch_size):
        count = min(config.batch_size, config.stats_clips - first)
        video = pool.sample(generator, count, config.clip_frames, vae.config.resolution)
        means.append(vae.encode_distribution(video)[0].transpose(0, 1).reshape(vae.latent_channels, -1))
    latents = torch.cat(means, dim=1)
    return latents.mean(dim=1), latents.std(dim=1).clamp_min(1e-4)


def _save_checkpoint(vae, optimizer, generator, step: int, out: Path, config: VAETrainConfig) -> None:
    buffer = io.BytesIO()
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "generator": generator.get_state()}, buffer)
    metadata = {"step": step, "train": dataclasses.asdict(config)}
    save_small_vae(vae, out, metadata, extra_files={TRAINING_STATE_FILE: buffer.getvalue()})


# Settings a resumed run may change: none alters what trains or how (a decoder fine-tune resumed without
# --freeze-encoder would move the latents that a transformer was trained on).
MAY_CHANGE_ON_RESUME = frozenset({"steps", "checkpoint_every", "stats_clips"})


def _check_resumable(out: Path, config: VAETrainConfig) -> None:
    """Refuse to resume a run under other training settings than it was saved with, naming them."""
    saved = read_small_vae_config(out)[1].get("train")
    if not isinstance(saved, dict):  # written before runs recorded their settings: nothing to compare
        return
    saved = dataclasses.asdict(VAETrainConfig()) | saved  # a setting newer than the run was, in effect, at its default
    changed = changed_settings(saved, dataclasses.asdict(config), MAY_CHANGE_ON_RESUME)
    if changed:
        raise CheckpointError(
            f"{out} was trained with other settings ({'; '.join(changed)}); --resume continues a run as it was "
            f"started (only {', '.join(sorted(MAY_CHANGE_ON_RESUME))} may change): pass the same flags, or start a "
            f"new --out with --init-from {out}"
        )


def _statistics_of(vae: SmallVAE) -> tuple[torch.Tensor, torch.Tensor]:
    return vae.latents_mean.flatten().clone(), vae.latents_std.flatten().clone()


def train_vae(pool: ClipPool, out: str | Path, config: VAETrainConfig, resume: bool = False) -> SmallVAE:
    """Train (or continue) a small VAE into `out`; returns it with latent statistics measured."""
    config.validate()
    out = Path(out)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    state_file = out / TRAINING_STATE_FILE
    if resume and state_file.is_file():
        _check_resumable(out, config)
        vae = load_small_vae(out)
        vae.set_latent_stats(torch.zeros(vae.latent_channels), torch.ones(vae.latent_channels))
        training_state = torch.load(state_file, map_location="cpu", weights_only=True)
    elif resume:
        raise CheckpointError(f"--resume given but {state_file} does not exist")
    else:
        if state_file.is_file():
            raise CheckpointError(f"{out} already holds a training run; pass --resume to continue it")
        vae = load_small_vae(config.init_from) if config.init_from else SmallVAE(SMALL_VAE_PRESETS[config.preset])
        if config.reference_frame:
            vae = add_reference_path(vae)
        training_state = None
    kept_stats = _statistics_of(vae)
    keeps_encoder = config.freeze_encoder or config.reference_frame
    if keeps_encoder:
        if training_state is not None:  # resuming a decoder fine-tune: the statistics are the encoder's
            kept_stats = _statistics_of(load_small_vae(config.init_from))
        vae.encoder.requires_grad_(False)
    if config.reference_frame:
        vae.requires_grad_(False)
        vae.decoder.reference.requires_grad_(True)
    trainable = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    start = 0
    if training_state is not None:
        optimizer.load_state_dict(training_state["optimizer"])
        generator.set_state(training_state["generator"])
        start = int(training_state["step"])
    vae.train()
    progress = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="vae train")
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        video = pool.sample(generator, config.batch_size, config.clip_frames, vae.config.resolution)
        loss, parts = vae_loss(vae, video, config, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}", l1=f"{parts['l1']:.4f}")
        if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            _save_checkpoint(vae, optimizer, generator, step + 1, out, config)
    # A generator of its own, so that a finished run resumed with more steps samples as one long run would.
    stats_generator = torch.Generator().manual_seed(config.seed + 1)
    if keeps_encoder:
        vae.set_latent_stats(*kept_stats)
    else:
        vae.set_latent_stats(*measure_latent_statistics(vae, pool, config, stats_generator))
    _save_checkpoint(vae, optimizer, generator, config.steps, out, config)
    return vae.eval()


# --- evaluation ------------------------------------------------------------------------------------


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of videos in [-1, 1] (peak-to-peak 2)."""
    mse = (prediction - target).square().mean().item()
    return float("inf") if mse == 0 else 10.0 * math.log10(4.0 / mse)


def ssim(prediction: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Gaussian window, on [0, 1] intensities, per channel) over all frames of two videos."""
    x = (prediction.transpose(1, 2).flatten(0, 1) + 1) / 2  # [N, 3, H, W]
    y = (target.transpose(1, 2).flatten(0, 1) + 1) / 2
    coords = torch.arange(window, dtype=torch.float32) - window // 2
    gauss = torch.exp(-coords.square() / (2 * sigma**2))
    kernel = (gauss[:, None] * gauss[None, :] / gauss.sum() ** 2).expand(x.shape[1], 1, window, window)

    def blur(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(image, kernel, groups=image.shape[1])

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return score.mean().item()


@torch.no_grad()
def decode_ms_per_frame(vae, latents: torch.Tensor, repeats: int = 3) -> dict[str, float]:
    """Wall-clock decode time per output video frame: one-shot, and streaming one latent frame per chunk."""
    frames = TEMPORAL_STRIDE * (latents.shape[2] - 1) + 1
    vae.decode(latents)  # warm-up
    begin = time.perf_counter()
    for _ in range(repeats):
        vae.decode(latents)
    one_shot = (time.perf_counter() - begin) / repeats / frames * 1000
    stream = vae.stream_decoder()
    stream.decode_chunk(latents[:, :, :1])
    begin = time.perf_counter()
    for index in range(1, latents.shape[2]):
        stream.decode_chunk(latents[:, :, index : index + 1])
    streaming = (time.perf_counter() - begin) / max(1, frames - 1) * 1000
    return {"decode_ms_per_frame": one_shot, "stream_decode_ms_per_frame": streaming}


@torch.no_grad()
def evaluate_vae(vae, pool: ClipPool, max_frames: int = 33, reference=None) -> dict[str, Any]:
    """PSNR/SSIM per world over the first 4k+1 (<= max_frames) frames of every episode, and decode speed.

    With a `reference` VAE also the latent change |z - z_ref|^2 / |z_ref|^2 of the normalised latents: whether a
    transformer trained on the reference's latents still fits this VAE's (0 after a decoder-only fine-tune)."""
    results: dict[str, Any] = {}
    resolution = vae.config.resolution if isinstance(vae, SmallVAE) else None
    latents = None
    for world, episodes in pool.episodes.items():
        scores, change, reference_energy = [], 0.0, 0.0
        for frames in episodes:
            usable = min(len(frames), max_frames)
            usable -= (usable - 1) % TEMPORAL_STRIDE
            video = frames_to_video(frames[:usable], resolution or frames.shape[1:3])
            latents = vae.encode(video)
            reconstruction = vae.decode(latents, start=video[:, :, :1])  # the start is known, as in a rollout
            scores.append((psnr(reconstruction, video), ssim(reconstruction, video)))
            if reference is not None:
                reference_latents = reference.encode(video)
                if reference_latents.shape != latents.shape:
                    raise AstraError(
                        f"the reference VAE encodes {world} to latents of shape {tuple(reference_latents.shape)}, "
                        f"this one to {tuple(latents.shape)}: latent change needs the same latent layout"
                    )
                change += (latents - reference_latents).square().sum().item()
                reference_energy += reference_latents.square().sum().item()
        results[world] = {
            "episodes": len(scores),
            "psnr": float(np.mean([s[0] for s in scores])),
            "ssim": float(np.mean([s[1] for s in scores])),
        }
        if reference is not None:
            results[world]["latent_change"] = change / max(reference_energy, 1e-12)
    results["speed"] = decode_ms_per_frame(vae, latents)
    return results

