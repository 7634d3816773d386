"""Frame metrics in [0, 1] pixel units: PSNR, SSIM, frame statistics, collapse flags, action following.

Frames are uint8 [T, H, W, 3] (or one [H, W, 3]) as the worlds and the rollout session produce them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PSNR_CAP_DB = 60.0  # identical frames have infinite PSNR; averages use this cap (~1/4 of a grey level RMS)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03  # Wang et al. 2004 stabilisers, for a data range of 1


def to_unit(frames: np.ndarray) -> np.ndarray:
    """uint8 frames -> float64 in [0, 1]."""
    return np.asarray(frames, dtype=np.float64) / 255.0


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"frames to compare differ in shape: {list(a.shape)} vs {list(b.shape)}")


def mse_per_frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] x2 -> [T] mean squared error in [0, 1] units (one [H, W, 3] frame -> [1])."""
    _check_pair(a, b)
    if a.ndim == 3:
        return mse_per_frame(a[None], b[None])
    diff = to_unit(a) - to_unit(b)
    return (diff**2).reshape(len(diff), -1).mean(axis=1)


def psnr_of_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error in [0, 1] units (peak 1); inf for no error."""
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images (or videos, over all pixels) with peak 1; inf when identical."""
    _check_pair(a, b)
    return psnr_of_mse(float(np.mean((to_unit(a) - to_unit(b)) ** 2)))


def capped_psnr(mse: np.ndarray, cap_db: float = PSNR_CAP_DB) -> np.ndarray:
    """Per-frame squared errors [T] -> PSNR in dB, capped at `cap_db` so that means stay finite."""
    with np.errstate(divide="ignore"):
        return np.minimum(10.0 * np.log10(1.0 / np.asarray(mse, dtype=np.float64)), cap_db)


def psnr_per_frame(a: np.ndarray, b: np.ndarray, cap_db: float = PSNR_CAP_DB) -> np.ndarray:
    """[T, H, W, 3] x2 (or one [H, W, 3] frame) -> [T] PSNR in dB, capped at `cap_db` so that means stay finite."""
    return capped_psnr(mse_per_frame(a, b), cap_db)


def pooled_psnr(mse_values: list[float] | np.ndarray) -> float:
    """PSNR in dB of the mean of squared errors (frames or cases, each in [0, 1] units): no cap decides it, and a
    perfect prediction of a few frames counts for what it is, no error there; inf only when all are perfect."""
    return psnr_of_mse(float(np.mean(np.asarray(mse_values, dtype=np.float64))))


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return torch.outer(kernel, kernel)


def ssim_per_frame(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] x2 -> [T] SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, valid filtering),
    computed per RGB channel and averaged over channels and positions. 1.0 for identical frames."""
    _check_pair(a, b)
    if a.ndim == 3:
        return ssim_per_frame(a[None], b[None])
    if min(a.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {list(a.shape[1:3])}")
    x = torch.from_numpy(to_unit(a)).permute(0, 3, 1, 2)  # [T, 3, H, W]
    y = torch.from_numpy(to_unit(b)).permute(0, 3, 1, 2)
    channels = x.shape[1]
    window = _gaussian_window().expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(image: torch.Tensor) -> torch.Tensor:
        return F.conv2d(image, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).numpy()


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over the frames of two images or videos."""
    return float(ssim_per_frame(a, b).mean())


# --------------------------------------------------------------------------------------- long rollouts
COLLAPSE_FLAGS = ("blank", "frozen", "saturated")


@dataclass(frozen=True)
class CollapseConfig:
    # A frame is blank when its spatial std (per channel, averaged) is below this fraction of its reference's: the
    # ground truth's same frame, or (no ground truth) the start frame. Relative, because doom's dark scenes have
    # little contrast to begin with (std 0.035-0.05) and the VAE alone keeps only 0.35-0.9 of it there.
    blank_contrast: float = 0.25
    frozen_motion: float = 0.002  # a run of frames whose mean |frame_t - frame_t-1| is below this is frozen
    frozen_window: int = 16  # consecutive frames in such a run
    # A frame is saturated when more than `saturated_fraction` of its pixels have every channel above
    # `saturated_level`: held doom turns burned the picture white and changing, which neither flag above sees.
    saturated_level: float = 0.9
    saturated_fraction: float = 0.1


def frame_stats(frames: np.ndarray, saturated_level: float = CollapseConfig.saturated_level) -> dict[str, np.ndarray]:
    """Per frame [T]: mean intensity, spatial std (of each channel over the frame, averaged over channels: a frame
    of one colour has none, whatever the colour), detail (mean |difference| between neighbouring pixels, across and
    down: edges and texture; blur lowers it, a flat field has none, smooth blobs little), mean |frame_t - frame_t-1|
    (0 for the first frame), and the fraction of pixels with every channel above `saturated_level`. One [H, W, 3]
    frame counts as T = 1."""
    if frames.ndim == 3:
        return frame_stats(frames[None], saturated_level)
    pixels = to_unit(frames)
    unit = pixels.reshape(len(frames), -1)
    spatial_std = pixels.reshape(len(frames), -1, pixels.shape[-1]).std(axis=1).mean(axis=1)
    across, down = np.abs(np.diff(pixels, axis=2)), np.abs(np.diff(pixels, axis=1))
    detail = (across.mean(axis=(1, 2, 3)) + down.mean(axis=(1, 2, 3))) / 2
    motion = np.zeros(len(frames))
    motion[1:] = np.abs(np.diff(unit, axis=0)).mean(axis=1)
    saturated = (pixels.min(axis=-1) > saturated_level).reshape(len(frames), -1).mean(axis=1)
    return {"mean": unit.mean(axis=1), "std": spatial_std, "detail": detail, "motion": motion, "saturated": saturated}


def detail_kept(frames: np.ndarray, reference: np.ndarray) -> float:
    """The mean `detail` of `frames` over that of `reference` (1 = as much edge and texture; blur lowers it)."""
    return float(frame_stats(frames)["detail"].mean() / max(frame_stats(reference)["detail"].mean(), 1e-12))


def _windowed_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each run of `window` consecutive values; entry i covers values[i : i + window]."""
    sums = np.convolve(values, np.ones(window), mode="valid")
    return sums / window


def collapse_masks(
    stats: dict[str, np.ndarray], reference_std: np.ndarray | float, config: CollapseConfig = CollapseConfig()
) -> dict[str, np.ndarray]:
    """Per frame [T] booleans from one video's `frame_stats` (at config.saturated_level): blank (against
    `reference_std`, per frame or one number), first frame of a frozen window, saturated. Frame 0 has no predecessor,
    so frozen windows cover the motion of frames 1..T-1."""
    frozen = np.zeros(len(stats["std"]), dtype=bool)
    if len(frozen) > config.frozen_window:
        still = _windowed_mean(stats["motion"][1:], config.frozen_window) < config.frozen_motion
        frozen[1 : 1 + len(still)] = still
    return {
        "blank": stats["std"] < config.blank_contrast * np.asarray(reference_std),
        "frozen": frozen,
        "saturated": stats["saturated"] > config.saturated_fraction,
    }


def first_true(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def collapse_frames(generated: np.ndarray, truth: np.ndarray, config: CollapseConfig = CollapseConfig()) -> dict:
    """First frame index (or None) where the generation is blank (has lost most of the ground truth's contrast),
    frozen or saturated while the ground truth is not.

    Frame 0 of both videos should be the start frame, so that frame 1's motion is measured from it."""
    _check_pair(generated, truth)
    model_stats, truth_stats = (frame_stats(video, config.saturated_level) for video in (generated, truth))
    model, real = (collapse_masks(stats, truth_stats["std"], config) for stats in (model_stats, truth_stats))
    return {name: first_true(model[name] & ~real[name]) for name in COLLAPSE_FLAGS}


def follows_actions(
    generated_true: np.ndarray, generated_alternative: np.ndarray, truth_true: np.ndarray, truth_alternative: np.ndarray
) -> list[bool]:
    """Two trials: is each generation closer (pixel MSE) to its own ground truth than to the other one's?"""
    own_true = float(mse_per_frame(generated_true, truth_true).mean())
    cross_true = float(mse_per_frame(generated_true, truth_alternative).mean())
    own_alternative = float(mse_per_frame(generated_alternative, truth_alternative).mean())
    cross_alternative = float(mse_per_frame(generated_alternative, truth_true).mean())
    return [own_true < cross_true, own_alternative < cross_alternative]


def futures_differ(truth_true: np.ndarray, truth_alternative: np.ndarray, min_mse: float) -> bool:
    """Whether two ground-truth futures are different enough to score (a wall can block both)."""
    return float(mse_per_frame(truth_true, truth_alternative).mean()) >= min_mse


def binomial_summary(successes: int, trials: int) -> dict[str, float | int | None]:
    """Success fraction and its binomial standard error sqrt(p (1 - p) / n); None when there were no trials."""
    if trials == 0:
        return {"score": None, "stderr": None, "n": 0}
    score = successes / trials
    return {"score": score, "stderr": math.sqrt(score * (1.0 - score) / trials), "n": trials}
