"""Optional text prompts: umT5 encoder states in Wan's layout, or precomputed embeddings from a file.

Wan conditions on umT5-XXL encoder states of shape [B, text_len, 4096]. Following diffusers'
`WanPipeline._get_t5_prompt_embeds`, each prompt is cleaned (HTML entities, whitespace), tokenised with
padding/truncation to `text_len`, encoded with its attention mask, and every position after the real tokens
is set to exactly zero. Everything is read from a LOCAL folder: nothing is downloaded.
"""

from __future__ import annotations

import functools
import html
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from astra.errors import AstraError

PROMPT_EMBEDDINGS_KEY = "prompt_embeds"  # tensor name inside a precomputed .safetensors / .pt file
ENCODER_SUBFOLDER = "text_encoder"  # diffusers pipeline layout
TOKENIZER_SUBFOLDER = "tokenizer"


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning without the optional ftfy pass: unescape HTML twice, collapse whitespace."""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def _component_dir(encoder_dir: Path, subfolder: str) -> Path:
    """`encoder_dir/subfolder` in the diffusers pipeline layout, else the folder itself."""
    nested = encoder_dir / subfolder
    return nested if nested.is_dir() else encoder_dir


@functools.lru_cache(maxsize=2)
def _load_encoder(encoder_dir: str, device: str, dtype: torch.dtype):
    """Tokenizer + UMT5 encoder, cached so that encoding many prompts loads the (large) weights once."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    root = Path(encoder_dir)
    if not root.is_dir():
        raise AstraError(f"text encoder folder {root} does not exist")
    encoder_path = _component_dir(root, ENCODER_SUBFOLDER)
    tokenizer_path = _component_dir(root, TOKENIZER_SUBFOLDER)
    if not (encoder_path / "config.json").is_file():
        raise AstraError(
            f"no umT5 encoder in {root}: expected config.json in {root / ENCODER_SUBFOLDER} or in {root} itself"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
        encoder = UMT5EncoderModel.from_pretrained(encoder_path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as error:
        raise AstraError(f"cannot load the text encoder from {root}: {error}") from error
    return tokenizer, encoder.to(device).eval()


@torch.no_grad()
def encode_prompts(
    prompts: list[str] | str,
    encoder_dir: str | Path,
    text_len: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Encode prompts to [B, text_len, text_dim] umT5 states, zeros after each prompt's real tokens."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    if text_len < 1:
        raise ValueError(f"text_len must be >= 1, got {text_len}")
    tokenizer, encoder = _load_encoder(str(Path(encoder_dir).resolve()), str(device), dtype)
    tokens = tokenizer(
        [clean_prompt(p) for p in prompts],
        padding="max_length",
        max_length=text_len,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    mask = tokens.attention_mask.to(device)
    states = encoder(input_ids=tokens.input_ids.to(device), attention_mask=mask).last_hidden_state
    # Wan's convention: the padded positions carry exact zeros, not the encoder's output for <pad>.
    return states * mask.gt(0).unsqueeze(-1).to(states.dtype)


def load_prompt_embeddings(path: str | Path, text_len: int | None = None) -> torch.Tensor:
    """Read precomputed prompt embeddings ([L, D] or [B, L, D]) from .safetensors or .pt/.pth -> float32 [B, L, D].

    The file holds one tensor, or a dict with the key `prompt_embeds`. With `text_len`, the sequence is
    truncated or zero-padded to that length (Wan's layout).
    """
    path = Path(path)
    if not path.is_file():
        raise AstraError(f"prompt embeddings file {path} does not exist")
    if path.suffix not in (".safetensors", ".pt", ".pth"):
        raise AstraError(f"{path}: prompt embeddings must be a .safetensors, .pt or .pth file")
    try:
        if path.suffix == ".safetensors":
            content = load_file(str(path))
        else:
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or truncated file: the libraries raise many types
        raise AstraError(f"cannot read prompt embeddings from {path}: {error}") from error

    if isinstance(content, dict):
        if PROMPT_EMBEDDINGS_KEY in content:
            content = content[PROMPT_EMBEDDINGS_KEY]
        elif len(content) == 1:
            content = next(iter(content.values()))
        else:
            raise AstraError(
                f"{path}: expected one tensor or a key {PROMPT_EMBEDDINGS_KEY!r}, found keys {sorted(content)}"
            )
    if not isinstance(content, torch.Tensor) or content.ndim not in (2, 3):
        shape = tuple(content.shape) if isinstance(content, torch.Tensor) else type(content).__name__
        raise AstraError(f"{path}: prompt embeddings must be a [L, D] or [B, L, D] tensor, got {shape}")
    if not torch.isfinite(content).all():
        raise AstraError(f"{path}: prompt embeddings contain NaN or inf")
    embeddings = content.float() if content.ndim == 3 else content.float().unsqueeze(0)
    if text_len is not None:
        embeddings = embeddings[:, :text_len]
        padding = text_len - embeddings.shape[1]
        embeddings = torch.nn.functional.pad(embeddings, (0, 0, 0, padding))
    return embeddings
