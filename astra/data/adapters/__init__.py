"""Readers for the paper's five datasets: each turns the dataset's own on-disk layout into `Episode`s.

Every adapter module has `iter_episodes(source_dir, **options) -> Iterator[Episode]` (options: see its
docstring; all take `size=(height, width)`, `max_frames`, `heldout_fraction`, `report`, `skip_bad`,
`exclude`). `convert_dataset` writes them with `write_episode`, resumes by skipping episodes already written,
and saves a report of what it skipped and why. Layouts and conventions: docs/datasets.md.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from tqdm import tqdm

from astra.data.adapters.common import ConversionReport
from astra.data.format import write_episode
from astra.errors import DataError

ADAPTERS: dict[str, str] = {
    "nuscenes": "astra.data.adapters.nuscenes",
    "sekai": "astra.data.adapters.sekai",
    "spatialvid": "astra.data.adapters.spatialvid",
    "rt1": "astra.data.adapters.rt1",
    "multicam": "astra.data.adapters.multicam",
}
REPORT_FILE = "conversion_report.json"


def get_adapter(name: str):
    """The adapter module of dataset `name` (imported lazily: pyarrow etc. only when needed)."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(ADAPTERS)}")
    return importlib.import_module(ADAPTERS[name])


def convert_dataset(
    name: str,
    source_dir: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    skip_bad: bool = True,
    progress: bool = True,
    **options: Any,
) -> ConversionReport:
    """Convert dataset `name` at `source_dir` into episode folders under `out_dir`.

    Episodes already in `out_dir` are kept (resume) unless `overwrite`. Bad items are skipped and reported
    unless `skip_bad=False`. The report is returned and saved as `<out_dir>/conversion_report.json`.
    """
    adapter = get_adapter(name)
    max_frames, size = options.get("max_frames"), options.get("size")
    if max_frames is not None and max_frames < 1:  # a negative one cut frames off the end of every episode
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    if size is not None and min(size) < 1:
        raise ValueError(f"size must be a positive (height, width), got {tuple(size)}")
    if not 0.0 <= options.get("heldout_fraction", 0.0) <= 1.0:  # else every item was refused and skipped alone
        raise ValueError(f"heldout_fraction must be in [0, 1], got {options['heldout_fraction']}")
    if not Path(source_dir).is_dir():
        raise DataError(f"{source_dir}: no such folder (the {name} dataset in its published layout)")
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    done = set() if overwrite else {path.name for path in out_dir.iterdir() if (path / "meta.json").is_file()}
    report = ConversionReport(name)
    episodes = adapter.iter_episodes(source_dir, report=report, skip_bad=skip_bad, exclude=done, **options)
    for episode in tqdm(episodes, desc=f"convert {name}", unit="episode", disable=not progress):
        write_episode(out_dir, episode.meta["name"], episode, overwrite=True)  # complete ones were excluded
    if not (report.converted or report.skipped or done):
        if created:
            out_dir.rmdir()
        raise DataError(f"{source_dir}: no {name} items found; docs/datasets.md shows the layout it expects")
    report.save(out_dir / REPORT_FILE)
    print(report.summary() + (f" ({len(done)} already present)" if done else ""))
    return report
