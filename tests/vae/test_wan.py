"""The Wan2.1 VAE loader: both layouts, the original<->diffusers name map, strictness, streaming."""

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from astra.errors import AstraError, CheckpointError  # noqa: E402
from astra.vae import load_vae  # noqa: E402
from astra.vae.wan import ORIGINAL_WEIGHTS, original_key_map  # noqa: E402

TINY = dict(
    base_dim=8,
    z_dim=4,
    dim_mult=[1, 2, 2, 2],
    num_res_blocks=1,
    temperal_downsample=[False, True, True],
    latents_mean=[0.1, -0.2, 0.3, 0.0],
    latents_std=[1.5, 0.5, 2.0, 1.0],
)


def expected_original_names(base_dim, z_dim, dim_mult, num_res_blocks, temperal_downsample) -> set[str]:
    """Parameter names of WanVAE_ in the Wan repo (wan/modules/vae.py), written from its structure."""
    names = {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"}

    def conv(prefix):
        names.update({f"{prefix}.weight", f"{prefix}.bias"})

    def resblock(prefix, in_dim, out_dim):
        names.update({f"{prefix}.residual.0.gamma", f"{prefix}.residual.3.gamma"})
        conv(f"{prefix}.residual.2")
        conv(f"{prefix}.residual.6")
        if in_dim != out_dim:
            conv(f"{prefix}.shortcut")

    def middle(prefix, dim):
        resblock(f"{prefix}.middle.0", dim, dim)
        names.add(f"{prefix}.middle.1.norm.gamma")
        conv(f"{prefix}.middle.1.to_qkv")
        conv(f"{prefix}.middle.1.proj")
        resblock(f"{prefix}.middle.2", dim, dim)

    def levels(prefix, dims, blocks_per_level, temporal, halved_inputs=()):
        """Encoder downsamples / decoder upsamples: resblocks per level, then a resample (with a time conv
        where `temporal`) after every level but the last; levels in `halved_inputs` take half-width inputs."""
        index = 0
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i in halved_inputs:
                in_dim //= 2
            for _ in range(blocks_per_level):
                resblock(f"{prefix}.{index}", in_dim, out_dim)
                in_dim, index = out_dim, index + 1
            if i != len(dim_mult) - 1:
                conv(f"{prefix}.{index}.resample.1")
                if temporal[i]:
                    conv(f"{prefix}.{index}.time_conv")
                index += 1

    dims = [base_dim * m for m in [1] + dim_mult]
    conv("encoder.conv1")
    levels("encoder.downsamples", dims, num_res_blocks, temperal_downsample)
    middle("encoder", dims[-1])
    names.add("encoder.head.0.gamma")
    conv("encoder.head.2")

    dims = [base_dim * m for m in [dim_mult[-1]] + dim_mult[::-1]]
    conv("decoder.conv1")
    middle("decoder", dims[0])
    levels("decoder.upsamples", dims, num_res_blocks + 1, temperal_downsample[::-1], halved_inputs=(1, 2, 3))
    names.add("decoder.head.0.gamma")
    conv("decoder.head.2")
    return names


def test_key_map_covers_the_published_wan21_vae():
    with torch.device("meta"):
        model = AutoencoderKLWan()  # diffusers defaults = Wan2.1 release
    mapping = original_key_map(model)
    assert set(mapping.values()) == set(model.state_dict())
    assert set(mapping) == expected_original_names(96, 16, [1, 2, 4, 4], 2, [False, True, True])
    assert mapping["encoder.downsamples.0.residual.2.weight"] == "encoder.down_blocks.0.conv1.weight"
    assert mapping["decoder.upsamples.3.resample.1.weight"] == "decoder.up_blocks.0.upsamplers.0.resample.1.weight"
    assert mapping["conv2.weight"] == "post_quant_conv.weight"


@pytest.fixture(scope="module")
def tiny_wan(tmp_path_factory):
    torch.manual_seed(0)
    model = AutoencoderKLWan(**TINY).eval()
    root = tmp_path_factory.mktemp("wan")
    model.save_pretrained(root / "model" / "vae")  # a diffusers model folder with a vae/ subfolder
    original = {old: model.state_dict()[new] for old, new in original_key_map(model).items()}
    (root / "original").mkdir()
    torch.save(original, root / "original" / ORIGINAL_WEIGHTS)
    (root / "original" / "config.json").write_text((root / "model" / "vae" / "config.json").read_text())
    return model, root


def test_both_layouts_load_and_agree(tiny_wan):
    model, root = tiny_wan
    from_diffusers = load_vae(root / "model")
    from_original = load_vae(root / "original" / ORIGINAL_WEIGHTS)
    torch.manual_seed(1)
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    latents = from_diffusers.encode(video)
    assert latents.shape == (1, 4, 3, 2, 2)
    torch.testing.assert_close(from_original.encode(video), latents)
    raw = model.encode(video).latent_dist.mean
    mean, std = (torch.tensor(TINY[key]).view(1, -1, 1, 1, 1) for key in ("latents_mean", "latents_std"))
    torch.testing.assert_close(latents, (raw - mean) / std)
    frames = from_original.decode(latents)
    assert frames.shape == (1, 3, 9, 16, 16)
    torch.testing.assert_close(frames, from_diffusers.decode(latents))
    torch.testing.assert_close(frames, model.decode(raw).sample)


def test_stream_decode_equals_one_shot(tiny_wan):
    _, root = tiny_wan
    vae = load_vae(root / "model")
    torch.manual_seed(2)
    latents = torch.randn(1, 4, 4, 2, 2)
    stream = vae.stream_decoder()
    streamed = torch.cat([stream.decode_chunk(latents[:, :, :1]), stream.decode_chunk(latents[:, :, 1:])], dim=2)
    one_shot = vae.decode(latents)
    assert streamed.shape == one_shot.shape == (1, 3, 13, 16, 16)
    assert ((streamed - one_shot).norm() / one_shot.norm()).item() < 1e-5


def test_strict_load_names_bad_keys(tiny_wan, tmp_path):
    model, root = tiny_wan
    state = torch.load(root / "original" / ORIGINAL_WEIGHTS, weights_only=True)
    state.pop("decoder.head.2.bias")
    state["encoder.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / ORIGINAL_WEIGHTS)
    (tmp_path / "config.json").write_text((root / "original" / "config.json").read_text())
    with pytest.raises(CheckpointError, match=r"(?s)missing: decoder.conv_out.bias.*unexpected: encoder.extra.weight"):
        load_vae(tmp_path / ORIGINAL_WEIGHTS)
    save_file({"encoder.conv_in.weight": torch.zeros(1)}, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="mis-shaped: encoder.conv_in.weight"):
        load_vae(tmp_path / "bad.safetensors")
    (tmp_path / "torn.safetensors").write_bytes(b"\x10\x00\x00")  # was a raw SafetensorError
    with pytest.raises(CheckpointError, match="torn.safetensors"):
        load_vae(tmp_path / "torn.safetensors")
    (tmp_path / "config.json").write_text("{not json")  # was a JSONDecodeError naming no file
    with pytest.raises(CheckpointError, match="config.json"):
        load_vae(tmp_path / ORIGINAL_WEIGHTS)


def test_bad_frame_count_is_a_clear_error(tiny_wan):
    _, root = tiny_wan
    with pytest.raises(AstraError, match="4k\\+1"):
        load_vae(root / "model").encode(torch.zeros(1, 3, 8, 16, 16))
