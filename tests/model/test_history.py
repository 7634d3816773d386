"""FramePack-style history packing: which frames at which scale, chunk ids, positions, no padding tokens."""

import torch

from astra.model.config import AstraConfig, HistoryBudget
from astra.model.history import FrameGroup, HistoryEmbedders, history_chunk_ids, pack_frames, plan_history
from astra.model.transformer import AstraTransformer

CONFIG = AstraConfig.from_preset("astra-tiny")


def test_plan_keeps_first_and_newest_frames_and_drops_the_oldest():
    groups = plan_history(12, HistoryBudget(keep_first=True, full=2, compressed_2x=3, compressed_4x=4))
    assert [(g.frames, g.scale) for g in groups] == [
        ((0,), 1),
        ((3, 4, 5, 6), 4),
        ((7, 8, 9), 2),
        ((10, 11), 1),
    ]  # frames 1, 2 dropped
    assert plan_history(2, HistoryBudget(full=4)) == [FrameGroup((0,), 1), FrameGroup((1,), 1)]
    assert plan_history(0, HistoryBudget()) == []


def test_chunk_ids_group_from_the_newest_frame():
    assert history_chunk_ids(6, 2) == [0, 1, 2, 2, 3, 3]
    assert history_chunk_ids(1, 2) == [0]
    assert history_chunk_ids(4, 1, first_chunk=5) == [5, 6, 7, 8]


def test_compressed_tokens_sit_at_the_centre_of_the_real_frames_and_pixels():
    torch.manual_seed(0)
    embedders = HistoryEmbedders(CONFIG)
    latents = torch.randn(1, CONFIG.in_channels, 3, 6, 8)  # H=6 is not a multiple of the 2x kernel (4)
    sequence = pack_frames(
        latents,
        [FrameGroup((0, 1, 2), 2)],
        {(2, False): embedders.proj_2x},
        CONFIG.patch_size,
        frame_rank={0: 0.0, 1: 1.0, 2: 2.0},
        frame_chunk=[1, 1, 2],
    )
    # 3 frames -> 2 time slots (the older one padded by replicating frame 0), 6x8 -> 2x2 tokens per slot
    assert sequence.tokens.shape == (1, 8, CONFIG.dim)
    assert torch.equal(sequence.slot_frames, torch.tensor([[1.0, 0, 0], [0, 0.5, 0.5]], dtype=torch.float64))
    assert sequence.positions[:4, 0].tolist() == [0.0] * 4 and sequence.positions[4:, 0].tolist() == [1.5] * 4
    # rows cover latent rows 0-3 (token rows 0,1 -> centre 0.5) and 4-5 (token row 2 only -> centre 2.0)
    assert sequence.positions[:4, 1].tolist() == [0.5, 0.5, 2.0, 2.0]
    assert sequence.positions[:4, 2].tolist() == [0.5, 2.5, 0.5, 2.5]
    assert sequence.chunk_ids.tolist() == [1] * 4 + [2] * 4
    assert sequence.num_target_tokens == 0


def test_uncached_forward_uses_the_packed_history_and_no_padding_tokens():
    torch.manual_seed(0)
    model = AstraTransformer(CONFIG).eval()
    lengths = []
    hook = model.blocks[0].register_forward_hook(lambda module, args, output: lengths.append(output[0].shape[1]))
    target = torch.randn(1, CONFIG.in_channels, 2, 8, 8)
    history = torch.randn(1, CONFIG.in_channels, 12, 8, 8)
    with torch.no_grad():
        out = model(target, torch.full((1,), 0.5), history_latents=history).velocity
        older_changed = history.clone()
        older_changed[:, :, 1:4] += 5.0  # tiny budget: full=1, 2x=2, 4x=4 -> frames 1..3 are dropped
        same = model(target, torch.full((1,), 0.5), history_latents=older_changed).velocity
        newer_changed = history.clone()
        newer_changed[:, :, 5] += 5.0  # inside the 4x group
        different = model(target, torch.full((1,), 0.5), history_latents=newer_changed).velocity
    hook.remove()
    # tokens: first frame 16 + 4x (4 frames -> 1 slot of 1x1) + 2x (2 frames -> 1 slot of 2x2) + 1x 16 + target 32
    assert lengths[0] == 16 + 1 + 4 + 16 + 32
    assert out.shape == target.shape
    assert torch.equal(out, same)
    assert not torch.allclose(out, different)
