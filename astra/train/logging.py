"""Training logs: a CSV file (one row per logged step) and TensorBoard scalars, written by rank 0 only."""

from __future__ import annotations

import csv
from pathlib import Path

CSV_NAME = "metrics.csv"


class TrainLogger:
    """Appends metric rows to `<out>/metrics.csv` and `<out>/tensorboard/`.

    On resume from step k, rows logged after k by the interrupted run are dropped first, so the CSV reads as
    one uninterrupted run. Columns are fixed by the first row written.
    """

    def __init__(self, out_dir: str | Path, resume_step: int = 0, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.csv_path = Path(out_dir) / CSV_NAME
        self.columns: list[str] | None = None
        self.writer = None
        if not enabled:
            return
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        if self.csv_path.exists():
            with self.csv_path.open(newline="") as file:
                rows = list(csv.DictReader(file))
            if rows:
                self.columns = list(rows[0].keys())
                kept = [row for row in rows if int(row["step"]) <= resume_step]
                with self.csv_path.open("w", newline="") as file:
                    writer = csv.DictWriter(file, fieldnames=self.columns)
                    writer.writeheader()
                    writer.writerows(kept)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_step + 1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **metrics}
        new_file = self.columns is None
        if new_file:
            self.columns = list(row.keys())
        with self.csv_path.open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.columns, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"train/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(out_dir: str | Path) -> list[dict[str, float]]:
    """The CSV rows as floats (for tests and quick plots)."""
    with (Path(out_dir) / CSV_NAME).open(newline="") as file:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]
