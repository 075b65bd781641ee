"""Where metrics go: ``<workdir>/metrics.jsonl``, TensorBoard, and a terminal progress bar.

A record at step N summarises the window of steps since the previous record: losses, norms,
recall and load balance are window means (a single step's loss on varied code is too noisy
to read a trend from), ``learning_rate`` and the counters are the values at step N, and
``step_applied`` is the fraction of the window's steps that were applied.

On resume from step N, lines with step > N (written by a run that died after its last
checkpoint) leave metrics.jsonl and TensorBoard events after N are purged, so the files read as
one uninterrupted run. Nothing is deleted: the lines that leave metrics.jsonl are appended to
``metrics_superseded.jsonl``, and TensorBoard's purge only hides the older events (their files
stay). This happens only when the writer is created, which the loop does once a restore has
succeeded or a fresh start is decided (a refused restore raises before), so a run that is
refused keeps every line. Only process 0 writes.

The workdir may be ``gs://...``: every file goes through ``etils.epath`` (``glm5_jax/paths.py``:
on an object store a rewrite is one object write and an append rewrites the object; TensorBoard
events through ``tensorboard_files``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
from etils import epath

from glm5_jax.paths import append_text, as_path, write_text_atomic
from glm5_jax.train.tensorboard_files import summary_writer

METRICS_FILE = "metrics.jsonl"
SUPERSEDED_METRICS_FILE = "metrics_superseded.jsonl"
PROGRESS_FIELDS = (
    ("loss", "loss", "{:.3f}"),
    ("learning_rate", "lr", "{:.1e}"),
    ("tokens_per_second", "tok/s", "{:.0f}"),
    ("mfu", "mfu", "{:.2%}"),
    ("expert_load_max_over_mean", "load max/mean", "{:.2f}"),
    ("indexer_recall", "idx recall", "{:.2f}"),
)


LAST_VALUE_FIELDS = ("learning_rate", "skipped_steps")


def summarize_window(steps: list[dict[str, Any]]) -> dict[str, float]:
    """One record from the per-step metrics (host scalars) of a logging window."""
    summary = {}
    for key in steps[-1]:
        if key in LAST_VALUE_FIELDS:
            summary[key] = float(steps[-1][key])
        else:
            summary[key] = float(sum(float(step[key]) for step in steps) / len(steps))
    return summary


def truncate_metrics(path: epath.Path, last_step: int) -> None:
    """Keep only the lines of steps <= last_step in ``path``; the others (and a torn last line)
    are appended to ``metrics_superseded.jsonl`` beside it, never deleted. The rewrite is atomic
    (locally a new file renamed over the old; on an object store one object write), so a crash
    here loses nothing either."""
    if not path.exists():
        return
    kept, superseded = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and record.get("step", math.inf) <= last_step:
            kept.append(line)
        elif line.strip():
            superseded.append(line)
    if not superseded:
        return
    append_text(path.parent / SUPERSEDED_METRICS_FILE, "".join(line + "\n" for line in superseded),
                fsync=True)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    path = as_path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsWriter:
    def __init__(self, workdir: str | os.PathLike, start_step: int, total_steps: int,
                 progress_bar: bool = True):
        self.enabled = jax.process_index() == 0
        self._progress = None
        self._tensorboard = None
        if not self.enabled:
            return
        workdir = as_path(workdir)
        self.path = workdir / METRICS_FILE
        truncate_metrics(self.path, start_step)
        self._tensorboard = summary_writer(workdir / "tensorboard", purge_step=start_step + 1)
        if progress_bar:
            from tqdm import tqdm

            self._progress = tqdm(total=total_steps, initial=start_step, unit="step",
                                  dynamic_ncols=True)

    def write(self, step: int, metrics: dict[str, float | str]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **metrics}
        append_text(self.path, json.dumps(record) + "\n")
        for name, value in metrics.items():
            if isinstance(value, (int, float)):
                self._tensorboard.add_scalar(name, value, step)
        self._tensorboard.flush()
        if self._progress is not None:
            self._progress.set_postfix_str("  ".join(
                f"{label} {fmt.format(metrics[key])}" for key, label, fmt in PROGRESS_FIELDS
                if key in metrics and math.isfinite(metrics[key])), refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self._progress is not None:
            self._progress.update(steps)

    def log(self, message: str) -> None:
        """A line that does not break the progress bar."""
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
