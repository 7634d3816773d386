import pytest
import torch

from astra.diffusion.sampler import SamplerConfig, euler_sample, sample_chunk, timestep_schedule


def test_schedule_runs_from_one_to_zero_and_is_shifted():
    schedule = timestep_schedule(10, 5.0)
    assert schedule.shape == (11,) and schedule[0] == 1 and schedule[-1] == 0
    assert (schedule[1:] < schedule[:-1]).all()
    assert (schedule[1:-1] > timestep_schedule(10, 1.0)[1:-1]).all()


@pytest.mark.parametrize("num_steps", [1, 7])
def test_euler_with_the_true_velocity_of_a_point_mass_is_exact(num_steps):
    torch.manual_seed(0)
    clean, noise = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 2, 4, 4)
    seen = []

    def velocity_fn(latents, timesteps):
        seen.append(timesteps.clone())
        t = timesteps.view(2, 1, 2, 1, 1)
        return (latents - clean) / t  # exact velocity towards `clean` along the straight path

    result = euler_sample(velocity_fn, noise, num_steps, shift=3.0)
    torch.testing.assert_close(result, clean, rtol=1e-4, atol=1e-5)
    assert len(seen) == num_steps and seen[0].shape == (2, 2) and torch.all(seen[0] == 1)


def test_sample_chunk_with_the_real_model_is_seeded_and_uses_the_copy_prior():
    from astra.model.config import AstraConfig
    from astra.model.transformer import AstraTransformer

    config = AstraConfig.from_preset("astra-tiny", text_dim=0, text_len=0)
    torch.manual_seed(0)
    model = AstraTransformer(config).eval()
    with torch.no_grad():  # a network that predicts zero velocity: only the copy prior remains
        model.head.head.weight.zero_()
        model.head.head.bias.zero_()
    history = torch.randn(1, config.in_channels, 2, 4, 4)
    noise = torch.randn(1, config.in_channels, config.chunk_frames, 4, 4)
    sampler = SamplerConfig(num_steps=4, shift=1.0, copy_prior_sigma=1e-3)
    out = sample_chunk(model, noise, history_latents=history, config=sampler)
    # with a (near) point-mass prior at the newest history frame, the sample copies it
    torch.testing.assert_close(out, history[:, :, -1:].expand_as(out), atol=1e-2, rtol=1e-2)
    again = sample_chunk(model, noise, history_latents=history, config=SamplerConfig(num_steps=4))
    assert torch.isfinite(again).all() and not torch.allclose(again, out)
    with pytest.raises(ValueError, match="num_steps"):
        sample_chunk(model, noise, history_latents=history, config=SamplerConfig(num_steps=0))
