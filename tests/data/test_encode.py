import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from astra.actions.align import latent_actions
from astra.data.cli import _info
from astra.data.encode import clip_ranges, encode_episodes
from astra.data.format import Episode, write_episode
from astra.data.sampler import LatentDataset
from astra.errors import DataError


class PoolingVAE:
    """Stand-in for the VideoVAE protocol: first frame alone, then 4x time and 8x space average pooling."""

    def encode(self, video):
        first = F.avg_pool3d(video[:, :, :1], (1, 8, 8))
        rest = F.avg_pool3d(video[:, :, 1:], (4, 8, 8)) if video.shape[2] > 1 else first[:, :, :0]
        return torch.cat([first, rest], dim=2)


def keyboard_episode(num_frames, seed, split="train", world="doom"):
    rng = np.random.default_rng(seed)
    rows = np.zeros((num_frames, 8), np.float32)
    rows[:, :6] = rng.integers(0, 2, (num_frames, 6))
    frames = rng.integers(0, 256, (num_frames, 16, 16, 3), dtype=np.uint8)
    return Episode(frames=frames, actions=rows, modality="keyboard_mouse", fps=10.0, split=split, meta={"world": world})


def test_clip_ranges_share_boundaries():
    assert clip_ranges(19, 0) == [(0, 17)]
    assert clip_ranges(19, 3) == [(0, 9), (8, 17)]
    assert clip_ranges(21, 3) == [(0, 9), (8, 17), (16, 21)]
    assert clip_ranges(1, 3) == [(0, 1)]


def test_encode_writes_latents_actions_and_index(tmp_path, capsys):
    episodes = tmp_path / "episodes"
    originals = {f"ep{i}": keyboard_episode(9 + 4 * i, seed=i) for i in range(3)}
    for name, episode in originals.items():
        write_episode(episodes, name, episode)
    report = encode_episodes(episodes, PoolingVAE(), tmp_path / "latents", vae_name="pool", shard_size=2)
    assert (report.encoded, report.clips, report.skipped) == (3, 3, [])
    assert sorted(p.name for p in (tmp_path / "latents").glob("shard-*")) == ["shard-r0-00000.safetensors", "shard-r0-00001.safetensors"]
    dataset = LatentDataset(tmp_path / "latents")
    assert dataset.vae == "pool" and len(dataset) == 3
    for i, entry in enumerate(dataset.entries):
        latents, actions = dataset.load(i)
        episode = originals[entry["episode"]]
        assert latents.shape == (3, entry["latent_frames"], 2, 2) and entry["latent_frames"] == 3 + i
        np.testing.assert_allclose(actions.numpy(), latent_actions("keyboard_mouse", episode.actions))
        expected_first = torch.from_numpy(episode.frames[0]).float().permute(2, 0, 1) / 127.5 - 1
        torch.testing.assert_close(latents[:, 0], F.avg_pool2d(expected_first, 8), atol=0.05, rtol=0)  # fp16 + video
    assert _info(tmp_path / "latents") == 0
    assert "doom" in capsys.readouterr().out


def test_resume_ranks_and_bad_episodes_are_reported(tmp_path):
    episodes = tmp_path / "episodes"
    for i in range(4):
        write_episode(episodes, f"ep{i}", keyboard_episode(9, seed=i, world="doom" if i % 2 else "robot"))
    bad = write_episode(episodes, "ep4", keyboard_episode(9, seed=9))
    np.save(bad / "actions.npy", np.full((9, 8), np.nan, np.float32))
    out = tmp_path / "latents"
    first = encode_episodes(episodes, PoolingVAE(), out, vae_name="pool", rank=0, world_size=2)
    assert first.encoded == 2 and [s["episode"] for s in first.skipped] == ["ep4"]
    assert "row 0" in first.skipped[0]["reason"]
    assert json.loads((out / "report-r0.json").read_text())["skipped"][0]["episode"] == "ep4"
    again = encode_episodes(episodes, PoolingVAE(), out, vae_name="pool", rank=0, world_size=2)
    assert (again.encoded, again.already_done, len(again.skipped)) == (0, 2, 1)
    encode_episodes(episodes, PoolingVAE(), out, vae_name="pool", rank=1, world_size=2)
    dataset = LatentDataset(out)
    assert sorted(e["episode"] for e in dataset.entries) == ["ep0", "ep1", "ep2", "ep3"]
    assert {e["source"] for e in dataset.entries} == {"doom", "robot"}


def test_empty_or_corrupt_folders_are_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no episodes"):
        encode_episodes(empty, PoolingVAE(), tmp_path / "latents", vae_name="pool")
    assert not (tmp_path / "latents").exists()  # nothing written for nothing to encode
    write_episode(tmp_path / "episodes", "ep0", keyboard_episode(9, seed=0))
    for bad in (1, -3):  # each episode was skipped as bad (1) or silently encoded whole (-3)
        with pytest.raises(ValueError, match="max_latent_frames must be 0"):
            encode_episodes(tmp_path / "episodes", PoolingVAE(), tmp_path / "latents", max_latent_frames=bad)
    assert not (tmp_path / "latents").exists()
    with pytest.raises(DataError, match="no episodes"):
        _info(empty)
    (empty / "index.json").write_text("{not json")
    with pytest.raises(DataError, match=r"index.json: unreadable"):
        LatentDataset(empty)
    (empty / "index.json").write_text(json.dumps({"format_version": 1, "vae": "pool"}))
    with pytest.raises(DataError, match="entries"):
        LatentDataset(empty)


def test_an_episode_with_a_broken_meta_json_is_skipped_not_fatal(tmp_path):
    episodes = tmp_path / "episodes"
    write_episode(episodes, "ep0", keyboard_episode(9, seed=0))
    broken = write_episode(episodes, "ep1", keyboard_episode(9, seed=1))
    meta = json.loads((broken / "meta.json").read_text())
    del meta["num_frames"]
    (broken / "meta.json").write_text(json.dumps(meta))
    report = encode_episodes(episodes, PoolingVAE(), tmp_path / "latents", vae_name="pool")
    assert report.encoded == 1 and [s["episode"] for s in report.skipped] == ["ep1"]
    assert "num_frames" in report.skipped[0]["reason"]


def test_resuming_with_another_world_size_does_not_encode_episodes_twice(tmp_path):
    episodes = tmp_path / "episodes"
    for i in range(4):
        write_episode(episodes, f"ep{i}", keyboard_episode(9, seed=i))
    out = tmp_path / "latents"
    encode_episodes(episodes, PoolingVAE(), out, vae_name="pool", rank=1, world_size=2)  # ep1, ep3; rank 0 stopped
    report = encode_episodes(episodes, PoolingVAE(), out, vae_name="pool", rank=0, world_size=1)
    assert (report.encoded, report.already_done) == (2, 2)
    assert sorted(e["episode"] for e in LatentDataset(out).entries) == ["ep0", "ep1", "ep2", "ep3"]


def test_cli_names_a_bad_device(tmp_path, capsys):
    from astra.cli import main
    from astra.vae.small import SMALL_VAE_PRESETS, SmallVAE, save_small_vae

    write_episode(tmp_path / "episodes", "ep0", keyboard_episode(9, seed=0))
    vae = save_small_vae(SmallVAE(SMALL_VAE_PRESETS["astra-tiny-vae"]), tmp_path / "vae")
    args = ["data", "encode", "--episodes", str(tmp_path / "episodes"), "--vae", str(vae), "--out", str(tmp_path / "out")]
    assert main(args + ["--device", "nope"]) == 2
    assert "--device 'nope' is not a torch device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(args + ["--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_a_rerun_that_would_cut_clips_differently_is_refused_not_mixed(tmp_path):
    """Clips of the first run stay for the episodes it finished: a rerun with another --max-latent-frames would
    leave two clip lengths in one dataset, so it is refused, on any rank, with the setting named."""
    episodes = tmp_path / "episodes"
    for i in range(2):
        write_episode(episodes, f"ep{i}", keyboard_episode(9, seed=i))
    out = tmp_path / "latents"
    encode_episodes(episodes, PoolingVAE(), out, vae_name="pool", rank=1, world_size=2, max_latent_frames=2)
    with pytest.raises(DataError, match="--max-latent-frames 2, not 0"):
        encode_episodes(episodes, PoolingVAE(), out, vae_name="pool", rank=0, world_size=2)
    with pytest.raises(DataError, match="VAE 'pool', not 'other'"):
        encode_episodes(episodes, PoolingVAE(), out, vae_name="other", rank=0, world_size=2, max_latent_frames=2)
    report = encode_episodes(episodes, PoolingVAE(), out, vae_name="pool", rank=0, world_size=2, max_latent_frames=2)
    assert report.encoded == 1


def test_a_merge_that_read_a_stale_fragment_cannot_overwrite_a_complete_index(tmp_path, monkeypatch):
    """Rank 0 merges having read rank 1's fragment before rank 1's last write; rank 1 then writes it and merges.
    Whatever the order of their index writes, index.json must end up listing every clip."""
    import threading

    from astra.data import encode

    episodes = tmp_path / "episodes"
    for i in range(3):
        write_episode(episodes, f"ep{i}", keyboard_episode(9, seed=i))
    out = tmp_path / "latents"
    encode_episodes(episodes, PoolingVAE(), out, vae_name="pool", rank=0, world_size=2)  # ep0, ep2
    encode_episodes(episodes, PoolingVAE(), out, vae_name="pool", rank=1, world_size=2)  # ep1
    final = (out / "index-r1.json").read_text()
    stale = json.loads(final)
    stale["entries"] = []  # rank 1's fragment as rank 0 read it: before its last shard
    (out / "index-r1.json").write_text(json.dumps(stale))

    def rank_1_finishes():
        (out / "index-r1.json").write_text(final)
        encode.merge_index(out)

    write, other = encode.write_json_atomic, threading.Thread(target=rank_1_finishes)

    def interleaved(path, content):  # rank 0 has read the stale set; rank 1 finishes before rank 0 writes
        if path.name == "index.json" and other.ident is None:
            other.start()
            other.join(timeout=2)  # without the lock rank 1 merges (completely) now; with it, it waits for rank 0
        write(path, content)

    monkeypatch.setattr(encode, "write_json_atomic", interleaved)
    encode.merge_index(out)
    other.join()
    assert sorted(e["episode"] for e in LatentDataset(out).entries) == ["ep0", "ep1", "ep2"]


def test_the_module_imports_where_fcntl_is_missing(monkeypatch):
    """Windows has no fcntl: the index lock (astra.files.exclusive_lock) must not make this import fail there."""
    import importlib.util
    import sys

    from astra.data import encode

    monkeypatch.setitem(sys.modules, "fcntl", None)  # makes `import fcntl` raise ImportError
    spec = importlib.util.spec_from_file_location("astra_encode_without_fcntl", encode.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert module.merge_index.__doc__ == encode.merge_index.__doc__


def test_cli_fails_when_every_episode_is_skipped(tmp_path, capsys):
    """It printed "encoded 0 episodes ... 1 skipped" and exited 0, leaving an empty dataset for training to find."""
    from astra.cli import main
    from astra.vae.small import SMALL_VAE_PRESETS, SmallVAE, save_small_vae

    broken = write_episode(tmp_path / "episodes", "ep0", keyboard_episode(9, seed=0))
    meta = json.loads((broken / "meta.json").read_text())
    del meta["num_frames"]
    (broken / "meta.json").write_text(json.dumps(meta))
    vae = save_small_vae(SmallVAE(SMALL_VAE_PRESETS["astra-tiny-vae"]), tmp_path / "vae")
    args = ["data", "encode", "--episodes", str(tmp_path / "episodes"), "--vae", str(vae), "--out",
            str(tmp_path / "out"), "--device", "cpu"]  # fmt: skip
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "skipped ep0" in captured.out and "every episode was skipped, nothing encoded" in captured.err
