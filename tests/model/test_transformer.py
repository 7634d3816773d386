"""The Astra transformer: shapes, determinism, input validation, per-frame timesteps, adapters, freeze policy."""

import pytest
import torch

from astra.model.config import AstraConfig, HistoryBudget
from astra.model.freeze import apply_freeze_policy, count_parameters
from astra.model.transformer import AstraTransformer

CONFIG = AstraConfig.from_preset("astra-tiny")


def make_model(config=CONFIG, seed=0):
    torch.manual_seed(seed)
    return AstraTransformer(config).eval()


def test_output_shapes_and_determinism():
    target, history = torch.randn(2, 4, 2, 4, 6), torch.randn(2, 4, 3, 4, 6)
    text = torch.randn(2, 5, CONFIG.text_dim)
    outputs = [
        make_model(seed=3)(target, torch.tensor([0.2, 0.9]), history_latents=history, text=text) for _ in range(2)
    ]
    assert outputs[0].velocity.shape == target.shape
    assert torch.equal(outputs[0].velocity, outputs[1].velocity)
    assert outputs[0].aux_loss.item() == 0.0 and outputs[0].expert_usage.shape == (CONFIG.num_experts,)
    other_seed = make_model(seed=4)(target, torch.tensor([0.2, 0.9]), history_latents=history, text=text)
    assert not torch.allclose(outputs[0].velocity, other_seed.velocity)


def test_no_text_model_has_no_cross_attention():
    model = make_model(CONFIG.replace(text_dim=0))
    assert not any("cross_attn" in k or "text_embedding" in k for k in model.state_dict())
    assert model(torch.randn(1, 4, 1, 4, 4), torch.tensor([0.5])).velocity.shape == (1, 4, 1, 4, 4)
    with pytest.raises(ValueError, match="no text cross-attention"):
        model(torch.randn(1, 4, 1, 4, 4), torch.tensor([0.5]), text=torch.randn(1, 3, 32))


def test_per_frame_timesteps_matter_and_can_be_switched_off():
    model = make_model()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    target, history = torch.randn(1, 4, 2, 4, 4), torch.randn(1, 4, 3, 4, 4)
    clean = model(target, torch.tensor([[0.5, 0.5]]), history_latents=history).velocity
    noisy_history = model(
        target, torch.tensor([[0.5, 0.5]]), history_latents=history, history_timesteps=torch.full((1, 3), 0.7)
    ).velocity
    per_frame = model(target, torch.tensor([[0.2, 0.5]]), history_latents=history).velocity
    assert not torch.allclose(clean, noisy_history)
    assert not torch.allclose(clean[:, :, 0], per_frame[:, :, 0])
    shared = make_model(CONFIG.replace(per_frame_timesteps=False))
    shared.load_state_dict(model.state_dict())
    ignores_history_t = shared(
        target, torch.tensor([0.5]), history_latents=history, history_timesteps=torch.full((1, 3), 0.7)
    ).velocity
    assert torch.allclose(ignores_history_t, shared(target, torch.tensor([0.5]), history_latents=history).velocity)
    with pytest.raises(ValueError, match="share one timestep"):
        shared(target, torch.tensor([[0.2, 0.5]]))


def test_act_adapters_are_identity_at_init():
    with_adapter, without = make_model(), make_model(CONFIG.replace(act_adapter=False))
    state = {k: v for k, v in with_adapter.state_dict().items() if "act_adapter" not in k}
    without.load_state_dict(state)
    for block in with_adapter.blocks:
        x = torch.randn(3, CONFIG.dim)
        assert torch.equal(block.act_adapter(x), x)
    target = torch.randn(1, 4, 2, 4, 4)
    assert torch.equal(
        with_adapter(target, torch.tensor([0.3])).velocity, without(target, torch.tensor([0.3])).velocity
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target_latents=torch.randn(1, 3, 2, 4, 4)), "3 channels"),
        (dict(target_latents=torch.randn(1, 4, 2, 5, 4)), "divisible by the patch"),
        (dict(target_latents=torch.randn(4, 4, 4)), r"\[B, C, F, H, W\]"),
        (dict(target_timesteps=torch.tensor([1.5])), r"in \[0, 1\]"),
        (dict(target_timesteps=torch.zeros(1, 3)), "must have shape"),
        (dict(history_latents=torch.randn(2, 4, 2, 4, 4)), "does not match target_latents"),
        (dict(history_latents=torch.full((1, 4, 2, 4, 4), float("nan"))), "NaN"),
        (dict(text=torch.randn(1, 3, 7)), "text must be"),
        (dict(history_timesteps=torch.zeros(1, 2)), "without history_latents"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(kwargs, message):
    inputs = dict(target_latents=torch.randn(1, 4, 2, 4, 4), target_timesteps=torch.tensor([0.5]))
    inputs.update(kwargs)
    with pytest.raises(ValueError, match=message):
        make_model()(**inputs)


def test_kv_cache_needs_block_causal_attention():
    model = make_model(CONFIG.replace(attention="bidirectional"))
    with pytest.raises(ValueError, match="block_causal"):
        model.prefill(torch.randn(1, 4, 3, 4, 4))


def test_freeze_policy_follows_the_glob_patterns():
    model = apply_freeze_policy(make_model(), CONFIG)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "blocks.1.self_attn.q.weight" in trainable and "blocks.0.act_adapter.weight" in trainable
    assert "action_projectors.null_action" in trainable and "history_embedders.proj_4x.weight" in trainable
    assert "blocks.0.ffn.0.weight" not in trainable and "patch_embedding.weight" not in trainable
    assert "blocks.0.cross_attn.q.weight" not in trainable and "head.head.weight" not in trainable
    counts = count_parameters(model)
    assert counts["backbone_other"][1] == 0
    assert counts["total"] == (
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
    )
    assert sum(t for g, (t, _) in counts.items() if g != "total") == counts["total"][0]
    everything = apply_freeze_policy(make_model(), CONFIG.replace(trainable=None))
    assert all(p.requires_grad for p in everything.parameters())


def test_causal_target_chunks_see_only_history_and_older_chunks():
    """Diffusion forcing: with causal_target each target chunk is computed exactly as if it were the last one."""
    model = make_model(CONFIG.replace(text_dim=0))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    chunk = CONFIG.chunk_frames
    history, target = torch.randn(1, 4, 3, 4, 4), torch.randn(1, 4, 2 * chunk, 4, 4)
    times = torch.tensor([[0.3] * chunk + [0.8] * chunk])
    both = model(target, times, history_latents=history, causal_target=True).velocity
    first_alone = model(target[:, :, :chunk], times[:, :chunk], history_latents=history).velocity
    torch.testing.assert_close(both[:, :, :chunk], first_alone, rtol=1e-5, atol=1e-6)
    changed = target.clone()
    changed[:, :, chunk:] += 1.0  # a later chunk must not leak into an earlier one
    again = model(changed, times, history_latents=history, causal_target=True).velocity
    torch.testing.assert_close(again[:, :, :chunk], both[:, :, :chunk], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(again[:, :, chunk:], both[:, :, chunk:])
    one_chunk = model(target, times, history_latents=history).velocity  # default: the target is one chunk
    assert not torch.allclose(one_chunk[:, :, :chunk], both[:, :, :chunk])
    with pytest.raises(ValueError, match="whole number"):
        model(target[:, :, :1], times[:, :1], history_latents=history, causal_target=True)
    with pytest.raises(ValueError, match="block_causal"):
        make_model(CONFIG.replace(attention="bidirectional"))(target, times, causal_target=True)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_motion_prior_min_t_must_be_a_flow_time(value):
    with pytest.raises(ValueError, match="motion_prior_min_t must lie in"):
        CONFIG.replace(motion_prior_min_t=value).validate()


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(fixed_expert_of_modality=(("robot7", 4),)), r"'robot7' to expert 4, outside \[0, num_experts=4\)"),
        (dict(fixed_expert_of_modality=(("robot7", -1),)), "to expert -1, outside"),
        (dict(fixed_expert_of_modality=(("flying_carpet", 0),)), "'flying_carpet', which is not in modalities"),
        (dict(history=HistoryBudget(full=-1)), r"history.full \(frames kept\) must be >= 0, got -1"),
        (dict(history=HistoryBudget(compressed_4x=-2)), "history.compressed_4x .* got -2"),
        (dict(kv_cache_chunks=-1), "kv_cache_chunks .* must be >= 0, got -1"),
    ],
)
def test_validate_names_bad_routing_tables_and_negative_frame_counts(changes, message):
    config = CONFIG.replace(expert_routing="fixed", fixed_expert_of_modality=(("robot7", 0),))
    config.validate()
    with pytest.raises(ValueError, match=message):
        config.replace(**changes).validate()


def test_timesteps_given_as_a_list_land_on_the_latents_device():
    """A list or CPU tensor of flow times would meet the latents' device tensors later (meta stands in for a GPU)."""
    timesteps = make_model()._check_timesteps("target_timesteps", [0.5], 1, 2, torch.device("meta"))
    assert timesteps.device.type == "meta" and timesteps.shape == (1, 2) and timesteps.dtype == torch.float32


def test_bf16_autocast_keeps_the_qk_norm_in_float32_and_warns_nothing():
    """Under CPU bf16 autocast (`mixed_precision=bf16`) the q/k RMSNorm got a bf16 input and a float32 weight, which
    fell off the fused kernel with a warning; it is computed in float32 now, as Wan does, and the output stays close
    to the float32 forward."""
    import warnings

    model = make_model(seed=5)
    target, history = torch.randn(2, 4, 1, 4, 6), torch.randn(2, 4, 2, 4, 6)
    text = torch.randn(2, 5, CONFIG.text_dim)
    full = model(target, torch.tensor([0.3, 0.8]), history_latents=history, text=text).velocity
    with warnings.catch_warnings(), torch.autocast("cpu", dtype=torch.bfloat16):
        warnings.simplefilter("error")
        mixed = model(target, torch.tensor([0.3, 0.8]), history_latents=history, text=text).velocity
    assert (mixed.float() - full).abs().max() < 0.05 * full.abs().max()
