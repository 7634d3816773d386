"""The authors' released Astra `.ckpt`: every one of their key names, at reduced width, loaded in compat mode."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel

from astra.errors import CheckpointError
from astra.model.action_experts import ActionInput
from astra.model.checkpoints import load_official_astra
from astra.model.wan_keys import diffusers_to_original

DIM, LAYERS, CHANNELS, EXPERT_IN = 128, 2, 4, 25
PROCESSOR_INPUTS = {"sekai": 13, "nuscenes": 8, "openx": 13}  # action width + history bit


def official_state_dict() -> dict[str, torch.Tensor]:
    """Their key names exactly: Wan backbone in original naming + clean_x_embedder, processors, router, moe, ..."""
    torch.manual_seed(0)
    wan = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=1,
        attention_head_dim=DIM,
        in_channels=CHANNELS,
        out_channels=CHANNELS,
        text_dim=32,
        freq_dim=32,
        ffn_dim=64,
        num_layers=LAYERS,
        rope_max_seq_len=64,
    )
    state = {k: v.clone() for k, v in diffusers_to_original(wan.state_dict()).items()}
    for name, kernel in (("proj", (1, 2, 2)), ("proj_2x", (2, 4, 4)), ("proj_4x", (4, 8, 8))):
        state[f"clean_x_embedder.{name}.weight"] = torch.randn(DIM, CHANNELS, *kernel) * 0.02
        state[f"clean_x_embedder.{name}.bias"] = torch.randn(DIM) * 0.02
    for name, inputs in PROCESSOR_INPUTS.items():
        state[f"{name}_processor.projector.0.weight"] = torch.randn(EXPERT_IN, inputs)
        state[f"{name}_processor.projector.0.bias"] = torch.randn(EXPERT_IN)
    state["global_router.weight"], state["global_router.bias"] = torch.randn(3, EXPERT_IN), torch.randn(3)
    for layer in range(LAYERS):
        state[f"blocks.{layer}.projector.weight"] = torch.eye(DIM) + 0.01 * torch.randn(DIM, DIM)
        state[f"blocks.{layer}.projector.bias"] = 0.01 * torch.randn(DIM)
        for expert in range(3):
            state[f"blocks.{layer}.moe.experts.{expert}.0.weight"] = 0.1 * torch.randn(DIM, EXPERT_IN)
            state[f"blocks.{layer}.moe.experts.{expert}.0.bias"] = 0.1 * torch.randn(DIM)
        state[f"blocks.{layer}.cam_encoder.weight"] = torch.randn(DIM, 13)
        state[f"blocks.{layer}.cam_encoder.bias"] = torch.randn(DIM)
    return state


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    state = official_state_dict()
    path = tmp_path_factory.mktemp("official") / "astra.ckpt"
    torch.save(state, path)
    model, info = load_official_astra(path)
    return state, model, info


def test_compat_config_and_mapped_weights(official):
    state, model, info = official
    config = model.config
    assert (config.attention, config.per_frame_timesteps, config.expert_routing) == ("bidirectional", False, "fixed")
    assert (config.num_experts, config.top_k, config.expert_hidden_dim, config.action_space_dim) == (3, 1, 0, 24)
    assert dict(config.fixed_expert_of_modality) == {"camera12": 0, "vehicle7": 1}
    assert config.history_embedder_1x and (config.history.compressed_4x, config.history.compressed_2x) == (16, 2)
    ours = model.state_dict()
    torch.testing.assert_close(ours["history_embedders.proj_1x.weight"], state["clean_x_embedder.proj.weight"])
    torch.testing.assert_close(ours["history_embedders.proj_4x.bias"], state["clean_x_embedder.proj_4x.bias"])
    torch.testing.assert_close(ours["blocks.1.act_adapter.weight"], state["blocks.1.projector.weight"])
    torch.testing.assert_close(ours["blocks.0.self_attn.q.weight"], state["blocks.0.self_attn.q.weight"])
    assert info["dropped_unused"] == sorted(
        ["global_router.weight", "global_router.bias"]
        + [f"blocks.{n}.cam_encoder.{p}" for n in range(LAYERS) for p in ("weight", "bias")]
    )
    assert set(info["folded_processors"]) == set(PROCESSOR_INPUTS) and info["unrouted_experts"] == {2: "openx"}


@pytest.mark.parametrize(
    "dataset, modality, expert, width", [("sekai", "camera12", 0, 12), ("nuscenes", "vehicle7", 1, 7)]
)
def test_folded_processor_reproduces_their_action_embedding(official, dataset, modality, expert, width):
    state, model, _ = official
    torch.manual_seed(1)
    frames = 3
    raw = torch.randn(1, frames, width)
    is_history = torch.tensor([True, True, False])
    values = torch.nn.functional.pad(raw, (0, 12 - width))
    with torch.no_grad():
        features = model.action_projectors(ActionInput(values, (modality,)), is_history)
        ours = model.blocks[1].action_experts(features, fixed_expert=torch.tensor([expert])).embedding
    bit = is_history.float()[None, :, None]
    processed = torch.cat((raw, bit), -1) @ state[f"{dataset}_processor.projector.0.weight"].T
    processed = processed + state[f"{dataset}_processor.projector.0.bias"]
    theirs = (
        processed @ state[f"blocks.1.moe.experts.{expert}.0.weight"].T + state[f"blocks.1.moe.experts.{expert}.0.bias"]
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_forward_runs_and_actions_route_to_their_experts(official):
    _, model, _ = official
    torch.manual_seed(2)
    history_frames, target_frames = 3, 2
    frames = history_frames + target_frames
    target = torch.randn(1, CHANNELS, target_frames, 8, 8)
    history = torch.randn(1, CHANNELS, history_frames, 8, 8)
    text = torch.randn(1, 6, 32)
    motion = torch.randn(1, frames, 7)
    camera = ActionInput(torch.nn.functional.pad(motion, (0, 5)), ("camera12",))
    vehicle = ActionInput(torch.nn.functional.pad(motion, (0, 5)), ("vehicle7",))

    def velocity(actions):
        with torch.no_grad():
            t = torch.full((1, target_frames), 0.5)
            return model(target, t, history_latents=history, actions=actions, text=text).velocity

    with_camera = velocity(camera)
    assert with_camera.shape == target.shape and torch.isfinite(with_camera).all()
    torch.testing.assert_close(velocity(camera), with_camera, rtol=0, atol=0)  # deterministic
    assert not torch.allclose(velocity(vehicle), with_camera, atol=1e-4)  # another expert, another embedding


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda sd: sd.pop("blocks.1.moe.experts.2.0.bias"),
            r"missing: blocks\.1\.action_experts\.experts\.2\.0\.bias",
        ),
        (lambda sd: sd.pop("clean_x_embedder.proj_2x.weight"), r"missing: history_embedders\.proj_2x\.weight"),
        (
            lambda sd: sd.__setitem__("blocks.0.moe.gate.weight", torch.zeros(3)),
            r"unexpected .*blocks\.0\.moe\.gate\.weight",
        ),
        (lambda sd: sd.pop("openx_processor.projector.0.bias"), r"openx_processor\.projector\.0"),
    ],
)
def test_missing_or_extra_key_is_named(tmp_path, edit, message):
    state = official_state_dict()
    edit(state)
    torch.save(state, tmp_path / "astra.ckpt")
    with pytest.raises(CheckpointError, match=message):
        load_official_astra(tmp_path / "astra.ckpt")
