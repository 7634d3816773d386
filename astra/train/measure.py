"""Measure a training configuration: samples/s and memory of one step, with and without gradient checkpointing.

Memory on CPU: each measurement runs in a fresh process; peak RSS during the steps (ru_maxrss) minus the RSS
before them, plus the bytes autograd saves for backward during the forward (a saved-tensors hook: with
checkpointing, tensors saved inside a checkpointed block are not kept). On CUDA: torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import multiprocessing
import resource
import tempfile
import time
from typing import Any

import torch

from astra.train.config import TrainConfig

MEASURED_STEPS = 3


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * resource.getpagesize()


def _saved_activation_bytes(trainer: Any) -> int:
    """Bytes autograd stores for backward during one forward of the trainer's next batch."""
    from astra.train.batches import step_generator
    from astra.train.trainer import NOISE_STREAM, training_loss

    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch = trainer.batches.batch(trainer.step, 0).to(trainer.info.device)
    generator = step_generator(trainer.config.seed, 0, trainer.step, NOISE_STREAM)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = training_loss(trainer.model, batch, trainer.config, generator)
    out.loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return sum(saved.values())


def _measure_in_this_process(config: TrainConfig, queue: Any) -> None:
    from astra.train.trainer import Trainer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = Trainer(config, out_dir, progress=False)
        trainer.train_step()  # warm-up: allocates the optimizer state
        activations = _saved_activation_bytes(trainer)
        cuda = trainer.info.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rss_before = _current_rss_bytes()
        start = time.perf_counter()
        for _ in range(MEASURED_STEPS):
            trainer.train_step()
        seconds = (time.perf_counter() - start) / MEASURED_STEPS
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        queue.put(
            {
                "grad_checkpointing": config.grad_checkpointing,
                "seconds_per_step": seconds,
                "samples_per_s": config.batch_size / seconds,
                "step_peak_mb": (torch.cuda.max_memory_allocated() if cuda else peak_kib * 1024 - rss_before) / 2**20,
                "saved_activations_mb": activations / 2**20,
            }
        )


def measure(config: TrainConfig) -> list[dict[str, float]]:
    """One row per setting of grad_checkpointing (off, on), each measured in a fresh process."""
    context = multiprocessing.get_context("spawn")
    rows = []
    for checkpointing in (False, True):
        queue = context.Queue()
        process = context.Process(
            target=_measure_in_this_process,
            args=(config.replace(grad_checkpointing=checkpointing, ema_decay=0.0), queue),
        )
        process.start()
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"measurement process failed (exit code {process.exitcode})")
        rows.append(queue.get())
    return rows
