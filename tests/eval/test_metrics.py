import math

import numpy as np
import pytest

from astra.eval.metrics import (
    CollapseConfig,
    binomial_summary,
    collapse_frames,
    detail_kept,
    follows_actions,
    frame_stats,
    futures_differ,
    mse_per_frame,
    psnr,
    psnr_per_frame,
    ssim,
    ssim_per_frame,
)


def random_frames(seed: int, count: int = 3, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


def test_identical_frames_give_infinite_psnr_and_unit_ssim():
    frames = random_frames(0)
    assert psnr(frames, frames) == math.inf
    assert ssim(frames, frames) == pytest.approx(1.0, abs=1e-12)
    assert np.all(psnr_per_frame(frames, frames) == 60.0)  # capped for averaging


def test_psnr_of_known_noise():
    frames = np.full((2, 16, 16, 3), 100, np.uint8)
    noisy = frames.copy()
    noisy[:, ::2] += 10  # half the pixels off by 10 levels: MSE = (10/255)^2 / 2
    expected = 10 * math.log10(1 / ((10 / 255) ** 2 / 2))
    assert psnr(frames, noisy) == pytest.approx(expected)
    assert psnr_per_frame(frames, noisy) == pytest.approx([expected, expected])


def test_one_frame_is_one_frame_not_h_rows():
    frame, other = random_frames(1, count=2, size=16)
    assert mse_per_frame(frame, other).shape == (1,)
    assert psnr_per_frame(frame, other) == pytest.approx(psnr_per_frame(frame[None], other[None]))
    stats = frame_stats(frame)
    assert all(values.shape == (1,) for values in stats.values())
    assert stats["std"] == pytest.approx(frame_stats(frame[None])["std"])


def test_ssim_of_constant_images_matches_the_formula():
    # sigma = 0 everywhere, so SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    a, b = np.full((1, 16, 16, 3), 51, np.uint8), np.full((1, 16, 16, 3), 204, np.uint8)
    mu_x, mu_y, c1 = 0.2, 0.8, 0.01**2
    assert ssim(a, b) == pytest.approx((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1))


def test_ssim_drops_with_noise_and_is_symmetric():
    rng = np.random.default_rng(1)
    clean = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))[None]
    slightly = np.clip(clean + rng.normal(0, 5, clean.shape), 0, 255).astype(np.uint8)
    heavily = np.clip(clean + rng.normal(0, 60, clean.shape), 0, 255).astype(np.uint8)
    assert 1.0 > ssim(clean, slightly) > ssim(clean, heavily)
    assert ssim_per_frame(clean, heavily) == pytest.approx(ssim_per_frame(heavily, clean))


def test_metrics_reject_mismatched_or_tiny_frames():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(random_frames(0, size=16), random_frames(0, size=24))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(random_frames(0, size=8), random_frames(1, size=8))


def test_frame_stats_and_collapse_flags():
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8)  # moves every frame
    stats = frame_stats(truth)
    assert stats["motion"][0] == 0 and stats["motion"][1:].min() > 0.1
    frozen = np.repeat(truth[:1], 40, axis=0)
    blank = truth.copy()
    blank[10:] = 128  # grey from frame 10 on: blank there, and no motion from frame 11 on
    assert collapse_frames(truth, truth) == {"blank": None, "frozen": None, "saturated": None}
    assert collapse_frames(frozen, truth)["frozen"] == 1
    assert collapse_frames(blank, truth) == {"blank": 10, "frozen": 11, "saturated": None}
    assert collapse_frames(blank[:26], truth[:26])["frozen"] is None  # only 15 still frames: shorter than the window
    # a ground truth that does not move cannot make the model "frozen"
    assert collapse_frames(frozen, frozen, CollapseConfig())["frozen"] is None
    # one colour is blank whatever the colour: an olive field has no picture although its channels differ
    olive = truth.copy()
    olive[10:] = (150, 140, 40)
    assert frame_stats(olive)["std"][10] < 1e-6 and collapse_frames(olive, truth)["blank"] == 10
    # blank is relative to the truth: a dark, low-contrast truth keeps a faint (blurred) generation from counting
    faint = (truth // 8).astype(np.uint8)  # std about 0.04, like a dark doom scene
    for divisor, first_blank in ((2, None), (5, 1)):  # half the contrast: still a picture; a fifth: blank
        washed = faint // divisor + 60
        washed[0] = faint[0]  # frame 0 is the start frame on both sides
        assert collapse_frames(washed, faint)["blank"] == first_blank, divisor


def test_detail_is_none_for_a_field_and_low_for_smooth_blobs_of_high_contrast():
    picture = np.random.default_rng(4).integers(60, 160, size=(1, 32, 32, 3), dtype=np.uint8)  # texture everywhere
    field = np.full_like(picture, 90)
    blobs = field.copy()
    blobs[:, :, 16:] = (250, 30, 200)  # two smooth halves: high contrast, one edge
    detail = {name: frame_stats(frames)["detail"][0] for name, frames in
              (("picture", picture), ("field", field), ("blobs", blobs))}  # fmt: skip
    assert detail["field"] == 0.0
    assert frame_stats(blobs)["std"][0] > frame_stats(picture)["std"][0]  # the blobs have more contrast ...
    assert detail["blobs"] < 0.1 * detail["picture"]  # ... and a tenth of the detail
    assert detail_kept(blobs, picture) == pytest.approx(detail["blobs"] / detail["picture"])
    assert detail_kept(picture, picture) == 1.0


def test_saturated_frames_are_flagged_even_while_they_change():
    """Held doom turns burned moving white stripes into the picture: not blank, not frozen, but not the world."""
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 200, size=(30, 16, 16, 3), dtype=np.uint8)  # nothing near white
    burned = truth.copy()
    burned[12:, :, :4] = 255  # a quarter of every frame white from frame 12 on, the rest still moving
    flags = collapse_frames(burned, truth)
    assert flags == {"blank": None, "frozen": None, "saturated": 12}
    assert frame_stats(burned)["saturated"][12] == 0.25
    assert collapse_frames(burned, burned)["saturated"] is None  # a white world (snow, a lit wall) is no failure
    burned[12:, :, :1] = 255
    burned[12:, :, 1:4] = truth[12:, :, 1:4]  # 1/16 of the pixels: below the 10 % threshold
    assert collapse_frames(burned, truth)["saturated"] is None


def test_action_following_scorer_on_known_answers():
    truth_a = np.zeros((4, 16, 16, 3), np.uint8)
    truth_b = np.full((4, 16, 16, 3), 200, np.uint8)
    near_a, near_b = truth_a + 20, truth_b - 20
    assert follows_actions(near_a, near_b, truth_a, truth_b) == [True, True]  # each follows its own actions
    assert follows_actions(near_b, near_a, truth_a, truth_b) == [False, False]  # swapped: both wrong
    assert follows_actions(near_a, near_a, truth_a, truth_b) == [True, False]  # ignores the actions
    assert futures_differ(truth_a, truth_b, 5e-4) and not futures_differ(truth_a, truth_a + 1, 5e-4)
    summary = binomial_summary(3, 4)
    assert summary["score"] == 0.75 and summary["stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert binomial_summary(0, 0)["score"] is None
