"""Text prompts: a tiny random umT5 + an offline WordLevel tokenizer in the diffusers folder layout."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from astra.errors import AstraError
from astra.model.text_encoder import clean_prompt, encode_prompts, load_prompt_embeddings

WORDS = ["a", "red", "car", "drives", "down", "the", "street", "at", "night", "&"]
TEXT_DIM = 32


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("umt5")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    config = UMT5Config(vocab_size=len(vocab), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    UMT5EncoderModel(config).save_pretrained(root / "text_encoder")
    return root


def real_token_count(prompt: str) -> int:
    return len(prompt.split()) + 1  # words + </s>


def test_shape_and_zeros_after_real_tokens(encoder_dir):
    prompts = ["a red car", "the car drives down the street at night"]
    out = encode_prompts(prompts, encoder_dir, text_len=12)
    assert out.shape == (2, 12, TEXT_DIM)
    for row, prompt in zip(out, prompts):
        count = real_token_count(prompt)
        assert torch.all(row[count:] == 0)
        assert torch.all(row[:count].abs().sum(-1) > 0)


def test_matches_direct_encoder_call_and_is_independent_of_batch(encoder_dir):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(encoder_dir / "tokenizer")
    model = UMT5EncoderModel.from_pretrained(encoder_dir / "text_encoder").eval()
    ids = tokenizer("a red car", return_tensors="pt").input_ids
    with torch.no_grad():
        direct = model(input_ids=ids).last_hidden_state[0]
    alone = encode_prompts(["a red car"], encoder_dir, text_len=10)[0]
    batched = encode_prompts(["the car drives down the street at night", "a red car"], encoder_dir, text_len=10)[1]
    torch.testing.assert_close(alone[: len(direct)], direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


def test_truncation_and_cleaning(encoder_dir):
    long_prompt = "the car drives down the street at night"
    out = encode_prompts([long_prompt], encoder_dir, text_len=4)
    assert out.shape == (1, 4, TEXT_DIM) and torch.all(out.abs().sum(-1) > 0)
    assert clean_prompt("  a &amp;amp;  red\n car ") == "a & red car"
    torch.testing.assert_close(
        encode_prompts(["a   red \t car"], encoder_dir, text_len=6),
        encode_prompts(["a red car"], encoder_dir, text_len=6),
    )


def test_flat_folder_layout_and_errors(encoder_dir, tmp_path):
    flat = tmp_path / "flat"
    shutil.copytree(encoder_dir / "text_encoder", flat)
    shutil.copytree(encoder_dir / "tokenizer", flat, dirs_exist_ok=True)
    torch.testing.assert_close(
        encode_prompts(["a car"], flat, text_len=5), encode_prompts(["a car"], encoder_dir, text_len=5)
    )
    with pytest.raises(AstraError, match="does not exist"):
        encode_prompts(["a car"], tmp_path / "missing", text_len=5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AstraError, match="no umT5 encoder"):
        encode_prompts(["a car"], tmp_path / "empty", text_len=5)
    with pytest.raises(ValueError, match="non-empty list"):
        encode_prompts([], encoder_dir, text_len=5)


def test_load_prompt_embeddings(tmp_path):
    torch.manual_seed(0)
    embeddings = torch.randn(2, 5, TEXT_DIM)
    save_file({"prompt_embeds": embeddings}, tmp_path / "p.safetensors")
    torch.save(embeddings[0], tmp_path / "p.pt")
    torch.testing.assert_close(load_prompt_embeddings(tmp_path / "p.safetensors"), embeddings)
    padded = load_prompt_embeddings(tmp_path / "p.pt", text_len=8)
    assert padded.shape == (1, 8, TEXT_DIM)
    torch.testing.assert_close(padded[0, :5], embeddings[0])
    assert torch.all(padded[0, 5:] == 0)
    assert load_prompt_embeddings(tmp_path / "p.pt", text_len=3).shape == (1, 3, TEXT_DIM)

    (tmp_path / "bad.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(AstraError, match="bad.safetensors"):
        load_prompt_embeddings(tmp_path / "bad.safetensors")
    torch.save({"a": embeddings, "b": embeddings}, tmp_path / "two.pt")
    with pytest.raises(AstraError, match="prompt_embeds"):
        load_prompt_embeddings(tmp_path / "two.pt")
    (tmp_path / "p.npy").write_bytes(b"")
    with pytest.raises(AstraError, match=r"\.safetensors, \.pt or \.pth"):
        load_prompt_embeddings(tmp_path / "p.npy")
    torch.save(torch.full((3, 4), float("nan")), tmp_path / "nan.pt")
    with pytest.raises(AstraError, match="NaN"):
        load_prompt_embeddings(tmp_path / "nan.pt")
