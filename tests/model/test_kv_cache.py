"""Streaming with the KV cache equals one uncached forward; the block-causal mask really blocks."""

import torch

from astra.model.action_experts import ActionInput
from astra.model.config import AstraConfig, HistoryBudget
from astra.model.transformer import AstraTransformer

# Budget large enough that the uncached path keeps every history frame at full resolution, like the cache.
CONFIG = AstraConfig.from_preset("astra-tiny").replace(
    history=HistoryBudget(keep_first=True, full=16, compressed_2x=0, compressed_4x=0), kv_cache_chunks=16
)
CHUNK = CONFIG.chunk_frames
NUM_HISTORY = 1 + 3 * CHUNK  # first frame + three chunks


def make_model(config=CONFIG):
    torch.manual_seed(0)
    model = AstraTransformer(config).eval()
    with torch.no_grad():  # move off the identity/zero init so actions and adapters matter
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def make_inputs(batch=2, frames=NUM_HISTORY + CHUNK):
    torch.manual_seed(1)
    latents = torch.randn(batch, CONFIG.in_channels, frames, 4, 6)
    values = torch.zeros(batch, frames, 8)
    values[0, :, :7] = torch.randn(frames, 7)
    values[1, :, :8] = torch.randn(frames, 8)
    actions = ActionInput(values, ("camera7", "keyboard_mouse"))
    text = torch.randn(batch, 5, CONFIG.text_dim)
    return latents, actions, text


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def uncached(model, latents, actions, text, target_t):
    return model(
        latents[:, :, NUM_HISTORY:], target_t, history_latents=latents[:, :, :NUM_HISTORY], actions=actions, text=text
    ).velocity


def cached(model, latents, actions, text, target_t, cache):
    """The target chunk's velocity with the history read from `cache` instead of recomputed."""
    return model(
        latents[:, :, NUM_HISTORY:],
        target_t,
        actions=actions.frames(NUM_HISTORY, NUM_HISTORY + CHUNK),
        text=text,
        kv_cache=cache,
    ).velocity


def extend_by_chunk(model, cache, latents, actions, start):
    """Append the chunk of frames starting at `start` to `cache`."""
    model.extend_cache(cache, latents[:, :, start : start + CHUNK], actions=actions.frames(start, start + CHUNK))


def test_prefill_then_cached_target_equals_uncached():
    model = make_model()
    latents, actions, text = make_inputs()
    target_t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        expected = uncached(model, latents, actions, text, target_t)
        cache = model.prefill(latents[:, :, :NUM_HISTORY], actions=actions.frames(0, NUM_HISTORY), text=text)
        actual = cached(model, latents, actions, text, target_t, cache)
    assert relative_error(actual, expected) < 1e-5


def test_streaming_chunk_by_chunk_equals_uncached():
    model = make_model()
    latents, actions, text = make_inputs()
    target_t = torch.tensor([0.5, 0.5])
    with torch.no_grad():
        expected = uncached(model, latents, actions, text, target_t)
        cache = model.prefill(latents[:, :, : 1 + CHUNK], actions=actions.frames(0, 1 + CHUNK), text=text)
        for start in range(1 + CHUNK, NUM_HISTORY, CHUNK):
            extend_by_chunk(model, cache, latents, actions, start)
        assert cache.num_frames == NUM_HISTORY
        actual = cached(model, latents, actions, text, target_t, cache)
    assert relative_error(actual, expected) < 1e-5


def test_noised_history_streams_like_uncached_noisy_memory():
    """Inference-time history noise: chunks cached with their flow times equal one forward with noisy memory."""
    model = make_model()
    latents, actions, text = make_inputs()
    target_t, level = torch.tensor([0.5, 0.5]), 0.3
    history_t = torch.full((2, NUM_HISTORY), level)
    with torch.no_grad():
        expected = model(
            latents[:, :, NUM_HISTORY:], target_t, history_latents=latents[:, :, :NUM_HISTORY],
            history_timesteps=history_t, actions=actions, text=text,
        ).velocity
        clean = uncached(model, latents, actions, text, target_t)
        cache = model.prefill(
            latents[:, :, : 1 + CHUNK], history_t[:, : 1 + CHUNK], actions=actions.frames(0, 1 + CHUNK), text=text
        )
        for start in range(1 + CHUNK, NUM_HISTORY, CHUNK):
            chunk_t = history_t[:, start : start + CHUNK]
            model.extend_cache(cache, latents[:, :, start : start + CHUNK], actions.frames(start, start + CHUNK), chunk_t)
        actual = cached(model, latents, actions, text, target_t, cache)
    assert relative_error(actual, expected) < 1e-5
    assert relative_error(clean, expected) > 1e-3, "the history's flow time must reach the model"


def test_block_causal_mask_blocks_later_chunks():
    """Changing the newest history chunk leaves earlier history frames' keys (all layers) unchanged."""
    model = make_model()
    latents, actions, text = make_inputs()
    history = latents[:, :, :NUM_HISTORY]
    changed = history.clone()
    changed[:, :, -CHUNK:] += 1.0
    with torch.no_grad():
        before = model.prefill(history, actions=actions.frames(0, NUM_HISTORY), text=text)
        after = model.prefill(changed, actions=actions.frames(0, NUM_HISTORY), text=text)
    earlier = (NUM_HISTORY - CHUNK) * before.tokens_per_frame
    for k_before, k_after in zip(before.keys, after.keys):
        assert torch.equal(k_before[:, :, :earlier], k_after[:, :, :earlier])
        assert not torch.allclose(k_before[:, :, earlier:], k_after[:, :, earlier:])


def test_uncached_history_tokens_ignore_the_target_only_under_block_causal_attention():
    """Earlier tokens' hidden states (last block) do not see a change of the target; with the
    bidirectional control they do, so the check can fail."""
    latents, _, text = make_inputs()
    history, target = latents[:, :, :NUM_HISTORY], latents[:, :, NUM_HISTORY:]
    for attention, history_sees_target in (("block_causal", False), ("bidirectional", True)):
        model = make_model(CONFIG.replace(attention=attention))
        captured = []
        hook = model.blocks[-1].register_forward_hook(lambda module, args, output: captured.append(output[0]))
        with torch.no_grad():
            model(target, torch.ones(2), history_latents=history, text=text)
            model(target + 1.0, torch.ones(2), history_latents=history, text=text)
        hook.remove()
        num_history_tokens = NUM_HISTORY * 2 * 3  # 4x6 latents -> 2x3 tokens per frame
        same = torch.equal(captured[0][:, :num_history_tokens], captured[1][:, :num_history_tokens])
        assert same != history_sees_target


def test_rolling_window_keeps_first_frame_and_bounds_memory():
    config = CONFIG.replace(kv_cache_chunks=2)
    model = make_model(config)
    latents, actions, text = make_inputs(frames=1 + 6 * CHUNK)
    with torch.no_grad():
        cache = model.prefill(latents[:, :, :1], text=text)
        sizes = []
        for start in range(1, latents.shape[2], CHUNK):
            extend_by_chunk(model, cache, latents, actions, start)
            sizes.append(cache.nbytes())
        assert cache.num_frames == 1 + 2 * CHUNK
        assert cache.frame_chunks[0] == 0 and cache.frame_chunks[1:] == [5] * CHUNK + [6] * CHUNK
        assert sizes[-1] == sizes[-2] == sizes[1]
        out = model(latents[:, :, -CHUNK:], torch.full((2,), 0.5), text=text, kv_cache=cache).velocity
    assert torch.isfinite(out).all()
