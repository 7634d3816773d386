"""`astra bench`: how fast and how lean streaming generation is. Prints a table of measured numbers.

- sustained frames/s while playing, key-press-to-frame latency, per-chunk time with short vs long history,
  peak memory (CPU: resident set size; GPU: torch.cuda.max_memory_allocated);
- `--compare-recompute`: the authors' scheme (the whole history recomputed at every denoising step, no cache)
  timed in the same run, reported as a ratio.
Random weights are fine for timing (`--random`); the shipped model is the default.
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from astra.errors import AstraError, ConfigError
from astra.rollout.options import torch_device

HELP = "benchmark streaming generation speed and memory"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="astra-small", help="shipped name or checkpoint folder")
    parser.add_argument("--random", metavar="PRESET", help="time a randomly initialised model of this preset instead")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="denoising steps to time (default: the model's)")
    parser.add_argument(
        "--guidance", type=float, default=None,
        help="action-free guidance scale (default: the checkpoint's; the paper's 3 for --random); 1 runs one pass",
    )
    parser.add_argument("--chunks", type=int, default=24, help="chunks per timing run")
    parser.add_argument("--history", type=int, nargs=2, default=(4, 64), metavar=("SHORT", "LONG"), help="history lengths in chunks")
    parser.add_argument("--long-frames", type=int, default=0, help="also stream this many frames and report memory over time")
    parser.add_argument("--compare-recompute", action="store_true", help="also time the authors' full-recompute scheme")
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None,
        help="float32 (fp32) or bfloat16 (bf16) (default: bf16 on GPU, fp32 on CPU)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Row:
    name: str
    value: float
    unit: str
    note: str = ""


def random_vae(config):
    """The VAE architecture the preset's latents come from, randomly initialised (timing only)."""
    if config.vae == "wan2.1":
        from astra.vae.wan import WanVAE, build_autoencoder

        return WanVAE(build_autoencoder(None))
    from astra.vae.small import SMALL_VAE_PRESETS, SmallVAE

    return SmallVAE(SMALL_VAE_PRESETS[config.vae])


def build_session(args: argparse.Namespace, num_steps: int | None):
    from astra.rollout.session import RolloutConfig, RolloutSession, load_rollout

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.random:
        from astra.model.config import AstraConfig
        from astra.model.transformer import AstraTransformer

        try:
            config = AstraConfig.from_preset(args.random)
        except ConfigError as error:
            raise ConfigError(f"--random: {error}") from None
        with torch.device(device):
            model = AstraTransformer(config).to(dtype)
        vae = random_vae(config).to(device=device, dtype=dtype).eval()
        rollout = RolloutConfig(num_steps=4 if num_steps is None else num_steps)
        if args.guidance is not None:
            rollout = replace(rollout, guidance_scale=args.guidance)
    else:
        model, vae, _, rollout = load_rollout(args.checkpoint, steps=num_steps, guidance_scale=args.guidance, device=args.device)
        model = model.to(dtype)
    modality = "keyboard_mouse" if "keyboard_mouse" in model.config.modalities else model.config.modalities[0]
    return RolloutSession(model.to(device), vae, modality, rollout, device=device), device


def time_chunks(session, chunks: int, device: torch.device, desc: str) -> list[float]:
    rng = np.random.default_rng(0)
    times = []
    for _ in tqdm(range(chunks), desc=desc, leave=False, disable=not desc):
        rows = np.zeros((session.frames_per_step, session.width), np.float32)
        if session.modality == "keyboard_mouse":
            rows[:, rng.integers(0, 6)] = 1.0
        elif session.width == 7:
            rows[:, 6] = 1.0  # identity quaternion / open gripper
        _sync(device)
        begin = time.perf_counter()
        session.step(rows)
        _sync(device)
        times.append(time.perf_counter() - begin)
    return times


def check_arguments(args: argparse.Namespace) -> None:
    """Bad values fail here, before any model is built (--steps 0 was silently 4 steps, --chunks 0 a table of nan,
    --threads -2 a torch RuntimeError, an unknown --device a torch traceback)."""
    torch_device(args.device)
    if args.steps is not None and min(args.steps) < 1:
        raise AstraError(f"--steps must be >= 1, got {min(args.steps)}")
    if args.chunks < 1:
        raise AstraError(f"--chunks must be >= 1, got {args.chunks}")
    if args.threads is not None and args.threads < 1:
        raise AstraError(f"--threads must be >= 1, got {args.threads}")
    if min(args.history) < 0 or args.history[0] > args.history[1]:
        given = " ".join(map(str, args.history))
        raise AstraError(f"--history SHORT LONG must be 0 <= SHORT <= LONG chunks, got {given}")
    if args.long_frames < 0:
        raise AstraError(f"--long-frames must be >= 0, got {args.long_frames}")


def check_streaming(session, args: argparse.Namespace) -> None:
    """--compare-recompute and --long-frames measure against the KV cache, which a non-streaming model (bidirectional
    attention or a shared timestep) does not keep: it recomputes its history at every step already."""
    options = (("--compare-recompute", args.compare_recompute), ("--long-frames", args.long_frames))
    given = [name for name, value in options if value]
    if given and not session.streaming:
        config = session.model.config
        raise AstraError(
            f"{' and '.join(given)} need a streaming model (one with a KV cache); this one "
            f"(attention={config.attention!r}, per_frame_timesteps={config.per_frame_timesteps}) recomputes its "
            "history at every step"
        )


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows: list[Row] = []
    for num_steps in args.steps or [None]:
        session, device = build_session(args, num_steps)
        check_streaming(session, args)
        steps = session.config.num_steps
        height, width = session.resolution
        start = np.full((height, width, 3), 127, np.uint8)
        session.start(start)
        time_chunks(session, 2, device, "warm-up")
        short, long = args.history
        # Per-chunk time at a short and a long history (the cache window bounds the long one).
        session.start(start)
        time_chunks(session, short, device, f"fill {short}")
        short_times = time_chunks(session, args.chunks, device, f"history {short}")
        time_chunks(session, max(long - short - args.chunks, 0), device, f"fill {long}")
        long_times = time_chunks(session, args.chunks, device, f"history {long}")
        chunk_s = float(np.median(short_times))
        fps = session.frames_per_step / float(np.mean(short_times + long_times))
        label = f"{steps} steps, AFG {session.config.guidance_scale:g}"
        rows += [
            Row(f"sustained frames/s ({label})", fps, "frames/s", f"{session.frames_per_step} frames per chunk, {height}x{width}"),
            Row(f"per-chunk time, {short} chunks of history", 1000 * chunk_s, "ms"),
            Row(f"per-chunk time, {long} chunks of history", 1000 * float(np.median(long_times)), "ms"),
            Row("long/short history ratio", float(np.median(long_times)) / chunk_s, "x", "goal <= 1.25"),
            # A key pressed at a uniformly random moment waits for the chunk in flight (half a chunk on average),
            # then its own chunk is generated and its first frame shown.
            Row("key-press-to-frame latency (mean)", 1000 * 1.5 * chunk_s, "ms", "0.5 chunk in flight + 1 chunk"),
            Row("key-press-to-frame latency (worst)", 1000 * 2.0 * chunk_s, "ms"),
        ]
        if args.compare_recompute:
            rows.append(time_recompute(session, device, short_times, args))
        if args.long_frames:
            rows += long_rollout_memory(session, device, args.long_frames, start)
        rows.append(Row("peak memory", peak_memory_mb(device), "MiB", "GPU allocated" if device.type == "cuda" else "process RSS"))
    print_table(rows, args)
    return 0


def time_recompute(session, device: torch.device, cached_times: list[float], args: argparse.Namespace) -> Row:
    """The authors' scheme: no cache; every denoising step runs history + target through the model."""
    from astra.diffusion.sampler import sample_chunk

    model = session.model
    cache_frames = session.cache.num_frames
    history = torch.randn(1, model.config.in_channels, cache_frames, *session.newest_latent.shape[3:], device=device,
                          dtype=session.newest_latent.dtype)
    actions = session._actions(np.zeros((cache_frames + session.chunk_frames, session.width), np.float32))
    actions.values, actions.modality = actions.values[:1], actions.modality[:1]
    noise = torch.randn(1, model.config.in_channels, session.chunk_frames, *history.shape[3:], device=device, dtype=history.dtype)
    times = []
    for _ in range(max(3, args.chunks // 4)):
        _sync(device)
        begin = time.perf_counter()
        with torch.no_grad():
            sample_chunk(model, noise, history_latents=history, actions=actions, config=session.config.sampler())
        _sync(device)
        times.append(time.perf_counter() - begin)
    ratio = float(np.median(times)) / float(np.median(cached_times))
    return Row("authors' full recompute / ours (per chunk)", ratio, "x", f"same history ({cache_frames} latent frames)")


def long_rollout_memory(session, device: torch.device, frames: int, start: np.ndarray) -> list[Row]:
    session.start(start)
    chunks = max(1, frames // session.frames_per_step)
    samples = []
    for index in tqdm(range(chunks), desc="long rollout"):
        time_chunks(session, 1, device, "")
        if index % max(1, chunks // 20) == 0 or index == chunks - 1:
            samples.append((index, current_memory_mb(device), session.cache.nbytes() / 2**20))
    first, last = samples[min(1, len(samples) - 1)], samples[-1]
    return [
        Row(f"memory after {first[0] + 1} chunks", first[1], "MiB", f"KV cache {first[2]:.2f} MiB"),
        Row(f"memory after {chunks} chunks ({chunks * session.frames_per_step} frames)", last[1], "MiB", f"KV cache {last[2]:.2f} MiB"),
    ]


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    threads = torch.get_num_threads()
    print(f"\nastra bench  (model: {args.random or args.checkpoint}, device: {args.device}, torch threads: {threads})")
    width = max(len(r.name) for r in rows)
    print(f"{'metric':<{width}}  {'value':>10}  unit      note")
    print("-" * (width + 40))
    for r in rows:
        print(f"{r.name:<{width}}  {r.value:>10.2f}  {r.unit:<8}  {r.note}")
