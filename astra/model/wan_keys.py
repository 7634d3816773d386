"""State-dict names of the Wan2.1 transformer: diffusers layout <-> original release layout (ours).

One table, read in both directions. Each row maps a module prefix; `{N}` stands for a block index. A key is
renamed by the row whose prefix it starts with (the `.weight` / `.bias` suffix is carried over); keys that match no
row (e.g. `patch_embedding.*`, or the Astra additions) keep their name.
"""

from __future__ import annotations

import re

import torch

# (diffusers prefix, original prefix)
DIFFUSERS_TO_ORIGINAL: tuple[tuple[str, str], ...] = (
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    *(
        (f"blocks.{{N}}.{ours_attn}.{theirs}", f"blocks.{{N}}.{orig_attn}.{ours}")
        for ours_attn, orig_attn in (("attn1", "self_attn"), ("attn2", "cross_attn"))
        for theirs, ours in (
            ("to_q", "q"),
            ("to_k", "k"),
            ("to_v", "v"),
            ("to_out.0", "o"),
            ("norm_q", "norm_q"),
            ("norm_k", "norm_k"),
        )
    ),
    ("blocks.{N}.ffn.net.0.proj", "blocks.{N}.ffn.0"),
    ("blocks.{N}.ffn.net.2", "blocks.{N}.ffn.2"),
    ("blocks.{N}.norm2", "blocks.{N}.norm3"),  # the affine cross-attention norm
    ("blocks.{N}.scale_shift_table", "blocks.{N}.modulation"),
    ("proj_out", "head.head"),
    ("scale_shift_table", "head.modulation"),
)


def _compile(prefix: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(prefix).replace(re.escape("{N}"), r"(?P<N>\d+)") + r"(?P<rest>(\..*)?)$")


_FORWARD = [(_compile(src), dst) for src, dst in DIFFUSERS_TO_ORIGINAL]
_BACKWARD = [(_compile(dst), src) for src, dst in DIFFUSERS_TO_ORIGINAL]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, target in rules:
        match = pattern.match(key)
        if match:
            return target.replace("{N}", match.groupdict().get("N") or "") + match.group("rest")
    return key


def _rename_all(state_dict: dict[str, torch.Tensor], rules) -> dict[str, torch.Tensor]:
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = _rename(key, rules)
        if new_key in renamed:
            raise ValueError(f"two keys map to {new_key!r} (second one: {key!r})")
        renamed[new_key] = value
    return renamed


def diffusers_to_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers `WanTransformer3DModel` state dict to the original Wan2.1 names."""
    return _rename_all(state_dict, _FORWARD)


def original_to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original Wan2.1 state dict to diffusers' names (inverse of `diffusers_to_original`)."""
    return _rename_all(state_dict, _BACKWARD)
