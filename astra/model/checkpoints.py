"""Checkpoint formats: Wan2.1 weights (original file or diffusers folder), the authors' Astra `.ckpt`, our own.

Every load is strict. A checkpoint key the model does not have, a model key the checkpoint does not have, or a
shape mismatch raises `CheckpointError` naming the keys. The only keys allowed to be missing are listed
explicitly by the caller (`allow_missing_prefixes`): loading plain Wan weights into Astra keeps the Astra
additions (ACT-Adapters, action experts, projectors, motion prior, history embedders) at their initialisation, which
is the point of the identity/zero initialisation (a fresh Astra on Wan weights reproduces Wan).

Our own format is a directory with `model.safetensors` and `config.json` (the AstraConfig + user metadata such as
the git revision or training recipe), written into a temporary directory beside it and renamed into place.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from astra.actions.modalities import get_modality
from astra.config_fields import read_json_object
from astra.errors import CheckpointError
from astra.files import replace_folder, staging_folder
from astra.model.config import AstraConfig, HistoryBudget
from astra.model.transformer import AstraTransformer
from astra.model.wan_keys import diffusers_to_original

logger = logging.getLogger(__name__)

# Module paths of everything Astra adds to the Wan backbone (fnmatch patterns over parameter names).
ASTRA_ADDITION_PREFIXES: tuple[str, ...] = (
    "blocks.*.act_adapter",
    "blocks.*.action_experts",
    "action_projectors",
    "motion_prior",
    "history_embedders",
)
WAN_HEAD_DIM = 128  # every published Wan2.1 size uses 128-wide heads; the original layout does not store num_heads
MAX_LISTED_KEYS = 20  # error messages name at most this many keys of each kind
STATE_DICT_WRAPPERS = ("state_dict", "model", "module")  # top-level keys that training frameworks nest under

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_INDEX = DIFFUSERS_WEIGHTS + ".index.json"
DIFFUSERS_CLASS = "WanTransformer3DModel"

ASTRA_WEIGHTS = "model.safetensors"
ASTRA_CONFIG = "config.json"
ASTRA_FORMAT = "astra"
ASTRA_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------
# Reading tensors
# ---------------------------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` or torch (`.pt`/`.pth`/`.ckpt`) file, unwrapped; CheckpointError names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            content: Any = load_file(str(path))
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated/corrupt files raise many exception types across libraries
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt or truncated?): {error}") from error
    return _unwrap_state_dict(content, path)


def _unwrap_state_dict(content: Any, path: Path) -> dict[str, torch.Tensor]:
    """Accept a flat {name: tensor} dict, or one nested under a single training-framework wrapper key."""
    if isinstance(content, dict):
        for wrapper in STATE_DICT_WRAPPERS:
            if isinstance(content.get(wrapper), dict):
                content = content[wrapper]
                break
    if not isinstance(content, dict) or not content:
        raise CheckpointError(f"{path}: expected a state dict of named tensors, got {type(content).__name__}")
    not_tensors = [name for name, value in content.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries that are not tensors: {_name_some(not_tensors)}")
    return content


def read_diffusers_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Tensors (single file or shards listed by the index's weight_map) and config.json of a diffusers folder."""
    config_path = folder / "config.json"
    config = _read_json(config_path) if config_path.is_file() else None
    index_path = folder / DIFFUSERS_INDEX
    if index_path.is_file():
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: missing or empty 'weight_map'")
        state_dict: dict[str, torch.Tensor] = {}
        for shard in tqdm(sorted(set(weight_map.values())), desc=f"reading {folder.name} shards", leave=False):
            state_dict.update(read_state_dict(folder / shard))
        listed, found = set(weight_map), set(state_dict)
        if listed != found:
            raise CheckpointError(
                f"{index_path}: weight_map and shards disagree; listed but absent: {_name_some(listed - found)}; "
                f"present but unlisted: {_name_some(found - listed)}"
            )
        return state_dict, config
    if (folder / DIFFUSERS_WEIGHTS).is_file():
        return read_state_dict(folder / DIFFUSERS_WEIGHTS), config
    raise CheckpointError(
        f"{folder}: no {DIFFUSERS_WEIGHTS} and no {DIFFUSERS_INDEX}: not a diffusers transformer folder"
    )


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, error=CheckpointError)


# ---------------------------------------------------------------------------------------------------------------
# Strict state-dict checks
# ---------------------------------------------------------------------------------------------------------------


def _name_some(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return f"{shown} (+{len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else shown


def _matches_any(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or fnmatch.fnmatchcase(key, p + ".*") for p in prefixes)


def check_state_dict(
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    allow_missing_prefixes: tuple[str, ...] = (),
) -> list[str]:
    """Raise CheckpointError on unexpected, mis-shaped or (not explicitly allowed) missing keys.

    Returns the model keys the checkpoint does not set (they keep their initialisation).
    """
    expected = model.state_dict()
    unexpected = sorted(set(state_dict) - set(expected))
    absent = sorted(set(expected) - set(state_dict))
    missing = [key for key in absent if not _matches_any(key, allow_missing_prefixes)]
    mis_shaped = [
        f"{key} (checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)})"
        for key in sorted(set(state_dict) & set(expected))
        if state_dict[key].shape != expected[key].shape
    ]
    problems = [
        f"{len(items)} {kind}: {_name_some(items)}"
        for kind, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
        if items
    ]
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    return absent


def _load_checked(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, allow_missing_prefixes: tuple[str, ...]
) -> list[str]:
    kept_init = check_state_dict(model, state_dict, source, allow_missing_prefixes)
    model.load_state_dict(state_dict, strict=False)  # strictness was enforced above, with named keys
    if kept_init:
        logger.info("%s: %d model tensors keep their initialisation: %s", source, len(kept_init), _name_some(kept_init))
    return kept_init


# ---------------------------------------------------------------------------------------------------------------
# Wan2.1 transformer weights
# ---------------------------------------------------------------------------------------------------------------


def is_diffusers_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(".attn1." in key for key in state_dict)


def wan_fields_from_diffusers_config(config: dict[str, Any], source: str) -> dict[str, Any]:
    """AstraConfig backbone fields from diffusers' WanTransformer3DModel config.json."""
    class_name = config.get("_class_name", DIFFUSERS_CLASS)
    if class_name != DIFFUSERS_CLASS:
        raise CheckpointError(f"{source}: config.json describes a {class_name}, expected {DIFFUSERS_CLASS}")
    if config.get("image_dim") or config.get("added_kv_proj_dim"):
        raise CheckpointError(f"{source}: image-conditioned (I2V) Wan transformers are not supported")
    qk_norm = config.get("qk_norm", "rms_norm_across_heads")
    if qk_norm not in (None, "rms_norm_across_heads"):
        raise CheckpointError(f"{source}: qk_norm {qk_norm!r} is not Wan's 'rms_norm_across_heads'")
    try:
        heads, head_dim = int(config["num_attention_heads"]), int(config["attention_head_dim"])
        return {
            "patch_size": tuple(config["patch_size"]),
            "num_heads": heads,
            "dim": heads * head_dim,
            "in_channels": int(config["in_channels"]),
            "out_channels": int(config["out_channels"]),
            "text_dim": int(config["text_dim"]),
            "freq_dim": int(config["freq_dim"]),
            "ffn_dim": int(config["ffn_dim"]),
            "num_layers": int(config["num_layers"]),
            "cross_attn_norm": bool(config["cross_attn_norm"]),
            "qk_norm": qk_norm is not None,
            "eps": float(config["eps"]),
            "rope_max_positions": int(config.get("rope_max_seq_len", 1024)),
        }
    except KeyError as error:
        raise CheckpointError(f"{source}: config.json lacks {error.args[0]!r}") from error


def wan_fields_from_shapes(state_dict: dict[str, torch.Tensor], source: str) -> dict[str, Any]:
    """AstraConfig backbone fields inferred from original-layout tensor shapes (num_heads assumes 128-wide heads)."""
    required = ("patch_embedding.weight", "time_embedding.0.weight", "blocks.0.ffn.0.weight", "head.head.weight")
    absent = [key for key in required if key not in state_dict]
    if absent:
        raise CheckpointError(f"{source}: not a Wan2.1 transformer, missing {', '.join(absent)}")
    dim, in_channels, *patch = state_dict["patch_embedding.weight"].shape
    patch_volume = patch[0] * patch[1] * patch[2]
    layer_ids = {int(m.group(1)) for key in state_dict if (m := re.match(r"blocks\.(\d+)\.", key))}
    if dim % WAN_HEAD_DIM:
        raise CheckpointError(
            f"{source}: width {dim} is not a multiple of Wan's head_dim {WAN_HEAD_DIM}; pass a config with num_heads"
        )
    text_weight = state_dict.get("text_embedding.0.weight")
    return {
        "patch_size": tuple(patch),
        "num_heads": dim // WAN_HEAD_DIM,
        "dim": dim,
        "in_channels": in_channels,
        "out_channels": state_dict["head.head.weight"].shape[0] // patch_volume,
        "text_dim": 0 if text_weight is None else text_weight.shape[1],
        "freq_dim": state_dict["time_embedding.0.weight"].shape[1],
        "ffn_dim": state_dict["blocks.0.ffn.0.weight"].shape[0],
        "num_layers": max(layer_ids) + 1,
        "cross_attn_norm": "blocks.0.norm3.weight" in state_dict,
        "qk_norm": "blocks.0.self_attn.norm_q.weight" in state_dict,
    }


def _resolve_config(config: AstraConfig | None, fields: dict[str, Any], source: str) -> AstraConfig:
    """Without a config: the Wan preset with the checkpoint's backbone. With one: it must agree with the checkpoint."""
    if config is None:
        return AstraConfig.from_preset("wan2.1-t2v-1.3b", **fields)
    disagree = [
        f"{name}={getattr(config, name)!r} (checkpoint: {value!r})"
        for name, value in fields.items()
        if getattr(config, name) != value
    ]
    if disagree:
        raise CheckpointError(f"{source}: the given config disagrees with the checkpoint: {', '.join(disagree)}")
    return config


def load_wan_transformer(
    path: str | Path,
    config: AstraConfig | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    allow_missing_prefixes: tuple[str, ...] = ASTRA_ADDITION_PREFIXES,
) -> AstraTransformer:
    """Build an AstraTransformer on Wan2.1 weights: an original single file or a diffusers folder (detected).

    The Astra additions (`allow_missing_prefixes`) keep their initialisation; every backbone key must match.
    """
    path = Path(path)
    source = str(path)
    if path.is_dir():
        state_dict, diffusers_config = read_diffusers_folder(path)
    else:
        state_dict, diffusers_config = read_state_dict(path), None
    if is_diffusers_layout(state_dict):
        state_dict = diffusers_to_original(state_dict)
        source += " (diffusers layout; keys named as in the original Wan release)"
    if diffusers_config is not None:
        fields = wan_fields_from_diffusers_config(diffusers_config, source)
    else:
        fields = wan_fields_from_shapes(state_dict, source)
        if config is not None:  # the original layout does not store num_heads: trust the caller's
            fields.pop("num_heads")
    config = _resolve_config(config, fields, source)
    model = AstraTransformer(config)
    _load_checked(model, state_dict, source, allow_missing_prefixes)
    return model.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
# The authors' released Astra checkpoint (compatibility mode)
# ---------------------------------------------------------------------------------------------------------------

# (pattern on the authors' key, our key) for modules that exist in both with the same shapes.
OFFICIAL_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^clean_x_embedder\.proj\.", "history_embedders.proj_1x."),
    (r"^clean_x_embedder\.proj_(2x|4x)\.", r"history_embedders.proj_\1."),
    (r"^blocks\.(\d+)\.projector\.", r"blocks.\1.act_adapter."),
    (r"^blocks\.(\d+)\.moe\.experts\.(\d+)\.0\.", r"blocks.\1.action_experts.experts.\2.0."),
)
# Present in the release but never used by its forward pass: dropped and reported.
OFFICIAL_UNUSED: tuple[str, ...] = (r"^global_router\.", r"^blocks\.\d+\.cam_encoder\.")
# Dataset-specific action processor -> (our modality, the expert the authors' code routes it to).
# openx (robot videos, 12 columns) has no modality of its own in our registry and camera12 already routes to the
# sekai expert: its expert is loaded (processor folded in) but no modality routes to it.
OFFICIAL_DATASETS: dict[str, tuple[str | None, int]] = {
    "sekai": ("camera12", 0),
    "nuscenes": ("vehicle7", 1),
    "openx": (None, 2),
}
OFFICIAL_PROCESSOR = re.compile(rf"^({'|'.join(OFFICIAL_DATASETS)})_processor\.projector\.0\.(weight|bias)$")
# The authors' history window: 16 latent frames at 4x, 2 at 2x, the start frame + the newest frame at 1x.
OFFICIAL_HISTORY = HistoryBudget(keep_first=True, full=1, compressed_2x=2, compressed_4x=16)
OFFICIAL_TARGET_FRAMES = 8  # latent frames generated per autoregressive step


def _official_config(state_dict: dict[str, torch.Tensor], source: str) -> AstraConfig:
    expert_pattern = re.compile(r"blocks\.0\.moe\.experts\.(\d+)\.0\.weight$")
    expert_ids = {int(m.group(1)) for key in state_dict if (m := expert_pattern.match(key))}
    if not expert_ids:
        raise CheckpointError(f"{source}: no blocks.0.moe.experts.K.0.weight: not an Astra checkpoint")
    expert_input = state_dict[f"blocks.0.moe.experts.{min(expert_ids)}.0.weight"].shape[1]
    routed = [(modality, expert) for modality, expert in OFFICIAL_DATASETS.values() if modality is not None]
    return AstraConfig.from_preset(
        "wan2.1-t2v-1.3b",
        **wan_fields_from_shapes(state_dict, source),
        modalities=tuple(modality for modality, _ in routed),
        action_space_dim=expert_input - 1,  # the experts read the projected action + the history bit
        num_experts=max(expert_ids) + 1,
        top_k=1,
        expert_hidden_dim=0,
        expert_routing="fixed",
        fixed_expert_of_modality=tuple(routed),
        attention="bidirectional",
        per_frame_timesteps=False,
        history_embedder_1x=True,
        history=OFFICIAL_HISTORY,
        chunk_frames=OFFICIAL_TARGET_FRAMES,
    )


def _fold_processors(
    config: AstraConfig,
    state_dict: dict[str, torch.Tensor],
    processors: dict[str, dict[str, torch.Tensor]],
    source: str,
) -> dict[str, str]:
    """Fold each dataset processor (W, b over [action; bit]) into the expert it is routed to, in place.

    Theirs: e(a, bit) = E (W [a; bit] + b) + c.  Ours: e = E' [P a; bit] + c' with the projector P = [I; 0].
    Exact with E'[:, :w] = E W[:, :w], E'[:, w:A] = 0, E'[:, A] = E W[:, w], c' = c + E b (w = modality width).
    Their zero action vector (action-free guidance) then equals our null action set to 0.
    """
    action_dim = config.action_space_dim
    folded = {}
    for name, (modality, expert) in OFFICIAL_DATASETS.items():
        weight, bias = processors[name]["weight"].float(), processors[name]["bias"].float()
        width = weight.shape[1] - 1  # the last input column is the history bit
        if weight.shape[0] != action_dim + 1 or width > action_dim:
            raise CheckpointError(
                f"{source}: {name}_processor.projector.0.weight has shape {tuple(weight.shape)}, "
                f"expected [{action_dim + 1}, width + 1] with width <= {action_dim}"
            )
        if modality is not None and width != get_modality(modality).width:
            raise CheckpointError(
                f"{source}: {name}_processor reads {width} action columns but modality {modality!r} has "
                f"{get_modality(modality).width}"
            )
        for layer in range(config.num_layers):
            prefix = f"blocks.{layer}.action_experts.experts.{expert}.0"
            if f"{prefix}.weight" not in state_dict or f"{prefix}.bias" not in state_dict:
                continue  # reported as missing by the strict check
            expert_weight = state_dict[f"{prefix}.weight"]
            merged = torch.zeros(expert_weight.shape[0], action_dim + 1)
            merged[:, :width] = expert_weight.float() @ weight[:, :width]
            merged[:, action_dim] = expert_weight.float() @ weight[:, width]
            merged_bias = state_dict[f"{prefix}.bias"].float() + expert_weight.float() @ bias
            state_dict[f"{prefix}.weight"] = merged.to(expert_weight.dtype)
            state_dict[f"{prefix}.bias"] = merged_bias.to(expert_weight.dtype)
        if modality is not None:
            state_dict[f"action_projectors.projectors.{modality}.weight"] = torch.eye(action_dim, width)
            state_dict[f"action_projectors.projectors.{modality}.bias"] = torch.zeros(action_dim)
        folded[name] = f"expert {expert}" + (f", modality {modality}" if modality else ", no modality routes to it")
    state_dict["action_projectors.null_action"] = torch.zeros(action_dim)
    return folded


def load_official_astra(
    path: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[AstraTransformer, dict[str, Any]]:
    """Load the authors' released `.ckpt` (original Wan naming + their modules) in compatibility mode.

    Their action processors are Linear(width + 1 -> A + 1) with the history bit as input, ours
    Linear(width -> A) with the bit appended after. Since their routing is fixed (one expert per dataset), the
    processor is folded exactly into its expert: our projector becomes [I; 0], the expert absorbs W and b.
    Every model tensor is set from the file (strict). Known differences from their forward pass, by design of
    the native model: compressed history is padded by replication (theirs: zeros) and its tokens get the RoPE
    position of the frames they cover; the action of a history frame is its own (theirs: off by one).
    Its camera actions follow the authors' data code, not ours: for latent c, E[4c+4] @ inv(E[4c]) of the 4x4
    extrinsics with translations as stored (ours, `astra.actions.align`: the camera-frame pose change from frame
    4c-4 to 4c, translations divided by the episode's scale), so actions for it must be converted to that
    convention first (`astra.actions.align.authors_camera12`).
    Returns (model, info): info has the config, the dropped unused keys, the folded processors and the experts
    no modality routes to.
    """
    source = str(path)
    raw = read_state_dict(path)
    config = _official_config(raw, source)
    model = AstraTransformer(config)
    expected = model.state_dict()

    state_dict: dict[str, torch.Tensor] = {}
    processors: dict[str, dict[str, torch.Tensor]] = {}
    dropped, unknown = [], []
    for key, tensor in raw.items():
        if processor := OFFICIAL_PROCESSOR.match(key):
            processors.setdefault(processor.group(1), {})[processor.group(2)] = tensor
        elif any(re.match(pattern, key) for pattern in OFFICIAL_UNUSED):
            dropped.append(key)
        else:
            renamed = key
            for pattern, replacement in OFFICIAL_RENAMES:
                renamed = re.sub(pattern, replacement, renamed)
            if renamed in expected:
                state_dict[renamed] = tensor
            else:
                unknown.append(key)
    absent_processors = [
        f"{name}_processor.projector.0"
        for name in OFFICIAL_DATASETS
        if set(processors.get(name, {})) != {"weight", "bias"}
    ]
    if unknown:
        raise CheckpointError(
            f"{source}: {len(unknown)} unexpected keys for the authors' layout: {_name_some(unknown)}"
        )
    if absent_processors:
        raise CheckpointError(f"{source}: missing the authors' action processors: {_name_some(absent_processors)}")

    folded = _fold_processors(config, state_dict, processors, source)
    _load_checked(model, state_dict, source, allow_missing_prefixes=())
    info = {
        "config": config,
        "dropped_unused": sorted(dropped),
        "folded_processors": folded,
        "unrouted_experts": {
            expert: name for name, (modality, expert) in OFFICIAL_DATASETS.items() if modality is None
        },
    }
    return model.to(dtype=dtype), info


# ---------------------------------------------------------------------------------------------------------------
# Our own format: <directory>/model.safetensors + <directory>/config.json
# ---------------------------------------------------------------------------------------------------------------


def save_astra(model: AstraTransformer, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` + `config.json` (config + metadata) atomically; returns the directory.

    Both files are written into a temporary directory beside the target which then replaces it, so a reader
    never sees a half-written checkpoint. An existing target may only hold a previous checkpoint (our two files).
    """
    directory = Path(directory)
    metadata = dict(metadata or {})
    try:
        stored = {
            "format": ASTRA_FORMAT,
            "format_version": ASTRA_FORMAT_VERSION,
            "config": model.config.to_dict(),
            "metadata": metadata,
        }
        config_text = json.dumps(stored, indent=2)
    except TypeError as error:
        raise ValueError(f"checkpoint metadata must be JSON-serialisable: {error}") from error
    if directory.exists():
        known = (ASTRA_WEIGHTS, ASTRA_CONFIG)
        foreign = sorted(p.name for p in directory.iterdir() if p.name not in known) if directory.is_dir() else [directory.name]
        if foreign:
            raise CheckpointError(
                f"refusing to replace {directory}: it is not an Astra checkpoint directory ({_name_some(foreign)})"
            )
    staging = staging_folder(directory)
    try:
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
        save_file(tensors, str(staging / ASTRA_WEIGHTS), metadata={"format": ASTRA_FORMAT})
        (staging / ASTRA_CONFIG).write_text(config_text)
        replace_folder(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def is_astra_checkpoint(path: str | Path) -> bool:
    """Whether `path` (a directory, or its model.safetensors) holds a checkpoint in our own format."""
    path = Path(path)
    config_path = (path if path.is_dir() else path.parent) / ASTRA_CONFIG
    try:
        return _read_json(config_path).get("format") == ASTRA_FORMAT
    except (CheckpointError, AttributeError):
        return False


def astra_metadata(directory_or_file: str | Path) -> dict[str, Any]:
    """The user metadata of a `save_astra` checkpoint (sampling settings, data recipe, ...) without its weights."""
    path = Path(directory_or_file)
    metadata = _read_json((path.parent if path.is_file() else path) / ASTRA_CONFIG).get("metadata", {})
    return metadata if isinstance(metadata, dict) else {}


def load_astra(
    directory_or_file: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[AstraTransformer, dict[str, Any]]:
    """Load a checkpoint written by `save_astra` (the directory or its model.safetensors) -> (model, metadata).

    The weights keep their stored dtype unless `dtype` is given.
    """
    path = Path(directory_or_file)
    directory = path.parent if path.is_file() else path
    weights_path, config_path = directory / ASTRA_WEIGHTS, directory / ASTRA_CONFIG
    for required in (weights_path, config_path):
        if not required.is_file():
            raise CheckpointError(
                f"{required} does not exist: not an Astra checkpoint (expected {ASTRA_WEIGHTS} + {ASTRA_CONFIG})"
            )
    stored = _read_json(config_path)
    if stored.get("format") != ASTRA_FORMAT or stored.get("format_version") != ASTRA_FORMAT_VERSION:
        raise CheckpointError(
            f"{config_path}: format {stored.get('format')!r} version {stored.get('format_version')!r}, "
            f"expected {ASTRA_FORMAT!r} version {ASTRA_FORMAT_VERSION}"
        )
    if "config" not in stored:
        raise CheckpointError(f"{config_path}: no 'config' entry (the model's settings)")
    try:
        config = AstraConfig.from_dict(stored["config"])
        config.validate()
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{config_path}: invalid model config: {error}") from error
    state_dict = read_state_dict(weights_path)
    stored_dtype = next((t.dtype for t in state_dict.values() if t.is_floating_point()), torch.float32)
    model = AstraTransformer(config)
    _load_checked(model, state_dict, str(weights_path), allow_missing_prefixes=())
    return model.to(device=device, dtype=dtype or stored_dtype), stored.get("metadata", {})
