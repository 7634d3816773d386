"""Checkpoint formats: Wan2.1 in every published layout (written by diffusers itself), and our own format."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file

import astra.model.checkpoints as checkpoints
from astra.errors import CheckpointError
from astra.model.checkpoints import (
    ASTRA_ADDITION_PREFIXES,
    check_state_dict,
    load_astra,
    load_wan_transformer,
    save_astra,
    wan_fields_from_diffusers_config,
    wan_fields_from_shapes,
)
from astra.model.config import AstraConfig
from astra.model.transformer import AstraTransformer
from astra.model.wan_keys import diffusers_to_original

# Reduced Wan: one 128-wide head (Wan's head width, so the original layout's num_heads can be inferred).
DIFFUSERS_KWARGS = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=1,
    attention_head_dim=128,
    in_channels=4,
    out_channels=4,
    text_dim=32,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    rope_max_seq_len=64,
)


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    """A random tiny diffusers Wan saved as one file and sharded; its weights in original naming."""
    torch.manual_seed(0)
    model = WanTransformer3DModel(**DIFFUSERS_KWARGS).eval()
    root = tmp_path_factory.mktemp("wan")
    model.save_pretrained(root / "single", safe_serialization=True)
    model.save_pretrained(root / "sharded", safe_serialization=True, max_shard_size="300KB")
    original = {k: v.clone() for k, v in diffusers_to_original(model.state_dict()).items()}
    return root, original, model


def assert_backbone_equal(model: AstraTransformer, original: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    for key, tensor in original.items():
        torch.testing.assert_close(state[key], tensor.to(state[key].dtype), rtol=0, atol=0, msg=key)


def assert_additions_at_init(model: AstraTransformer) -> None:
    for block in model.blocks:
        torch.testing.assert_close(block.act_adapter.weight, torch.eye(model.config.dim))
        for expert in block.action_experts.experts:
            assert torch.all(expert[-1].weight == 0)


def test_diffusers_single_file_and_sharded(wan):
    root, original, _ = wan
    assert len(list((root / "sharded").glob("diffusion_pytorch_model-*-of-*.safetensors"))) > 1
    for layout in ("single", "sharded"):
        model = load_wan_transformer(root / layout)
        assert model.config.dim == 128 and model.config.num_heads == 1 and model.config.num_layers == 2
        assert model.config.freq_dim == 32 and model.config.rope_max_positions == 64
        assert_backbone_equal(model, original)
        assert_additions_at_init(model)


@pytest.mark.parametrize("suffix, wrapper", [(".safetensors", None), (".pth", "state_dict"), (".pt", None)])
def test_original_single_file(wan, tmp_path, suffix, wrapper):
    _, original, _ = wan
    path = tmp_path / f"wan{suffix}"
    if suffix == ".safetensors":
        save_file(original, path)
    else:
        torch.save({wrapper: original} if wrapper else original, path)
    model = load_wan_transformer(path, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config.dim == 128 and model.config.num_heads == 1 and model.config.text_dim == 32
    assert model.config.ffn_dim == 64 and model.config.in_channels == 4 and model.config.out_channels == 4
    assert_backbone_equal(model, original)  # equal after rounding the source to bf16


def test_diffusers_names_in_a_single_file(wan, tmp_path):
    root, original, _ = wan
    path = tmp_path / "wan_diffusers_names.safetensors"
    path.write_bytes((root / "single" / "diffusion_pytorch_model.safetensors").read_bytes())
    assert_backbone_equal(load_wan_transformer(path), original)


def test_loaded_model_reproduces_diffusers(wan):
    """End to end: config from config.json, renamed weights, fresh additions -> the same velocity as diffusers."""
    root, _, reference = wan
    torch.manual_seed(3)
    model = load_wan_transformer(root / "single").eval()
    latents, text = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 6, 32)
    with torch.no_grad():
        expected = reference(latents, torch.tensor([400.0]), text).sample
        ours = model(latents, torch.full((1, 2), 0.4), text=text).velocity
    assert (ours - expected).norm() / expected.norm() < 1e-5


def test_additions_missing_must_be_allowed_explicitly(wan, tmp_path):
    _, original, _ = wan
    save_file(original, tmp_path / "wan.safetensors")
    with pytest.raises(CheckpointError, match=r"missing: .*act_adapter"):
        load_wan_transformer(tmp_path / "wan.safetensors", allow_missing_prefixes=())


def test_wan_weights_load_into_a_config_with_the_motion_prior(wan):
    """The motion prior is an Astra addition too: it was reported as missing from the Wan checkpoint."""
    root, original, _ = wan
    config = load_wan_transformer(root / "single").config.replace(motion_prior=True)
    model = load_wan_transformer(root / "single", config=config)
    assert_backbone_equal(model, original)
    assert all(torch.all(step.weight == 0) for step in model.motion_prior.steps.values())  # at its (zero) init


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("blocks.1.ffn.0.weight"), r"1 missing: blocks\.1\.ffn\.0\.weight"),
        (lambda sd: sd.__setitem__("blocks.0.extra.weight", torch.zeros(2)), r"1 unexpected: blocks\.0\.extra\.weight"),
        (
            lambda sd: sd.__setitem__("blocks.0.ffn.0.bias", torch.zeros(65)),
            r"1 mis-shaped: blocks\.0\.ffn\.0\.bias \(checkpoint \(65,\) vs model \(64,\)\)",
        ),
    ],
)
def test_strict_errors_name_keys(wan, tmp_path, edit, message):
    _, original, _ = wan
    state = dict(original)
    edit(state)
    save_file(state, tmp_path / "wan.safetensors")
    with pytest.raises(CheckpointError, match=message):
        load_wan_transformer(tmp_path / "wan.safetensors")


def test_diffusers_sharded_index_disagreement_and_corrupt_files(wan, tmp_path):
    root, _, _ = wan
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for file in (root / "sharded").iterdir():
        (sharded / file.name).write_bytes(file.read_bytes())
    index_path = sharded / "diffusion_pytorch_model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["blocks.0.ghost.weight"] = next(iter(index["weight_map"].values()))
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"listed but absent: blocks\.0\.ghost\.weight"):
        load_wan_transformer(sharded)

    truncated = tmp_path / "wan.safetensors"
    truncated.write_bytes((root / "single" / "diffusion_pytorch_model.safetensors").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="wan.safetensors"):
        load_wan_transformer(truncated)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a diffusers transformer folder"):
        load_wan_transformer(tmp_path / "empty")


def test_config_disagreement_is_named(wan):
    root, _, _ = wan
    wrong = AstraConfig.from_preset("astra-tiny")
    with pytest.raises(CheckpointError, match=r"dim=64 \(checkpoint: 128\)"):
        load_wan_transformer(root / "single", config=wrong)


# --- our own format -------------------------------------------------------------------------------------


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    model = AstraTransformer(AstraConfig.from_preset("astra-tiny"))
    with torch.no_grad():
        for parameter in model.parameters():  # non-trivial values everywhere, zero-initialised experts included
            parameter.normal_()
    return model


def test_save_load_roundtrip(tiny_model, tmp_path):
    metadata = {"git_revision": "abc123", "recipe": {"lr": 1e-4, "steps": 10}}
    directory = save_astra(tiny_model, tmp_path / "ckpt", metadata)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary directory left behind
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    for path in (directory, directory / "model.safetensors"):
        loaded, loaded_metadata = load_astra(path)
        assert loaded.config == tiny_model.config
        assert loaded_metadata == metadata
        for key, tensor in tiny_model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], tensor, rtol=0, atol=0, msg=key)


def test_save_overwrites_checkpoint_but_not_foreign_dirs_and_keeps_dtype(tiny_model, tmp_path):
    save_astra(tiny_model, tmp_path / "ckpt", {"step": 1})
    save_astra(tiny_model.to(torch.bfloat16), tmp_path / "ckpt", {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    loaded, metadata = load_astra(tmp_path / "ckpt")
    assert metadata == {"step": 2} and next(loaded.parameters()).dtype == torch.bfloat16
    assert next(load_astra(tmp_path / "ckpt", dtype=torch.float32)[0].parameters()).dtype == torch.float32
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="log.txt"):
        save_astra(tiny_model, tmp_path / "run", {})
    (tmp_path / "a-file").write_text("keep me")  # was a NotADirectoryError
    with pytest.raises(CheckpointError, match="a-file"):
        save_astra(tiny_model, tmp_path / "a-file", {})
    with pytest.raises(ValueError, match="JSON"):
        save_astra(tiny_model, tmp_path / "other", {"bad": object()})


def test_failed_save_leaves_previous_checkpoint(tiny_model, tmp_path, monkeypatch):
    save_astra(tiny_model, tmp_path / "ckpt", {"step": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_astra(tiny_model, tmp_path / "ckpt", {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert load_astra(tmp_path / "ckpt")[1] == {"step": 1}


def test_load_astra_errors_name_files_and_keys(tiny_model, tmp_path):
    directory = save_astra(tiny_model, tmp_path / "ckpt", {})
    weights = directory / "model.safetensors"
    state = load_file(weights)
    state.pop("blocks.0.act_adapter.weight")
    state["blocks.0.surprise"] = torch.zeros(1)
    save_file(state, weights)
    with pytest.raises(
        CheckpointError, match=r"missing: blocks\.0\.act_adapter\.weight.*unexpected: blocks\.0\.surprise"
    ):
        load_astra(directory)

    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_astra(directory)
    stored = json.loads((directory / "config.json").read_text())
    stored["config"]["num_layers"] = "two"
    (directory / "config.json").write_text(json.dumps(stored))
    with pytest.raises(CheckpointError, match=r"config.json: invalid model config: AstraConfig.num_layers"):
        load_astra(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_astra(directory)
    (directory / "config.json").write_text("[]")
    with pytest.raises(CheckpointError, match="config.json: expected a JSON object, got list"):
        load_astra(directory)
    (directory / "config.json").write_text(json.dumps({k: v for k, v in stored.items() if k != "config"}))
    with pytest.raises(CheckpointError, match="no 'config' entry"):
        load_astra(directory)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_astra(tmp_path / "nowhere")


def test_full_size_wan_key_set_matches_the_preset():
    """The real Wan2.1-T2V-1.3B key set and config (built on the meta device: no memory) match our preset."""
    with torch.device("meta"):
        diffusers_model = WanTransformer3DModel(
            num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30
        )
        ours = AstraTransformer(AstraConfig.from_preset("wan2.1-t2v-1.3b"))
    original = diffusers_to_original(diffusers_model.state_dict())
    preset = ours.config
    for fields in (
        wan_fields_from_shapes(original, "wan"),
        wan_fields_from_diffusers_config(dict(diffusers_model.config), "wan"),
    ):
        assert {name: value for name, value in fields.items() if getattr(preset, name) != value} == {}
    kept_init = check_state_dict(ours, original, "wan", ASTRA_ADDITION_PREFIXES)
    assert kept_init and all(checkpoints._matches_any(key, ASTRA_ADDITION_PREFIXES) for key in kept_init)
