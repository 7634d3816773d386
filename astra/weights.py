"""Where named weights live: `<repo>/weights`, or the folder in $ASTRA_WEIGHTS. One resolver for every loader."""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTS_ENV = "ASTRA_WEIGHTS"


def weights_root() -> Path:
    return Path(os.environ.get(WEIGHTS_ENV, Path(__file__).resolve().parents[1] / "weights"))


def resolve_weights(name_or_path: str | Path) -> Path | None:
    """An existing path as given, else the named folder under weights_root(), else None."""
    path = Path(name_or_path)
    if path.exists():
        return path
    named = weights_root() / path
    return named if named.exists() else None
