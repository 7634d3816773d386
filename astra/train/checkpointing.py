"""Training checkpoints: atomic, resumable, strict.

One file per save, `<out>/checkpoints/step-00001234.pt` (written to a temp name in the same folder, then
`os.replace`d), holding the trainable weights, the model state taken from the data rather than trained ("derived":
the action statistics, the fitted motion prior), the fp32 EMA, optimizer, LR scheduler, step, RNG states (python,
numpy, torch, cuda) and the TrainConfig. Only plain containers and tensors are stored, so loading uses
`torch.load(weights_only=True)`. The data position is the step (see astra/train/batches.py).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from astra.errors import CheckpointError
from astra.files import atomic_path

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINT_DIR / f"step-{step:08d}.pt"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temp files of an interrupted save are ignored)."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def save_checkpoint(out_dir: str | Path, step: int, state: dict[str, Any], keep: int = 0) -> Path:
    """Atomically write `state` for `step`; keep only the newest `keep` checkpoints (0 = keep all)."""
    path = checkpoint_path(out_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
    if keep > 0:
        for old in list_checkpoints(out_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The checkpoint's state; with `mmap` its tensors stay in the file until read (a look at a few of them)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises many types for truncated / corrupt pickles
        raise CheckpointError(f"{path}: cannot read training checkpoint ({type(error).__name__}: {error})") from None
    missing = [k for k in ("step", "model", "optimizer", "scheduler", "rng", "config") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint, missing entries: {', '.join(missing)}")
    return state


def derived_state(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The checkpoint's data-derived state, copied out of the memory-mapped file without reading the rest; None for
    a checkpoint saved before it was."""
    derived = load_checkpoint(path, mmap=True).get("derived")
    return None if derived is None else {name: tensor.clone() for name, tensor in derived.items()}


def check_trainable_keys(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Raise CheckpointError naming missing / unexpected / mis-shaped keys unless `weights` covers exactly the
    trainable parameters of `model` (frozen weights come from initialisation, not from the checkpoint)."""
    params = {name.removeprefix("module."): p for name, p in model.named_parameters()}
    trainable = {name: tuple(p.shape) for name, p in params.items() if p.requires_grad}
    check_keys(trainable, weights, where, "trainable weights")


def check_keys(expected: dict[str, tuple[int, ...]], weights: dict[str, torch.Tensor], where: str, what: str) -> None:
    """Raise CheckpointError naming missing / unexpected / mis-shaped keys unless `weights` has exactly the names and
    shapes of `expected` (name -> shape)."""
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mis_shaped = sorted(
        f"{name} {tuple(weights[name].shape)} vs model {expected[name]}"
        for name in set(weights) & set(expected)
        if tuple(weights[name].shape) != expected[name]
    )
    if missing or unexpected or mis_shaped:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:20])}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mis_shaped))
            if keys
        ]
        raise CheckpointError(f"{where}: {what} do not match the model; " + "; ".join(parts))


def capture_rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, keys, *rest = state["numpy"]
    np.random.set_state((version, np.asarray(keys, dtype=np.uint32), *rest))
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
