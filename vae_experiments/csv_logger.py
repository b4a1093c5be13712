"""The run folder's ``csv/metrics.csv``, continued (not restarted) when a run resumes in place."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from vae_experiments.atomic import write_text_atomically


class ContinuedCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``, except that an existing ``metrics.csv`` is continued instead of deleted.

    Which of its rows stay is decided when a fit starts (``callbacks.csv_rows.CSVRows``): the rows the checkpoint the
    fit resumes from had counted, none for a fresh fit. Rewrites of the file (a new column, a cut) are atomic, so a
    kill at any moment leaves at worst a partial last row, which the next cut drops.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuedWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuedWriter(log_dir=self.log_dir)
        return self._experiment


class ContinuedWriter(ExperimentWriter):
    """``rows``: the data rows in the file once the buffered ones are saved; ``keep_rows(n)`` keeps the first ``n``."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir=log_dir)
        header, rows = self._read()
        self.metrics_keys = header
        self.rows = len(rows)

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes an existing ``metrics.csv`` here; this writer keeps it."""

    def save(self) -> None:
        pending = len(self.metrics)
        super().save()
        self.rows += pending

    def keep_rows(self, n: int) -> None:
        """Cut the file back to its first ``n`` data rows (the columns they use); buffered rows are not touched."""
        header, rows = self._read()
        if len(rows) <= n and all(None not in row.values() for row in rows):
            self.rows = len(rows)
            return
        kept = rows[:n]
        used = {key for row in kept for key, value in row.items() if value not in ("", None)}
        self._write([key for key in header if key in used], kept)
        self.rows = len(kept)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        self._write(fieldnames, self._read()[1])

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return [], []
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), rows

    def _write(self, fieldnames: list[str], rows: list[dict[str, str]]) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fieldnames, extrasaction="ignore")  # a cut drops unused columns
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomically(Path(self.metrics_file_path), text.getvalue())
        self.metrics_keys = list(fieldnames)
