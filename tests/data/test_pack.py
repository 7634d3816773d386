import json
import lzma

import numpy as np
import pytest
import torch

from astra.cli import main
from astra.data.pack import PACK_MAGIC, pack_latents, read_pack, unpack_latents
from astra.data.sampler import LatentDataset
from astra.errors import DataError


SPECS = [("doom", "keyboard_mouse", 8, "train")] * 5 + [("robot", "robot7", 7, "train")] * 3
SPECS += [("doom", "keyboard_mouse", 8, "heldout"), ("robot", "robot7", 7, "heldout")]


@pytest.fixture(scope="module")
def latents(tmp_path_factory, latent_folder):
    return latent_folder(tmp_path_factory.mktemp("pack") / "latents", SPECS)





def _clips(dataset):
    return {e["episode"]: (e, *dataset.load(i)) for i, e in enumerate(dataset.entries)}


def test_unpacked_latents_match_within_the_quantisation_step_and_keep_actions_and_entries(latents, tmp_path):
    report = pack_latents(latents, tmp_path / "all.pack", split=None, bits=6, progress=False)
    assert report.clips == len(SPECS) and report.bytes == (tmp_path / "all.pack").stat().st_size
    assert unpack_latents(tmp_path / "all.pack", tmp_path / "out", progress=False) == len(SPECS)
    original, restored = _clips(LatentDataset(latents)), _clips(LatentDataset(tmp_path / "out"))
    assert original.keys() == restored.keys()
    _, header_tensors = read_pack(tmp_path / "all.pack")
    half_step = torch.from_numpy(header_tensors["step"]).view(-1, 1, 1, 1) / 2
    errors = []
    for name, (entry, values, actions) in original.items():
        new_entry, new_values, new_actions = restored[name]
        assert {k: v for k, v in entry.items() if k not in ("shard", "key")} == {
            k: v for k, v in new_entry.items() if k not in ("shard", "key")
        }
        assert torch.equal(actions, new_actions)  # actions are exact
        inside = (new_values - values).abs() <= half_step + 2e-3 * values.abs() + 1e-3  # float16 rounding on top
        assert inside.float().mean() > 0.999  # all but the few clipped beyond mean +- 4 std
        errors.append(((new_values - values) ** 2).mean() / (values**2).mean())
    snr = -10 * np.log10(np.mean(errors))
    assert snr == pytest.approx(report.snr_db, abs=1.0) and snr > 25  # 6 bits over +-4 std


def test_fewer_bits_give_a_smaller_file_and_a_larger_error(latents, tmp_path):
    five = pack_latents(latents, tmp_path / "5.pack", bits=5, progress=False)
    eight = pack_latents(latents, tmp_path / "8.pack", bits=8, progress=False)
    assert five.bytes < eight.bytes and five.snr_db < eight.snr_db - 12  # ~6 dB per bit


def test_split_and_episode_counts_choose_the_clips(latents, tmp_path):
    pack_latents(latents, tmp_path / "p", split="train", per_source={"doom": 2}, progress=False)
    header, _ = read_pack(tmp_path / "p")
    chosen = [(e["source"], e["split"]) for e in header["entries"]]
    assert chosen.count(("doom", "train")) == 2 and chosen.count(("robot", "train")) == 3 and len(chosen) == 5
    assert [e["episode"] for e in header["entries"] if e["source"] == "doom"] == ["doom-train-000000", "doom-train-000002"]
    pack_latents(latents, tmp_path / "q", split="train", per_source={"robot": 0}, progress=False)
    assert {e["source"] for e in read_pack(tmp_path / "q")[0]["entries"]} == {"doom"}
    with pytest.raises(DataError, match="no source \\['drive'\\]"):
        pack_latents(latents, tmp_path / "r", per_source={"drive": 1}, progress=False)
    with pytest.raises(DataError, match="no clips of split 'test'"):
        pack_latents(latents, tmp_path / "r", split="test", progress=False)
    with pytest.raises(DataError, match="bits must be 1 to 8"):
        pack_latents(latents, tmp_path / "r", bits=9, progress=False)
    assert not (tmp_path / "r").exists()


def test_damaged_packs_are_named_and_an_existing_dataset_is_not_overwritten(latents, tmp_path):
    pack = tmp_path / "p"
    pack_latents(latents, pack, progress=False)
    raw = pack.read_bytes()
    (tmp_path / "truncated").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_pack(tmp_path / "truncated")
    (tmp_path / "other").write_bytes(b"PK\x03\x04" + raw)
    with pytest.raises(DataError, match="not a latent pack"):
        read_pack(tmp_path / "other")
    with pytest.raises(DataError, match="no such pack file"):
        read_pack(tmp_path / "missing")

    from safetensors.numpy import load, save

    blob = lzma.decompress(raw[len(PACK_MAGIC) :])
    tensors = load(blob)
    header = json.loads(json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])["__metadata__"]["pack"])
    del tensors["1.actions"]
    (tmp_path / "holed").write_bytes(PACK_MAGIC + lzma.compress(save(tensors, metadata={"pack": json.dumps(header)})))
    with pytest.raises(DataError, match="entries\\[1\\]: the pack has no codes or actions for clip key '1'"):
        read_pack(tmp_path / "holed")

    with pytest.raises(DataError, match="already holds a latent dataset"):
        unpack_latents(pack, latents, progress=False)
    assert LatentDataset(latents).entries[0]["shard"].startswith("shard-r0")  # untouched


def test_cli_pack_and_unpack(latents, tmp_path, capsys):
    assert main(["data", "pack", str(latents), "--out", str(tmp_path / "p"), "--episodes", "doom=1", "--bits", "5"]) == 0
    assert "4 clips" in capsys.readouterr().out  # 1 doom + 3 robot training clips
    assert main(["data", "unpack", str(tmp_path / "p"), "--out", str(tmp_path / "u")]) == 0
    assert len(LatentDataset(tmp_path / "u")) == 4
    assert main(["data", "pack", str(latents), "--out", str(tmp_path / "x"), "--episodes", "doom"]) == 2
    assert "expected SOURCE=N" in capsys.readouterr().err


def test_the_sampler_reads_each_clip_once_and_gives_the_same_batches_as_without_the_cache(latents):
    from astra.data.sampler import SegmentSampler

    cached, uncached = LatentDataset(latents), LatentDataset(latents, cache_bytes=0)
    batches = [SegmentSampler(d, (1, 4), 2, seed=3).batch(6, np.random.default_rng(7)) for d in (cached, uncached)]
    assert torch.equal(batches[0].history_latents, batches[1].history_latents)
    assert torch.equal(batches[0].target_latents, batches[1].target_latents)
    assert batches[0].history_latents.dtype == torch.float32
    assert len(cached._cache) > 0 and len(uncached._cache) == 0
    stored, _ = cached.load_stored(next(iter(cached._cache)))
    assert stored.dtype == torch.float16  # kept as stored; load() converts


def test_parts_are_even_samples_that_unpack_together_as_the_whole(latents, tmp_path):
    whole = pack_latents(latents, tmp_path / "w.pack", split=None, progress=False)
    split = pack_latents(latents, tmp_path / "s.pack", split=None, parts=2, progress=False)
    first, second = tmp_path / "s-1of2.pack", tmp_path / "s-2of2.pack"
    assert split.clips == whole.clips and split.snr_db == pytest.approx(whole.snr_db)
    assert not (tmp_path / "s.pack").exists()
    headers = [read_pack(path)[0] for path in (first, second)]
    assert [header["part"] for header in headers] == [[1, 2], [2, 2]]
    assert [len(header["entries"]) for header in headers] == [5, 5]
    assert {e["source"] for e in headers[0]["entries"]} == {"doom", "robot"}  # an even sample, not the first half
    unpack_latents(tmp_path / "w.pack", tmp_path / "w", progress=False)
    assert unpack_latents([first, second], tmp_path / "s", progress=False) == len(SPECS)
    together, alone = _clips(LatentDataset(tmp_path / "s")), _clips(LatentDataset(tmp_path / "w"))
    assert together.keys() == alone.keys()
    assert all(torch.equal(together[name][1], alone[name][1]) for name in alone)  # one code for all parts
    assert unpack_latents([second], tmp_path / "half", progress=False) == 5
    with pytest.raises(DataError, match="is also in"):
        unpack_latents([first, first], tmp_path / "twice", progress=False)
    assert not (tmp_path / "twice").exists()  # refused before anything was written
    with pytest.raises(DataError, match="parts must be 1 to the number of clips"):
        pack_latents(latents, tmp_path / "x.pack", split=None, parts=11, progress=False)
