"""The small causal VAE: shapes, causality, streaming == one-shot, normalisation, strict save/load."""

import json

import pytest
import torch

from astra.errors import AstraError, CheckpointError
from astra.vae import SMALL_VAE_PRESETS, SmallVAE, load_small_vae, load_vae, save_small_vae

TINY = SMALL_VAE_PRESETS["astra-tiny-vae"]


@pytest.fixture
def vae():
    torch.manual_seed(0)
    return SmallVAE(TINY).eval()


def random_video(frames=9, size=16, seed=1):
    return torch.rand(2, 3, frames, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_shapes_follow_the_protocol(vae):
    latents = vae.encode(random_video(frames=9))
    assert latents.shape == (2, TINY.z_dim, 3, 16 // TINY.spatial_stride, 16 // TINY.spatial_stride)
    assert (vae.latent_channels, vae.temporal_stride, vae.spatial_stride) == (TINY.z_dim, 4, TINY.spatial_stride)
    frames = vae.decode(latents)
    assert frames.shape == (2, 3, 9, 16, 16)
    assert frames.min() >= -1 and frames.max() <= 1
    assert vae.encode(random_video(frames=1)).shape[2] == 1


def test_default_preset_size_and_shapes():
    config = SMALL_VAE_PRESETS["astra-small-vae"]
    model = SmallVAE(config)
    params = sum(p.numel() for p in model.parameters())
    assert 300_000 < params < 2_000_000  # < 8 MB of float32 weights
    assert (config.z_dim, config.spatial_stride, config.resolution) == (16, 4, (64, 64))


def test_encoder_is_causal_in_time(vae):
    video = random_video(frames=13)
    changed = video.clone()
    changed[:, :, 5:] = -changed[:, :, 5:]  # video frames 5.. belong to latent frames 2..
    before, after = vae.encode(video), vae.encode(changed)
    torch.testing.assert_close(before[:, :, :2], after[:, :, :2])
    assert not torch.allclose(before[:, :, 2:], after[:, :, 2:])


def test_decoder_is_causal_in_time(vae):
    latents = torch.randn(1, TINY.z_dim, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    changed = latents.clone()
    changed[:, :, 2] += 1.0  # latent frame 2 covers video frames 5..8
    before, after = vae.decode(latents), vae.decode(changed)
    torch.testing.assert_close(before[:, :, :5], after[:, :, :5])
    assert not torch.allclose(before[:, :, 5:9], after[:, :, 5:9])


@pytest.mark.parametrize("chunks", [(1, 1, 1, 1, 1), (2, 3), (1, 4), (5,)])
def test_stream_decode_equals_one_shot(vae, chunks):
    latents = torch.randn(2, TINY.z_dim, sum(chunks), 8, 8, generator=torch.Generator().manual_seed(4))
    stream = vae.stream_decoder()
    pieces, start = [], 0
    for size in chunks:
        pieces.append(stream.decode_chunk(latents[:, :, start : start + size]))
        start += size
    streamed, one_shot = torch.cat(pieces, dim=2), vae.decode(latents)
    assert streamed.shape == one_shot.shape == (2, 3, 4 * (sum(chunks) - 1) + 1, 16, 16)
    assert ((streamed - one_shot).norm() / one_shot.norm()).item() < 1e-5
    stream.reset()
    torch.testing.assert_close(stream.decode_chunk(latents[:, :, :1]), one_shot[:, :, :1])


def test_bad_inputs_raise_clear_errors(vae):
    with pytest.raises(AstraError, match="4k\\+1"):
        vae.encode(random_video(frames=8))
    with pytest.raises(AstraError, match="multiples of 2"):
        vae.encode(torch.zeros(1, 3, 5, 15, 16))
    with pytest.raises(AstraError, match="expects video"):
        vae.encode(torch.zeros(3, 5, 16, 16))
    with pytest.raises(AstraError, match="expects latents"):
        vae.decode(torch.zeros(1, TINY.z_dim + 1, 2, 8, 8))


def test_normalisation_and_save_load_roundtrip(vae, tmp_path, monkeypatch):
    video = random_video()
    raw = vae.encode_distribution(video)[0]
    mean, std = torch.linspace(-1, 1, TINY.z_dim), torch.linspace(0.5, 2, TINY.z_dim)
    vae.set_latent_stats(mean, std)
    latents = vae.encode(video)
    torch.testing.assert_close(latents, (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1))
    save_small_vae(vae, tmp_path / "astra-small-vae")
    assert not list(tmp_path.glob("**/.*tmp*"))  # atomic writes leave no temp files
    monkeypatch.setenv("ASTRA_WEIGHTS", str(tmp_path))
    loaded = load_vae("astra-small-vae")
    assert isinstance(loaded, SmallVAE)
    torch.testing.assert_close(loaded.encode(video), latents)
    torch.testing.assert_close(loaded.decode(latents), vae.decode(latents))


def test_strict_load_names_bad_keys(vae, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = save_small_vae(vae, tmp_path / "vae")
    state = load_file(str(folder / "model.safetensors"))
    state.pop("decoder.conv_out.bias")
    state["encoder.surplus"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"(?s)missing: decoder.conv_out.bias.*unexpected: encoder.surplus"):
        load_small_vae(folder)
    config = json.loads((folder / "config.json").read_text())
    config["z_dim"] = 5
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError):
        load_small_vae(folder)
    config["frame_channels"] = "wide"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"invalid VAE config: SmallVAEConfig.frame_channels: expected a list"):
        load_small_vae(folder)
    with pytest.raises(CheckpointError, match="no VAE named"):
        load_vae(tmp_path / "nothing-here")
    (folder / "config.json").write_text("{not json")  # was "holds neither a diffusers VAE ... nor Wan2.1_VAE.pth"
    with pytest.raises(CheckpointError, match=r"cannot read VAE config .*config.json"):
        load_vae(folder)


def test_a_save_replaces_the_whole_checkpoint_or_nothing(vae, tmp_path, monkeypatch):
    """Weights, config (latent statistics, step) and a run's optimizer state go in together: a save that fails
    midway leaves every file of the previous checkpoint, and a folder holding anything else is not replaced."""
    import astra.vae.small as small

    folder = save_small_vae(vae, tmp_path / "run", metadata={"step": 1}, extra_files={"training_state.pt": b"one"})
    before = {path.name: path.read_bytes() for path in folder.iterdir()}

    def fail(staged, final):
        raise OSError("disk full")

    monkeypatch.setattr(small, "replace_folder", fail)
    vae.set_latent_stats(torch.full((TINY.z_dim,), 3.0), torch.full((TINY.z_dim,), 2.0))
    with pytest.raises(OSError, match="disk full"):
        save_small_vae(vae, folder, metadata={"step": 2}, extra_files={"training_state.pt": b"two"})
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert not list(tmp_path.glob(".*tmp*"))
    monkeypatch.undo()
    save_small_vae(vae, folder, metadata={"step": 2}, extra_files={"training_state.pt": b"two"})
    assert (folder / "training_state.pt").read_bytes() == b"two"
    assert json.loads((folder / "config.json").read_text())["metadata"] == {"step": 2}
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="todo.txt"):
        save_small_vae(vae, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def _with_trained_reference_path(vae):
    from astra.vae.small import add_reference_path

    extended = add_reference_path(vae).eval()
    with torch.no_grad():  # stand-in for training: the zero-initialised path starts doing something
        for parameter in extended.decoder.reference.parameters():
            parameter.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(parameter.numel()))
    return extended


def test_an_added_reference_path_starts_as_the_decoder_it_extends(vae):
    from astra.vae.small import add_reference_path

    video = random_video(frames=9)
    latents = vae.encode(video)
    extended = add_reference_path(vae).eval()
    assert extended.config.reference_frame and not vae.config.reference_frame
    torch.testing.assert_close(extended.decode(latents, start=video[:, :, :1]), vae.decode(latents), rtol=0, atol=0)
    torch.testing.assert_close(extended.encode(video), latents, rtol=0, atol=0)


@pytest.mark.parametrize("chunks", [(1, 1, 1), (2, 1), (3,)])
def test_reference_decoding_streams_as_it_decodes_one_shot(vae, chunks):
    """Each chunk sees the start frame (first) or the last frame decoded before it, in a stream and one-shot."""
    extended = _with_trained_reference_path(vae)
    video = random_video(frames=9)
    latents, start = extended.encode(video), video[:, :, :1]
    one_shot = extended.decode(latents, start=start)
    stream, pieces, offset = extended.stream_decoder(start=start), [], 0
    for size in chunks:
        pieces.append(stream.decode_chunk(latents[:, :, offset : offset + size]))
        offset += size
    torch.testing.assert_close(torch.cat(pieces, dim=2), one_shot)
    assert not torch.allclose(one_shot, extended.decode(latents))  # the start frame is used ...
    other_start = extended.decode(latents, start=-start)
    assert not torch.allclose(other_start[:, :, 5:], one_shot[:, :, 5:])  # ... and carried on chunk after chunk
    with pytest.raises(AstraError):
        extended.decode(latents, start=torch.zeros(2, 3, 1, 15, 16))  # not a multiple of the stride
    with pytest.raises(AstraError, match="these latents need"):
        extended.decode(latents, start=torch.zeros(2, 3, 1, 32, 32))  # the wrong size for these latents
    with pytest.raises(AstraError, match="these latents need"):
        extended.stream_decoder(start=start[:1]).decode_chunk(latents[:, :, :1])  # the wrong batch


def test_reference_checkpoints_round_trip_and_load_strictly(vae, tmp_path):
    extended = _with_trained_reference_path(vae)
    save_small_vae(extended, tmp_path / "ref")
    reloaded = load_small_vae(tmp_path / "ref")
    assert reloaded.config.reference_frame
    video = random_video(frames=5)
    latents = extended.encode(video)
    start = video[:, :, :1]
    torch.testing.assert_close(reloaded.decode(latents, start=start), extended.decode(latents, start=start))
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    (tmp_path / "ref" / "config.json").write_text(json.dumps({**config, "reference_frame": False}))
    with pytest.raises(CheckpointError, match="decoder.reference"):
        load_small_vae(tmp_path / "ref")
