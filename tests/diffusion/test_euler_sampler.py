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


def test_guidance_applies_only_inside_its_interval():
    from astra.diffusion.guidance import null_target_actions
    from astra.model.action_experts import ActionInput
    from astra.model.config import AstraConfig
    from astra.model.transformer import AstraTransformer

    config = AstraConfig.from_preset("astra-tiny", text_dim=0, text_len=0)
    torch.manual_seed(0)
    model = AstraTransformer(config).eval()
    with torch.no_grad():  # fresh experts are zero-initialised: give them weight so the actions matter
        for param in model.parameters():
            if param.abs().max() == 0:
                param.normal_(0, 0.2)
    history = torch.randn(1, config.in_channels, 2, 4, 4)
    noise = torch.randn(1, config.in_channels, config.chunk_frames, 4, 4)
    values = torch.zeros(1, 2 + config.chunk_frames, 8)
    values[:, 2:, 0] = 1.0
    actions = ActionInput(values, ("keyboard_mouse",))

    def sample(**settings):
        return sample_chunk(model, noise, history_latents=history, actions=actions, config=SamplerConfig(num_steps=4, shift=1.0, **settings))

    unguided, guided = sample(action_guidance=1.0), sample(action_guidance=3.0)
    assert not torch.allclose(unguided, guided, atol=1e-4)  # guidance matters here, so the test can fail
    # steps start at t = 1, 0.75, 0.5, 0.25: an interval holding none of them is no guidance, one holding all is
    torch.testing.assert_close(sample(action_guidance=3.0, guidance_interval=(0.8, 0.9)), unguided, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sample(action_guidance=3.0, guidance_interval=(0.25, 1.0)), guided, rtol=1e-4, atol=1e-5)
    action_free = sample_chunk(
        model, noise, history_latents=history, actions=null_target_actions(actions, config.chunk_frames),
        config=SamplerConfig(num_steps=4, shift=1.0),
    )
    outside_zero = sample(action_guidance=3.0, guidance_interval=(0.8, 0.9), guidance_outside=0.0)
    torch.testing.assert_close(outside_zero, action_free, rtol=1e-4, atol=1e-5)
    # guidance 1 with an action-free outside: the outside steps still need the action-free pass (it was skipped)
    torch.testing.assert_close(sample(action_guidance=1.0, guidance_interval=(0.8, 0.9), guidance_outside=0.0), action_free,
                               rtol=1e-4, atol=1e-5)
    partly = sample(action_guidance=3.0, guidance_interval=(0.6, 1.0))
    assert not torch.allclose(partly, guided, atol=1e-4) and not torch.allclose(partly, unguided, atol=1e-4)
    assert SamplerConfig(action_guidance=3.0, guidance_interval=(0.6, 1.0)).action_scale_at(0.5) == 1.0
    with pytest.raises(ValueError, match="guidance_interval"):
        sample(action_guidance=3.0, guidance_interval=(0.9, 0.1))
