"""Training logs: CSV files (one row per logged step) and TensorBoard scalars, written by rank 0 only."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

CSV_NAME = "metrics.csv"  # training metrics, every log_every steps
VALIDATION_CSV_NAME = "validation.csv"  # held-out validation, every val_every steps


class _CsvLog:
    """Rows appended to one CSV file. On resume from step k, rows an interrupted run logged after k are dropped
    first, so the file reads as one uninterrupted run. A row with a column the file lacks (a run resumed by newer
    code that logs more) widens the file: earlier rows keep their values and leave the new column empty."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        self.columns: list[str] | None = None
        if path.exists():
            with path.open(newline="") as file:
                rows = list(csv.DictReader(file))
            if rows:
                self.columns = list(rows[0].keys())
                self._rewrite([row for row in rows if int(row["step"]) <= resume_step])

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        """Replace the file with `rows` under the current columns, atomically (write, then rename)."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, self.path)

    def write(self, row: dict[str, float]) -> None:
        new_file = self.columns is None
        if new_file:
            self.columns = list(row.keys())
        added = [name for name in row if name not in self.columns]
        if added:
            with self.path.open(newline="") as file:
                rows = list(csv.DictReader(file))
            self.columns += added
            self._rewrite(rows)
        with self.path.open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.columns, restval="")
            if new_file:
                writer.writeheader()
            writer.writerow(row)


class TrainLogger:
    """Training rows go to `<out>/metrics.csv`, validation rows to `<out>/validation.csv`, both to
    `<out>/tensorboard/` (tags `train/...` and `val/...`)."""

    def __init__(self, out_dir: str | Path, resume_step: int = 0, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.logs = {
            "train": _CsvLog(Path(out_dir) / CSV_NAME, resume_step),
            "val": _CsvLog(Path(out_dir) / VALIDATION_CSV_NAME, resume_step),
        }
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_step + 1)

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        """`kind` "train" or "val"."""
        if not self.enabled:
            return
        self.logs[kind].write({"step": step, **metrics})
        if self.writer is not None:
            for name, value in metrics.items():
                tag = name.removeprefix("val_") if kind == "val" else name
                self.writer.add_scalar(f"{kind}/{tag}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(out_dir: str | Path, name: str = CSV_NAME) -> list[dict[str, float]]:
    """The rows of a log CSV (metrics.csv or validation.csv) as floats (for tests and quick plots); a column a row
    did not log (added by a later resume) reads as NaN."""
    with (Path(out_dir) / name).open(newline="") as file:
        return [
            {key: float(value) if value != "" else math.nan for key, value in row.items()}
            for row in csv.DictReader(file)
        ]
