import pytest
import torch

from astra.diffusion.guidance import guidance_passes, guided_velocity, null_target_actions
from astra.model.action_experts import ActionInput
from astra.model.config import AstraConfig
from astra.model.transformer import AstraTransformer

CONFIG = AstraConfig.from_preset("astra-tiny")


def _perturb_zero_inits(model):
    """Fresh experts are zero-initialised (no action effect); give every parameter some weight."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.abs().max() == 0:
                param.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _perturb_zero_inits(AstraTransformer(CONFIG))


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(0)
    batch, history_frames, target_frames = 2, 3, CONFIG.chunk_frames
    history = torch.randn(batch, CONFIG.in_channels, history_frames, 4, 4)
    target = torch.randn(batch, CONFIG.in_channels, target_frames, 4, 4)
    timesteps = torch.full((batch, target_frames), 0.6)
    values = torch.zeros(batch, history_frames + target_frames, 8)
    values[:, 1:] = torch.randint(0, 2, (batch, history_frames + target_frames - 1, 8)).float()
    actions = ActionInput(values, ("keyboard_mouse", "keyboard_mouse"))
    text = torch.randn(batch, CONFIG.text_len, CONFIG.text_dim)
    return dict(target=target, timesteps=timesteps, history=history, actions=actions, text=text)


def _plain(model, x, **overrides):
    kwargs = dict(history_latents=x["history"], actions=x["actions"], text=x["text"]) | overrides
    return model(x["target"], x["timesteps"], **kwargs).velocity


@torch.no_grad()
def test_scale_one_equals_plain_conditional_pass(model, inputs):
    guided = guided_velocity(
        model, inputs["target"], inputs["timesteps"], history_latents=inputs["history"],
        actions=inputs["actions"], text=inputs["text"], action_scale=1.0,
    )
    torch.testing.assert_close(guided, _plain(model, inputs), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_batched_guidance_equals_two_separate_passes(model, inputs):
    scale = 3.0
    guided = guided_velocity(
        model, inputs["target"], inputs["timesteps"], history_latents=inputs["history"],
        actions=inputs["actions"], text=inputs["text"], action_scale=scale,
    )
    conditional = _plain(model, inputs)
    null = _plain(model, inputs, actions=null_target_actions(inputs["actions"], CONFIG.chunk_frames))
    assert (conditional - null).abs().max() > 1e-4  # the action matters, so the test can fail
    torch.testing.assert_close(guided, null + scale * (conditional - null), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_text_and_action_guidance_compose(model, inputs):
    null_text = torch.zeros_like(inputs["text"])
    nulled = null_target_actions(inputs["actions"], CONFIG.chunk_frames)
    guided = guided_velocity(
        model, inputs["target"], inputs["timesteps"], history_latents=inputs["history"], actions=inputs["actions"],
        text=inputs["text"], null_text=null_text, action_scale=2.0, text_scale=4.0,
    )
    v_cond = _plain(model, inputs)
    v_text = _plain(model, inputs, actions=nulled)
    v_none = _plain(model, inputs, actions=nulled, text=null_text)
    torch.testing.assert_close(guided, v_none + 4.0 * (v_text - v_none) + 2.0 * (v_cond - v_text), rtol=1e-4, atol=1e-5)


def test_null_marks_only_the_target_frames(inputs):
    nulled = null_target_actions(inputs["actions"], 2)
    assert nulled.null[:, -2:].all() and not nulled.null[:, :-2].any()
    assert torch.equal(nulled.values, inputs["actions"].values)
    with pytest.raises(ValueError, match="target_frames"):
        null_target_actions(inputs["actions"], 99)
    assert guidance_passes(3.0, 1.0, has_actions=True, has_text=True) == 2
    assert guidance_passes(1.0, 1.0, has_actions=True, has_text=True) == 1
    assert guidance_passes(3.0, 5.0, has_actions=True, has_text=True) == 3


@torch.no_grad()
def test_guidance_amplifies_the_network_and_moves_the_anchor_by_the_conditional_motion(inputs):
    """guided = prior(a_cond) + v_null + s (v_cond - v_null), a_cond = the newest frame moved by the true actions'
    motion: the null pass's motion does not enter."""
    from astra.diffusion.flow import copy_prior_velocity, warp_latents

    torch.manual_seed(0)
    model = _perturb_zero_inits(AstraTransformer(CONFIG.replace(motion_prior=True, text_dim=0, text_len=0)))
    x = dict(inputs)
    scale, sigma = 3.0, 0.5
    kwargs = dict(history_latents=x["history"], copy_prior_sigma=sigma)
    guided = guided_velocity(model, x["target"], x["timesteps"], actions=x["actions"], action_scale=scale, **kwargs)
    out, motion = {}, {}
    for name, actions in (("cond", x["actions"]), ("null", null_target_actions(x["actions"], CONFIG.chunk_frames))):
        passed = model(x["target"], x["timesteps"], history_latents=x["history"], actions=actions)
        out[name], motion[name] = passed.velocity, passed.motion
    assert (motion["cond"] - motion["null"]).abs().max() > 1e-3  # the null motion differs but must not matter
    anchor = warp_latents(x["history"][:, :, -1:], motion["cond"])
    prior = copy_prior_velocity(x["target"], x["timesteps"], anchor, sigma)
    expected = prior + out["null"] + scale * (out["cond"] - out["null"])
    torch.testing.assert_close(guided, expected, rtol=1e-4, atol=1e-4)
    # below scale 1 the motion shrinks with the scale: scale 0 is the action-free velocity (unmoved anchor)
    action_free = guided_velocity(
        model, x["target"], x["timesteps"], actions=x["actions"], action_scale=scale, step_action_scale=0.0, **kwargs
    )
    still = copy_prior_velocity(x["target"], x["timesteps"], x["history"][:, :, -1:], sigma)
    torch.testing.assert_close(action_free, still + out["null"], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_guiding_the_anchor_is_guidance_of_the_whole_velocity(inputs):
    """guide_anchor: each pass's total velocity (its residual + the copy prior at its own anchor: moved for the
    conditional pass, unmoved for the null one), combined as v_null + s (v_cond - v_null)."""
    from astra.diffusion.flow import copy_prior_velocity, warp_latents

    torch.manual_seed(0)
    model = _perturb_zero_inits(AstraTransformer(CONFIG.replace(motion_prior=True, text_dim=0, text_len=0)))
    x, scale, sigma = inputs, 2.0, 0.5
    guided = guided_velocity(
        model, x["target"], x["timesteps"], history_latents=x["history"], actions=x["actions"], action_scale=scale,
        copy_prior_sigma=sigma, guide_anchor=True,
    )
    total = {}
    for name, actions in (("cond", x["actions"]), ("null", null_target_actions(x["actions"], CONFIG.chunk_frames))):
        passed = model(x["target"], x["timesteps"], history_latents=x["history"], actions=actions)
        anchor = warp_latents(x["history"][:, :, -1:], passed.motion)  # the null pass's motion is zero
        total[name] = passed.velocity + copy_prior_velocity(x["target"], x["timesteps"], anchor, sigma)
    expected = total["null"] + scale * (total["cond"] - total["null"])
    torch.testing.assert_close(guided, expected, rtol=1e-4, atol=1e-4)
    residual_only = guided_velocity(
        model, x["target"], x["timesteps"], history_latents=x["history"], actions=x["actions"], action_scale=scale,
        copy_prior_sigma=sigma,
    )
    assert (guided - residual_only).abs().max() > 1e-3


@torch.no_grad()
def test_a_step_outside_the_guidance_interval_runs_the_guided_passes_but_combines_at_scale_one(model, inputs):
    calls = []
    hook = model.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        step = guided_velocity(
            model, inputs["target"], inputs["timesteps"], history_latents=inputs["history"],
            actions=inputs["actions"], text=inputs["text"], action_scale=3.0, step_action_scale=1.0,
        )
    finally:
        hook.remove()
    assert calls == [2 * inputs["target"].shape[0]]  # cond + null, as a KV cache prefilled for guidance holds
    torch.testing.assert_close(step, _plain(model, inputs), rtol=1e-5, atol=1e-6)
