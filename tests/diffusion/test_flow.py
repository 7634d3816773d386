import math
import pytest
import torch

from astra.diffusion.flow import (
    FlowConfig,
    add_noise,
    copy_prior_velocity,
    flow_matching_loss,
    loss_weight,
    sample_timesteps,
    shift_timesteps,
    velocity_target,
)


def test_add_noise_endpoints_and_velocity_is_the_path_derivative():
    torch.manual_seed(0)
    clean, noise = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 4, 5, 5)
    assert torch.equal(add_noise(clean, noise, torch.zeros(2)), clean)
    assert torch.equal(add_noise(clean, noise, torch.ones(2)), noise)
    t, dt = torch.tensor([0.3, 0.7]), 1e-3
    derivative = (add_noise(clean, noise, t + dt) - add_noise(clean, noise, t)) / dt
    torch.testing.assert_close(derivative, velocity_target(clean, noise), atol=1e-3, rtol=1e-3)


def test_per_frame_timesteps_noise_each_frame_at_its_own_level():
    clean, noise = torch.zeros(1, 2, 3, 2, 2), torch.ones(1, 2, 3, 2, 2)
    noisy = add_noise(clean, noise, torch.tensor([[0.0, 0.5, 1.0]]))
    assert noisy[0, :, 0].eq(0).all() and noisy[0, :, 1].eq(0.5).all() and noisy[0, :, 2].eq(1).all()
    with pytest.raises(ValueError, match="do not match latents"):
        add_noise(clean, noise, torch.zeros(1, 2))


def test_shift_keeps_endpoints_and_moves_mass_to_high_noise():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    shifted = shift_timesteps(t, 5.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert shifted[2] == pytest.approx(5 * 0.5 / (1 + 4 * 0.5))
    assert (shifted[1:3] > t[1:3]).all()


@pytest.mark.parametrize("sampling", ["logit_normal", "uniform"])
def test_timestep_sampling_is_seeded_and_in_range(sampling):
    config = FlowConfig(timestep_sampling=sampling, shift=3.0)
    a = sample_timesteps(4096, config, torch.Generator().manual_seed(1))
    b = sample_timesteps(4096, config, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    plain = sample_timesteps(4096, FlowConfig(timestep_sampling=sampling), torch.Generator().manual_seed(1))
    assert a.mean() > plain.mean() + 0.1  # shift 3 pushes towards noise
    with pytest.raises(ValueError, match="timestep_sampling"):
        FlowConfig(timestep_sampling="cosine").validate()


def test_high_noise_fraction_covers_the_first_sampling_step():
    plain = FlowConfig()
    tail = FlowConfig(high_noise_fraction=0.25, high_noise_from=0.9)
    base = sample_timesteps(8192, plain, torch.Generator().manual_seed(3))
    mixed = sample_timesteps(8192, tail, torch.Generator().manual_seed(3))
    assert (base > 0.97).float().mean() < 0.002  # logit-normal alone hardly ever trains near t = 1
    high = mixed >= 0.9
    assert abs(high.float().mean().item() - (0.25 + 0.75 * (base >= 0.9).float().mean().item())) < 0.02
    assert mixed.max() < 1 and abs((mixed > 0.97).float().mean().item() - 0.25 * 0.3) < 0.015  # uniform on [0.9, 1)
    low = mixed < 0.9  # never replaced: the logit-normal draws themselves
    assert torch.equal(mixed[low], base[low])
    # no extra draws at fraction 0: the generator moves on exactly as before the option, so older runs replay
    generator, reference = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    sample_timesteps(64, plain, generator)
    torch.randn(64, generator=reference)
    assert torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=reference))
    for bad in ({"high_noise_fraction": 1.5}, {"high_noise_from": 1.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FlowConfig(**bad).validate()


def test_loss_weighting():
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.equal(loss_weight(t, "none"), torch.ones(3))
    bell = loss_weight(t, "bell")
    assert bell[1] == 1 and bell[0] == pytest.approx(torch.exp(torch.tensor(-0.5)).item()) and bell[0] == bell[2]
    prediction, target = torch.zeros(3, 1, 1, 1, 1), torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1, 1, 1)
    # all error sits on the t=0 sample, which the bell weighting down-weights relative to the mean weight
    assert flow_matching_loss(prediction, target, t, "bell") < flow_matching_loss(prediction, target, t, "none")
    per_sample = flow_matching_loss(prediction, target, t, "bell", per_sample=True)
    assert per_sample.shape == (3,) and per_sample[1:].eq(0).all() and per_sample[0] > 0
    assert per_sample.mean() == pytest.approx(flow_matching_loss(prediction, target, t, "bell").item())


def test_copy_prior_is_exact_velocity_when_next_frame_equals_anchor_and_sigma_small():
    torch.manual_seed(0)
    anchor, noise = torch.randn(2, 4, 1, 3, 3), torch.randn(2, 4, 1, 3, 3)
    t = torch.tensor([0.2, 0.9])
    noisy = add_noise(anchor, noise, t)
    prior = copy_prior_velocity(noisy, t, anchor, sigma=1e-4)
    torch.testing.assert_close(prior, velocity_target(anchor, noise), atol=1e-3, rtol=1e-3)


def test_copy_prior_is_bounded_at_the_ends_and_matches_gaussian_posterior():
    torch.manual_seed(0)
    sigma, anchor = 0.5, torch.randn(1, 1, 1, 1, 1)
    # Monte Carlo check of E[eps - x0 | x_t] under x0 ~ N(anchor, sigma^2) at one x_t value
    x0 = anchor + sigma * torch.randn(400_000)
    eps = torch.randn(400_000)
    t = 0.4
    xt = (1 - t) * x0 + t * eps
    near = (xt - 0.3).abs() < 0.01
    empirical = (eps - x0)[near].mean()
    predicted = copy_prior_velocity(torch.full((1, 1, 1, 1, 1), 0.3), torch.tensor([t]), anchor, sigma)
    assert predicted.item() == pytest.approx(empirical.item(), abs=0.05)
    for end in (0.0, 1.0):
        assert torch.isfinite(copy_prior_velocity(torch.randn(1, 1, 1, 1, 1), torch.tensor([end]), anchor, sigma)).all()
    with pytest.raises(ValueError, match="sigma"):
        copy_prior_velocity(xt.view(-1, 1, 1, 1, 1)[:1], torch.tensor([t]), anchor, 0.0)


def test_warp_latents_is_exact_at_zero_motion_and_shifts_by_whole_latent_pixels():
    from astra.diffusion.flow import warp_latents

    anchor = torch.randn(2, 3, 1, 6, 8)
    motion = torch.zeros(2, 2, 3)
    assert torch.allclose(warp_latents(anchor, motion), anchor.expand(-1, -1, 2, -1, -1), atol=1e-6)
    motion[:, 1, 0] = 2.0 / 8  # frame 1 samples one latent pixel to the right: the content moves left
    motion[:, 1, 1] = -2.0 / 6  # and one up in the source: the content moves down
    warped = warp_latents(anchor, motion)
    assert torch.allclose(warped[:, :, 1, 1:, :-1], anchor[:, :, 0, :-1, 1:], atol=1e-5)
    zoomed = warp_latents(anchor, torch.tensor([[[0.0, 0.0, math.log(2.0)]]]).expand(2, 1, 3))
    assert not torch.allclose(zoomed, anchor, atol=1e-3)  # zooming in changes the picture
