"""Metrics sinks: a CSV file (one row per logged step, columns fixed by the first row plus any new
keys appended on resume) and TensorBoard events. Only rank 0 writes."""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

log = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, out_dir: str | Path, tensorboard: bool = True, resume_step: int = 0) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.out_dir / "metrics.csv"
        self.columns: list[str] | None = None
        self.rows: list[dict[str, float]] = []
        if self.csv_path.exists():
            # Resume: keep rows up to the resumed step, so that the file shows one consistent history.
            with open(self.csv_path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if r.get("step") and int(float(r["step"])) <= resume_step]
                self.columns = list(self.rows[0].keys()) if self.rows else None
            self._rewrite()
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
            except Exception as exc:  # noqa: BLE001 - tensorboard is optional
                log.warning("TensorBoard disabled: %s", exc)

    def _rewrite(self) -> None:
        with open(self.csv_path, "w", newline="") as f:
            if self.columns:
                writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(self.rows)

    def log(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in values.items()}}
        if self.columns is None or any(k not in self.columns for k in row):
            self.columns = list(dict.fromkeys((self.columns or []) + list(row)))
            self.rows.append(row)
            self._rewrite()
        else:
            self.rows.append(row)
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        if self.writer is not None:
            for key, value in values.items():
                if math.isfinite(float(value)):
                    self.writer.add_scalar(key, float(value), step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


__all__ = ["MetricsLogger"]
