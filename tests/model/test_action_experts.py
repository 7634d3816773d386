"""Mixture of Action Experts: zero-init equivalence, sparse routing, load balancing, validation."""

import pytest
import torch

from astra.model.action_experts import UNUSUAL_ACTION_SIGMAS, ActionExperts, ActionInput, ActionProjectors, unusual_actions
from astra.model.config import AstraConfig
from astra.model.transformer import AstraTransformer

CONFIG = AstraConfig.from_preset("astra-tiny")


def random_actions(batch=2, frames=4):
    values = torch.zeros(batch, frames, 12)
    values[0, :, :7] = torch.randn(frames, 7)
    values[1, :, :12] = torch.randn(frames, 12)
    return ActionInput(values, ("robot7", "camera12"))


def test_fresh_model_with_actions_equals_model_without_actions():
    torch.manual_seed(0)
    model = AstraTransformer(CONFIG).eval()
    with torch.no_grad():  # a non-trivial backbone, adapters and experts at their init
        for name, parameter in model.named_parameters():
            if "act_adapter" not in name and "action_experts" not in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    target, history = torch.randn(2, 4, 2, 4, 4), torch.randn(2, 4, 2, 4, 4)
    with torch.no_grad():
        plain = model(target, torch.full((2,), 0.4), history_latents=history).velocity
        with_actions = model(target, torch.full((2,), 0.4), history_latents=history, actions=random_actions()).velocity
    assert torch.equal(plain, with_actions)
    # control: once the experts' last layers move, actions do change the output
    with torch.no_grad():
        for block in model.blocks:
            for expert in block.action_experts.experts:
                expert[-1].weight.normal_()
        moved = model(target, torch.full((2,), 0.4), history_latents=history, actions=random_actions()).velocity
    assert not torch.allclose(plain, moved)


def test_top_k_routing_runs_only_chosen_experts_and_matches_dense_sum():
    torch.manual_seed(0)
    config = CONFIG.replace(num_experts=4, top_k=2)
    experts = ActionExperts(config)
    for expert in experts.experts:
        torch.nn.init.normal_(expert[-1].weight)
    features = torch.randn(3, 5, config.action_space_dim + 1)
    calls = []
    for index, expert in enumerate(experts.experts):
        expert.register_forward_hook(lambda module, args, output, index=index: calls.append((index, args[0].shape[0])))
    output = experts(features)
    probs = torch.softmax(experts.router(features), dim=-1)
    gates, chosen = probs.topk(2, dim=-1)
    dense = torch.stack([expert(features) for expert in experts.experts], dim=2)  # [B, F, E, dim]
    expected = (dense.gather(2, chosen[..., None].expand(-1, -1, -1, config.dim)) * gates[..., None]).sum(2)
    assert torch.allclose(output.embedding, expected, atol=1e-6)
    rows_per_expert = {index: rows for index, rows in calls[:4]}
    for index in rows_per_expert:
        assert rows_per_expert[index] == int((chosen == index).sum())  # each expert saw only its frames
    assert sum(rows_per_expert.values()) == 3 * 5 * 2
    usage = torch.stack([(chosen == e).float().sum(-1).mean() / 2 for e in range(4)])
    assert torch.allclose(output.usage, usage)
    assert output.usage.sum().item() == pytest.approx(1.0)
    assert output.aux_loss.item() == pytest.approx((4 * (usage * probs.flatten(0, 1).mean(0)).sum()).item(), rel=1e-5)


def test_fixed_routing_uses_the_modality_table_and_single_linear_experts():
    config = CONFIG.replace(
        expert_routing="fixed",
        expert_hidden_dim=0,
        num_experts=3,
        fixed_expert_of_modality=(("robot7", 2), ("camera12", 0)),
    )
    torch.manual_seed(0)
    model = AstraTransformer(config)
    names = {k for k in model.state_dict() if k.startswith("blocks.0.action_experts")}
    assert names == {f"blocks.0.action_experts.experts.{e}.0.{p}" for e in range(3) for p in ("weight", "bias")}
    target = torch.randn(2, 4, 2, 4, 4)
    out = model(target, torch.full((2,), 0.4), actions=random_actions(frames=2))
    assert out.expert_usage.tolist() == [0.5, 0.0, 0.5]
    assert out.aux_loss.item() == 0.0


def test_null_frames_use_the_learned_null_action_and_history_bit_is_appended():
    torch.manual_seed(0)
    projectors = ActionProjectors(CONFIG)
    torch.nn.init.normal_(projectors.null_action)
    actions = random_actions()
    actions.null = torch.tensor([[True, False, False, False], [False, False, False, True]])
    features = projectors(actions, is_history=torch.tensor([True, True, False, False]))
    assert features.shape == (2, 4, CONFIG.action_space_dim + 1)
    assert torch.equal(features[0, 0, :-1], projectors.null_action.detach())
    assert torch.equal(features[1, 3, :-1], projectors.null_action.detach())
    expected = projectors.projectors["robot7"](actions.values[0, 1, :7])
    assert torch.allclose(features[0, 1, :-1], expected)
    assert features[..., -1].tolist() == [[1.0, 1.0, 0.0, 0.0]] * 2


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: ActionInput(a.values, ("robot7", "teleport")), "unknown action modality"),
        (lambda a: ActionInput(a.values.index_fill(2, torch.tensor([9]), 1.0), a.modality), "padding column 9"),
        (lambda a: ActionInput(a.values.index_fill(1, torch.tensor([2]), float("nan")), a.modality), "non-finite"),
        (lambda a: ActionInput(a.values[:, :3], a.modality), "one action per latent frame"),
        (lambda a: ActionInput(a.values[:, :, :8], a.modality), "needs 12"),
        (lambda a: ActionInput(a.values, ("robot7",)), "batch of 2"),
    ],
)
def test_bad_actions_raise_clear_value_errors(mutate, message):
    torch.manual_seed(0)
    model = AstraTransformer(CONFIG)
    actions = random_actions()
    with pytest.raises(ValueError, match=message):
        model(
            torch.randn(2, 4, 2, 4, 4),
            torch.full((2,), 0.4),
            history_latents=torch.randn(2, 4, 2, 4, 4),
            actions=mutate(actions),
        )


def test_action_normalizer_standardises_columns_and_folding_keeps_the_function():
    torch.manual_seed(0)
    projectors = ActionProjectors(CONFIG.replace(normalize_actions=True))
    actions = random_actions(frames=5)
    is_history = torch.tensor([True, True, False, False, False])
    raw = projectors(actions, is_history)
    mean, std = 0.5 * torch.randn(7), torch.rand(7) + 0.1
    std[3] = 0.0  # a column that never moves is floored, not divided by zero
    projectors.set_statistics({"robot7": (mean, std)}, keep_function=True)
    assert torch.allclose(projectors(actions, is_history), raw, atol=1e-5)  # folded: same function, new inputs
    normalizer = projectors.normalizers["robot7"]
    assert normalizer.std[3] == pytest.approx(1e-2) and torch.equal(normalizer.mean, mean)
    fresh = ActionProjectors(CONFIG.replace(normalize_actions=True))
    fresh.set_statistics({"robot7": (mean, std)}, keep_function=False)
    expected = fresh.projectors["robot7"]((actions.values[0, :, :7] - mean) / std.clamp_min(1e-2))
    assert torch.allclose(fresh(actions, is_history)[0, :, :-1], expected, atol=1e-6)


def test_action_statistics_errors_name_the_problem():
    with pytest.raises(ValueError, match="does not normalise"):
        ActionProjectors(CONFIG).set_statistics({"robot7": (torch.zeros(7), torch.ones(7))}, keep_function=False)
    projectors = ActionProjectors(CONFIG.replace(normalize_actions=True))
    with pytest.raises(ValueError, match="no projector"):
        projectors.set_statistics({"flying_carpet": (torch.zeros(7), torch.ones(7))}, keep_function=False)
    with pytest.raises(ValueError, match="shape"):
        projectors.set_statistics({"robot7": (torch.zeros(3), torch.ones(3))}, keep_function=False)


def test_unusual_actions_name_columns_beyond_the_training_range():
    projectors = ActionProjectors(CONFIG.replace(normalize_actions=True))
    mean, std = torch.zeros(7), torch.ones(7)
    std[5] = 0.0  # a column the training data never moved
    projectors.set_statistics({"robot7": (mean, std)}, keep_function=False)
    rows = torch.zeros(3, 7).numpy()
    rows[:, 0] = [1.0, -0.9 * UNUSUAL_ACTION_SIGMAS, 0.5]  # within the range
    assert unusual_actions(projectors.normalizers, "robot7", rows) == []
    rows[1, 1] = -2 * UNUSUAL_ACTION_SIGMAS
    rows[2, 5] = 0.5
    found = {u.column: u for u in unusual_actions(projectors.normalizers, "robot7", rows)}
    assert set(found) == {"dy", "dyaw"}  # named by the modality's columns
    far, never = found["dy"], found["dyaw"]
    assert far.value == -2 * UNUSUAL_ACTION_SIGMAS and far.sigmas == pytest.approx(2 * UNUSUAL_ACTION_SIGMAS)
    assert "20 standard deviations" in far.describe("robot7")
    assert never.value == 0.5 and "never moved" in never.describe("robot7")
    assert unusual_actions(None, "robot7", rows) == []  # a model without statistics cannot tell


def test_a_bfloat16_small_model_with_normalisers_and_motion_prior_runs_with_actions():
    """The shipped layout (action normalisers, motion prior) cast to bf16: numpy has no bf16 and the motion prior's
    Linear got float32 values, so `astra bench --dtype bf16` crashed."""
    torch.manual_seed(0)
    model = AstraTransformer(AstraConfig.from_preset("astra-small")).to(torch.bfloat16).eval()
    projectors = model.action_projectors
    mean, std = torch.zeros(7), torch.ones(7)
    projectors.set_statistics({"robot7": (mean, std)}, keep_function=False)
    with torch.no_grad():
        model.motion_prior.steps["robot7"].weight.normal_()  # a fitted prior, so its output is not all zeros
    rows = torch.zeros(2, 7).numpy()
    rows[1, 0] = 2 * UNUSUAL_ACTION_SIGMAS
    assert [u.column for u in unusual_actions(projectors.normalizers, "robot7", rows)] == ["dx"]
    actions = ActionInput(torch.randn(1, 2, 7, dtype=torch.bfloat16), ("robot7",))
    history, target = torch.randn(2, 1, 16, 1, 4, 4, dtype=torch.bfloat16)
    cache = model.prefill(history, actions=actions.frames(0, 1))
    out = model(target, torch.tensor([0.5]), actions=actions.frames(1, 2), kv_cache=cache)
    assert out.velocity.dtype == torch.bfloat16 and out.motion.shape == (1, 1, 3) and out.motion.abs().sum() > 0


def test_action_values_follow_the_projectors_to_their_device():
    """Actions built on the CPU for a model elsewhere (meta stands in for a GPU here) reach its weights there."""
    config = CONFIG.replace(normalize_actions=True, motion_prior=True)
    with torch.device("meta"):
        projectors, prior = ActionProjectors(config), AstraTransformer(config.replace(num_layers=1)).motion_prior
    actions = random_actions(frames=3)
    actions.null = torch.tensor([[False, True, False]] * 2)
    features = projectors(actions, torch.tensor([True, False, False], device="meta"))
    assert features.device.type == "meta" and features.shape == (2, 3, CONFIG.action_space_dim + 1)
    assert prior(actions, projectors.normalizers).device.type == "meta"
