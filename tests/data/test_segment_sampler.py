import numpy as np
import pytest
import torch
import torch.nn.functional as F

from astra.data.encode import encode_episodes
from astra.data.format import Episode, write_episode
from astra.data.sampler import LatentDataset, Segment, SegmentSampler, collate


class PoolingVAE:
    """Stand-in VideoVAE: first frame alone, then 4x time and 8x space average pooling."""

    def encode(self, video):
        first = F.avg_pool3d(video[:, :, :1], (1, 8, 8))
        return torch.cat([first, F.avg_pool3d(video[:, :, 1:], (4, 8, 8))], dim=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampler")
    rng = np.random.default_rng(0)
    specs = [("doom", "keyboard_mouse", 8, "train", 21)] * 3 + [("robot", "robot7", 7, "train", 13)] * 2
    specs += [("doom", "keyboard_mouse", 8, "heldout", 21)]
    for i, (world, modality, width, split, frames) in enumerate(specs):
        episode = Episode(
            frames=rng.integers(0, 256, (frames, 16, 16, 3), dtype=np.uint8),
            actions=rng.integers(0, 2, (frames, width)).astype(np.float32),
            modality=modality, fps=10.0, split=split, meta={"world": world},
        )
        write_episode(root / "episodes", f"ep{i}", episode)
    encode_episodes(root / "episodes", PoolingVAE(), root / "latents", vae_name="pool")
    return LatentDataset(root / "latents")


def test_segments_are_prefixes_of_clips(dataset):
    sampler = SegmentSampler(dataset, history_range=(1, 3), target_frames=2, seed=1)
    for _ in range(10):
        segment = sampler.sample()
        fh = segment.history_latents.shape[1]
        assert 1 <= fh <= 3 and segment.target_latents.shape[1] == 2
        assert segment.actions.shape[0] == fh + 2
        matches = [dataset.load(i) for i, e in enumerate(dataset.entries) if e["source"] == segment.source]
        assert any(torch.equal(l[:, :fh], segment.history_latents) and torch.equal(l[:, fh:fh + 2], segment.target_latents)
                   and torch.equal(a[: fh + 2], segment.actions) for l, a in matches)
    assert SegmentSampler(dataset, (1, 3), 2, seed=5).sample().history_latents.shape[1] == \
        SegmentSampler(dataset, (1, 3), 2, seed=5).sample().history_latents.shape[1]


def test_weights_split_and_batches(dataset):
    only_robot = SegmentSampler(dataset, (1, 1), 2, weights={"robot": 1.0}, seed=0)
    assert {only_robot.sample().source for _ in range(10)} == {"robot"}
    heldout = SegmentSampler(dataset, (1, 4), 1, split="heldout", seed=0)
    assert all(dataset.entries[i]["split"] == "heldout" for i in heldout.clips)
    mixed = SegmentSampler(dataset, (1, 2), 2, weights={"doom": 1.0, "robot": 3.0}, seed=0)
    sources = [mixed.sample().source for _ in range(400)]
    assert 0.65 < sources.count("robot") / 400 < 0.85
    batch = mixed.batch(6, np.random.default_rng(3))
    assert batch.history_latents.shape[0] == 6 and batch.actions.shape[-1] == 8
    for actions, modality in zip(batch.actions, batch.modality):
        if modality == "robot7":
            assert (actions[:, 7] == 0).all()
    again = mixed.batch(6, np.random.default_rng(3))
    assert torch.equal(batch.target_latents, again.target_latents) and batch.source == again.source


def test_errors(dataset):
    with pytest.raises(ValueError, match="no usable 'train' clips"):
        SegmentSampler(dataset, (1, 2), 2, weights={"drive": 1.0})
    with pytest.raises(Exception, match="no 'train' clip has 99"):
        SegmentSampler(dataset, (1, 2), 98)
    a = Segment(torch.zeros(3, 1, 2, 2), torch.zeros(3, 2, 2, 2), torch.zeros(3, 8), "keyboard_mouse", "doom")
    b = Segment(torch.zeros(3, 2, 2, 2), torch.zeros(3, 2, 2, 2), torch.zeros(4, 8), "keyboard_mouse", "doom")
    with pytest.raises(ValueError, match="one shape"):
        collate([a, b])


def test_index_entries_of_the_wrong_kind_are_named(dataset, tmp_path):
    import json
    import shutil

    from astra.errors import DataError

    for field, value in (("latent_frames", "three"), ("latent_frames", 0), ("shard", None), ("episode", 5)):
        root = tmp_path / f"{field}-{value}"
        shutil.copytree(dataset.root, root)
        index = json.loads((root / "index.json").read_text())
        index["entries"][1][field] = value
        (root / "index.json").write_text(json.dumps(index))
        with pytest.raises(DataError, match=rf"entries\[1\]: '{field}' must"):
            LatentDataset(root)
