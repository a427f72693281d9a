"""history.csv of a run: one row every ``log_every`` steps (losses, real samples/s, learning
rates, and the metrics of ``eval_every``). Only rank 0 writes it."""
from __future__ import annotations

import csv
import os

FIELDS = ("step", "d_loss", "g_loss", "samples_per_s", "lr_g", "lr_d")


class History:
    def __init__(self, path: str, *, writer: bool = True):
        self.path, self.writer = path, writer

    def reset(self) -> None:
        """A new file holding the header only."""
        if self.writer:
            with open(self.path, "w", newline="") as handle:
                csv.writer(handle).writerow(FIELDS)

    def append(self, row: dict) -> None:
        """One row: FIELDS in order, then any other entry as ``name=value``."""
        if not self.writer:
            return
        extra = [k for k in row if k not in FIELDS]
        with open(self.path, "a", newline="") as handle:
            csv.writer(handle).writerow([row[k] for k in FIELDS] + [f"{k}={row[k]}" for k in extra])

    def truncate(self, step: int) -> None:
        """Drop the rows logged after ``step`` (a resumed run logs them again)."""
        if not self.writer:
            return
        if not os.path.isfile(self.path):
            self.reset()
            return
        with open(self.path, newline="") as handle:
            rows = list(csv.reader(handle))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        with open(self.path, "w", newline="") as handle:
            csv.writer(handle).writerows(kept)
