"""A sweep's results: ``results.jsonl`` (one row per point), ``results.md`` (a table) and
``results.png`` (the main metric against steps, one line per point).

Each row: the point's name, job and overrides, its status (done, failed, preempted,
submitted, pending) and the error of a failed point. A ``train`` point adds the final and
best value of every logged loss and tokens/s (the median over the logged windows after the
first, which includes compilation); an ``rl`` point its fixed-evaluation rewards and pass
rates (``rl_results.py``). Rows are rebuilt from the points' own workdirs on every run, so
they never drift from what the points wrote. The sweep directory may be ``gs://...``
(written through ``etils.epath``).
"""

from __future__ import annotations

import io
import json
import statistics
from typing import Any

from etils import epath

from glm5_jax.sweep.jobs import TRAIN_METRICS
from glm5_jax.sweep.rows import row_head
from glm5_jax.train.metrics_writer import read_metrics

LOSS_KEYS = TRAIN_METRICS


def point_row(name: str, overrides: dict, status: dict, workdir: epath.Path,
              job: str = "train") -> dict[str, Any]:
    if job == "rl":
        from glm5_jax.sweep.rl_results import rl_point_row

        return rl_point_row(name, overrides, status, workdir)
    records = read_metrics(workdir)
    row = row_head(name, "train", overrides, status, records)
    for key in LOSS_KEYS:
        values = [r[key] for r in records if key in r]
        if values:
            row[f"final_{key}"] = values[-1]
            row[f"best_{key}"] = max(values) if key == "indexer_recall" else min(values)
    speeds = [r["tokens_per_second"] for r in records[1:] if "tokens_per_second" in r]
    if speeds:
        row["tokens_per_second"] = statistics.median(speeds)
    return row


def metric_curve(workdir: epath.Path, metric: str, job: str = "train") -> list[tuple[float, float]]:
    """(step, value) points of ``metric`` for one point: its training log, or for ``rl`` its
    fixed evaluation."""
    if job == "rl":
        from glm5_jax.sweep.rl_results import evaluation_curve

        return evaluation_curve(workdir, metric)
    return [(r["step"], r[metric]) for r in read_metrics(workdir) if metric in r]


def write_results(directory: epath.Path, rows: list[dict[str, Any]], metric: str,
                  job: str = "train") -> None:
    (directory / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "results.md").write_text(markdown_table(rows, metric, job))
    plot(directory / "results.png",
         {r["name"]: metric_curve(directory / "points" / r["name"], metric, job) for r in rows},
         metric, "step" if job == "train" else "learner step (evaluated snapshots)",
         markers=job == "rl")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]], metric: str, job: str = "train") -> str:
    keys = sorted({k for r in rows for k in r["overrides"]})
    if job == "rl":  # the fixed evaluation at the warm start, the end and its best
        measures = {"wall s": "wall_time", f"start {metric}": f"start_{metric}",
                    f"final {metric}": f"final_{metric}", f"best {metric}": f"best_{metric}",
                    "steps/s": "steps_per_second"}
    else:
        measures = {f"final {metric}": f"final_{metric}", f"best {metric}": f"best_{metric}",
                    "tokens/s": "tokens_per_second"}
    header = keys + ["status", "steps", *measures]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [_cell(r["overrides"].get(k)) for k in keys] + [
            r["status"] + (f" ({r['error'][:60]})" if r.get("error") else ""), _cell(r["steps"])] + [
            _cell(r.get(field)) for field in measures.values()]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(path: epath.Path, curves: dict[str, list[tuple[float, float]]], metric: str,
         x_label: str = "step", markers: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for name, points in curves.items():
        if points:
            axes.plot(*zip(*points), label=name, linewidth=1.5, marker="o" if markers else None,
                      markersize=3)
    axes.set_xlabel(x_label)
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    if any(axes.get_lines()):
        axes.legend(fontsize=7)
    figure.tight_layout()
    png = io.BytesIO()  # rendered here, written through epath (savefig opens only local files)
    figure.savefig(png, format="png", dpi=120)
    plt.close(figure)
    path.write_bytes(png.getvalue())
