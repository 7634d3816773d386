"""CPU timings of AstraTransformer ("astra-small"): one training step, one cached forward, one extend_cache.

    python benchmarks/bench_model.py [--threads 2] [--repeats 7]

(a) training step: batch 8, 4 history latent frames + 1 target, actions, forward + backward;
(b) streaming: one target-only forward of 1 latent frame with the KV cache (9 cached frames), batch 2
    (action-free guidance batches the conditional and null passes);
(c) extend_cache with 1 finished latent frame, batch 2.
Prints the median (and min) milliseconds of each, and the streaming rate it implies: per chunk of one latent frame
(= 4 video frames), `euler_steps` cached forwards + one extend_cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Callable

import torch

from astra.model.action_experts import ActionInput
from astra.model.config import AstraConfig
from astra.model.transformer import AstraTransformer

PRESET = "astra-small"
TRAIN_BATCH = 8
TRAIN_HISTORY = 4
STREAM_BATCH = 2  # conditional + null pass of action-free guidance
CACHED_FRAMES = 9
EULER_STEPS = 4
VIDEO_FRAMES_PER_LATENT = 4
MODALITY = "camera7"


def make_actions(batch: int, frames: int) -> ActionInput:
    values = torch.zeros(batch, frames, 8)
    values[..., :7] = torch.randn(batch, frames, 7)
    return ActionInput(values, (MODALITY,) * batch)


def time_call(fn: Callable[[], None], repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(median, min) wall-clock milliseconds of `fn` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", choices=("train", "cached", "extend"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = AstraConfig.from_preset(PRESET)
    model = AstraTransformer(config)
    height, width = (8 * p for p in config.patch_size[1:])  # 16x16 latents at patch 2 -> 64 tokens per frame
    channels = config.in_channels
    results = {}

    if args.only in (None, "train"):
        history = torch.randn(TRAIN_BATCH, channels, TRAIN_HISTORY, height, width)
        target = torch.randn(TRAIN_BATCH, channels, 1, height, width)
        timesteps = torch.rand(TRAIN_BATCH, 1)
        actions = make_actions(TRAIN_BATCH, TRAIN_HISTORY + 1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()

        def train_step() -> None:
            out = model(target, timesteps, history_latents=history, actions=actions)
            loss = out.velocity.square().mean() + 0.01 * out.aux_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        results["train step (B=8, 4+1 frames, fwd+bwd+AdamW)"] = time_call(train_step, args.repeats)

    model.eval()
    history = torch.randn(STREAM_BATCH, channels, CACHED_FRAMES, height, width)
    chunk = torch.randn(STREAM_BATCH, channels, 1, height, width)
    with torch.no_grad():
        cache = model.prefill(history, actions=make_actions(STREAM_BATCH, CACHED_FRAMES))
    chunk_actions = make_actions(STREAM_BATCH, 1)

    if args.only in (None, "cached"):

        def cached_forward() -> None:
            with torch.no_grad():
                model(chunk, torch.full((STREAM_BATCH, 1), 0.5), actions=chunk_actions, kv_cache=cache)

        results["cached forward (B=2, 1 frame, 9 cached)"] = time_call(cached_forward, args.repeats * 3)

    if args.only in (None, "extend"):

        def extend() -> None:
            # extend_cache mutates the cache: time it on a fresh shallow copy so every run sees 9 cached frames
            fresh = dataclasses.replace(
                cache, keys=list(cache.keys), values=list(cache.values), frame_chunks=list(cache.frame_chunks)
            )
            model.extend_cache(fresh, chunk, actions=chunk_actions)

        results["extend_cache (B=2, 1 frame, 9 cached)"] = time_call(extend, args.repeats * 3)

    for name, (median, best) in results.items():
        print(f"{name:50s} median {median:8.1f} ms   min {best:8.1f} ms")
    if args.only is None:
        cached_ms = results["cached forward (B=2, 1 frame, 9 cached)"][0]
        extend_ms = results["extend_cache (B=2, 1 frame, 9 cached)"][0]
        chunk_ms = EULER_STEPS * cached_ms + extend_ms
        frames_per_s = 1000 * VIDEO_FRAMES_PER_LATENT / chunk_ms
        print(f"streaming: {chunk_ms:.1f} ms per chunk -> {frames_per_s:.1f} video frames/s")


if __name__ == "__main__":
    main()
