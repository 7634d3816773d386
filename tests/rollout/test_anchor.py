import pytest
import torch

from astra.rollout.anchor import anchor_stats, spatial_stats


def frames(seed: int, channels: int = 6, count: int = 2, side: int = 12) -> torch.Tensor:
    return torch.randn(1, channels, count, side, side, generator=torch.Generator().manual_seed(seed))


def channel_covariance(latents: torch.Tensor) -> torch.Tensor:
    """[1, C, F, H, W] -> [F, C, C] spatial covariance per frame."""
    pixels = latents[0].double().flatten(2).transpose(0, 1)  # [F, C, N]
    centred = pixels - pixels.mean(-1, keepdim=True)
    return centred @ centred.transpose(-1, -2) / (pixels.shape[-1] - 1)


def test_channels_match_pulls_each_channels_mean_linearly_and_spread_geometrically():
    start, drifted = frames(0, count=1), frames(1) * 0.2 + 1.5
    assert torch.equal(anchor_stats(drifted, start, 0.0, "channels"), drifted)
    (mean, spread), (start_mean, start_spread) = spatial_stats(drifted), spatial_stats(start)
    matched = anchor_stats(drifted, start, 1.0, "channels")
    matched_mean, matched_spread = spatial_stats(matched)
    assert torch.allclose(matched_mean, start_mean.expand_as(mean), atol=1e-5)
    assert torch.allclose(matched_spread, start_spread.expand_as(spread), rtol=1e-4)
    halfway_mean, halfway_spread = spatial_stats(anchor_stats(drifted, start, 0.5, "channels"))
    assert torch.allclose(halfway_mean, (mean + start_mean) / 2, atol=1e-5)
    assert torch.allclose(halfway_spread, (spread * start_spread).sqrt(), rtol=1e-4)
    # the spatial pattern is kept
    assert torch.allclose((matched - matched_mean) / matched_spread, (drifted - mean) / spread, atol=1e-4)


def test_mean_match_moves_only_the_colour():
    start, drifted = frames(0, count=1), frames(1) * 0.2 + 1.5
    (mean, spread), (start_mean, _) = spatial_stats(drifted), spatial_stats(start)
    halfway = anchor_stats(drifted, start, 0.5, "mean")
    halfway_mean, halfway_spread = spatial_stats(halfway)
    assert torch.allclose(halfway_mean, (mean + start_mean) / 2, atol=1e-5)
    assert torch.allclose(halfway_spread, spread, rtol=1e-4)
    assert torch.allclose(halfway - halfway_mean, drifted - mean, atol=1e-5)
    assert torch.equal(anchor_stats(drifted, start, 0.0, "mean"), drifted)


def test_covariance_match_carries_the_joint_channel_covariance_onto_the_starts():
    start = frames(0, count=1)
    drifted = frames(1).clone()
    # a hue the start frame never had: channels 0 and 1 move together
    drifted[:, 1] = 0.9 * drifted[:, 0] + 0.1 * drifted[:, 1]
    drifted = drifted * 0.3 + 0.8
    assert torch.equal(anchor_stats(drifted, start, 0.0, "covariance"), drifted)
    matched = anchor_stats(drifted, start, 1.0, "covariance")
    target = channel_covariance(start)[0]
    for frame in channel_covariance(matched):
        assert torch.allclose(frame, target, atol=2e-3 * target.diagonal().mean().item())
    assert torch.allclose(spatial_stats(matched)[0], spatial_stats(start)[0].expand(-1, -1, 2, -1, -1), atol=1e-5)
    # the per-channel match leaves the correlation in place; the covariance match removes it
    correlation = lambda c: (c[0, 1] / (c[0, 0] * c[1, 1]).sqrt()).item()  # noqa: E731
    assert correlation(channel_covariance(anchor_stats(drifted, start, 1.0, "channels"))[0]) > 0.9
    assert abs(correlation(channel_covariance(matched)[0]) - correlation(target)) < 0.01
    # pulls compose like the channels' geometric ones: half of the way, then half of the rest, is three quarters
    twice = anchor_stats(anchor_stats(drifted, start, 0.5, "covariance"), start, 0.5, "covariance")
    assert torch.allclose(twice, anchor_stats(drifted, start, 0.75, "covariance"), atol=1e-4)
    assert matched.dtype == drifted.dtype and matched.shape == drifted.shape


def test_for_a_drift_of_each_channel_alone_the_two_matches_agree():
    """Scaling and shifting channels independently: the covariance map is then diagonal, i.e. the channels match."""
    start = frames(0, count=1)
    scale, shift = torch.linspace(0.3, 2.0, 6).view(1, 6, 1, 1, 1), torch.linspace(-1.0, 1.0, 6).view(1, 6, 1, 1, 1)
    drifted = start.repeat(1, 1, 2, 1, 1) * scale + shift
    for anchor in (0.3, 1.0):
        by_channel = anchor_stats(drifted, start, anchor, "channels")
        by_covariance = anchor_stats(drifted, start, anchor, "covariance")
        assert torch.allclose(by_channel, by_covariance, atol=5e-3)
    assert torch.allclose(anchor_stats(drifted, start, 1.0, "covariance")[:, :, 1:], start, atol=5e-3)


def test_a_flat_frame_and_bfloat16_stay_finite_and_an_unknown_match_is_named():
    start = frames(0, count=1)
    flat = torch.full((1, 6, 1, 12, 12), 0.5)
    for match in ("mean", "channels", "covariance"):
        assert torch.isfinite(anchor_stats(flat, start, 0.5, match)).all()
    half = anchor_stats(frames(1).bfloat16(), start.bfloat16(), 0.5, "covariance")
    assert half.dtype == torch.bfloat16 and torch.isfinite(half.float()).all()
    with pytest.raises(ValueError, match="unknown stats anchor match 'hue'"):
        anchor_stats(frames(1), start, 0.5, "hue")
