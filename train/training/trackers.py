"""Metric trackers: the CSV logger and its accelerate tracker wrapper."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker

from x2ctclip.fileio import open_atomic

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------- logging
class CSVLogger:
    """Appends ``step``-indexed rows to a CSV file; the header grows (file rewritten) when new keys appear.

    ``truncate(step)`` drops rows after ``step`` (on resume, so that the file matches an uninterrupted run).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        if not self.path.is_file():
            return [], []
        with self.path.open(newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def _write(self, header: list[str], rows: list[dict[str, Any]]) -> None:
        with open_atomic(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)

    def truncate(self, step: int) -> None:
        header, rows = self._read()
        if header:
            self._write(header, [r for r in rows if int(float(r["step"])) <= step])

    def log(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **values}
        header, _ = self._read() if self.path.is_file() else ([], [])
        if not header or set(row) - set(header):
            old_header, rows = self._read()
            header = ["step"] + sorted((set(old_header) | set(row)) - {"step"})
            self._write(header, rows + [row])
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=header).writerow(row)


def csv_tracker(output_dir: Path):
    """An Accelerate tracker (``GeneralTracker``) writing ``train_log.csv`` and ``eval_log.csv`` (one
    :class:`CSVLogger` per key prefix ``train/`` and ``eval/``); Accelerate ships no CSV tracker. ``start_step``,
    set before ``init_trackers``, truncates rows written after it (on resume)."""
    class CSVTracker(GeneralTracker):
        name = "csv"
        requires_logging_directory = False

        def __init__(self):
            super().__init__()
            self.loggers = {prefix: CSVLogger(output_dir / f"{prefix}_log.csv") for prefix in ("train", "eval")}
            self.start_step = 0

        @property
        def tracker(self):
            return self.loggers

        def start(self):
            for csv_logger in self.loggers.values():
                csv_logger.truncate(self.start_step)

        def log(self, values: dict, step: int | None = None, **kwargs):
            for prefix, csv_logger in self.loggers.items():
                selected = {k.split("/", 1)[1]: v for k, v in values.items() if k.startswith(prefix + "/")}
                if selected:
                    csv_logger.log(step, selected)

    return CSVTracker()
