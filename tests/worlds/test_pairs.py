import numpy as np

from astra.data.format import read_episode
from astra.worlds.base import make_world
from astra.worlds.pairs import PairRecordConfig, pair_name, record_pair, record_pairs


def test_a_pair_shares_every_frame_but_the_last_chunk_which_mirrored_controls_change():
    world = make_world("camera", size=32)
    try:
        true, other = record_pair(world, seed=4, history_latents=3)
    finally:
        world.close()
    assert true.num_frames == other.num_frames == 13
    np.testing.assert_array_equal(true.frames[:9], other.frames[:9])
    assert all(not np.array_equal(a, b) for a, b in zip(true.frames[9:], other.frames[9:]))
    np.testing.assert_array_equal(true.controls[:8], other.controls[:8])
    np.testing.assert_allclose(other.actions[8:12, :3], -true.actions[8:12, :3], atol=1e-4)  # the camera moves back
    assert true.meta["pair"] == {"seed": 4, "branch": "a", "history_latents": 3}
    assert other.meta["pair"]["branch"] == "b"


def test_recording_pairs_writes_both_members_and_resumes(tmp_path):
    config = PairRecordConfig("camera", tmp_path, pairs=2, size=32, seed=10)
    assert record_pairs(config) == 2
    names = sorted(path.name for path in tmp_path.iterdir())
    assert len(names) == 4 and names[0] == pair_name("camera", 10, "a")
    first = read_episode(tmp_path / names[0])
    stamp = (tmp_path / names[0] / "meta.json").stat().st_mtime_ns
    assert record_pairs(config) == 2  # complete pairs are kept, not recorded again
    assert (tmp_path / names[0] / "meta.json").stat().st_mtime_ns == stamp
    assert first.split == "train" and first.num_frames == 1 + 4 * first.meta["pair"]["history_latents"]
