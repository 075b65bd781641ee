"""A sweep's results: ``results.jsonl`` (one row per point), ``results.md`` (a table) and
``results.png`` (the main metric against steps, one line per point).

Each row: the point's name and overrides, its status (done, failed, preempted, submitted,
pending), the final and best value of every logged loss, tokens/s (the median over the
logged windows after the first, which includes compilation) and the error of a failed
point. Rows are rebuilt from the points' own workdirs on every run, so they never drift
from what the points wrote. The sweep directory may be ``gs://...`` (written through
``etils.epath``).
"""

from __future__ import annotations

import io
import json
import statistics
from typing import Any

from etils import epath

from glm5_jax.train.metrics_writer import read_metrics

LOSS_KEYS = ("loss", "ce_loss", "mtp_loss", "indexer_kl", "indexer_recall")


def point_row(name: str, overrides: dict, status: dict, workdir: epath.Path) -> dict[str, Any]:
    records = read_metrics(workdir)
    row: dict[str, Any] = {"name": name, "overrides": overrides, "status": status.get("status", "pending"),
                           "steps": records[-1]["step"] if records else 0}
    if status.get("error"):
        row["error"] = status["error"]
    for key in LOSS_KEYS:
        values = [r[key] for r in records if key in r]
        if values:
            row[f"final_{key}"] = values[-1]
            row[f"best_{key}"] = max(values) if key == "indexer_recall" else min(values)
    speeds = [r["tokens_per_second"] for r in records[1:] if "tokens_per_second" in r]
    if speeds:
        row["tokens_per_second"] = statistics.median(speeds)
    return row


def write_results(directory: epath.Path, rows: list[dict[str, Any]], metric: str) -> None:
    (directory / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "results.md").write_text(markdown_table(rows, metric))
    plot(directory / "results.png", {r["name"]: read_metrics(directory / "points" / r["name"])
                                      for r in rows}, metric)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]], metric: str) -> str:
    keys = sorted({k for r in rows for k in r["overrides"]})
    header = keys + ["status", "steps", f"final {metric}", f"best {metric}", "tokens/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [_cell(r["overrides"].get(k)) for k in keys] + [
            r["status"] + (f" ({r['error'][:60]})" if r.get("error") else ""), _cell(r["steps"]),
            _cell(r.get(f"final_{metric}")), _cell(r.get(f"best_{metric}")),
            _cell(r.get("tokens_per_second"))]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(path: epath.Path, curves: dict[str, list[dict[str, Any]]], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for name, records in curves.items():
        points = [(r["step"], r[metric]) for r in records if metric in r]
        if points:
            axes.plot(*zip(*points), label=name, linewidth=1.5)
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    if any(axes.get_lines()):
        axes.legend(fontsize=7)
    figure.tight_layout()
    png = io.BytesIO()  # rendered here, written through epath (savefig opens only local files)
    figure.savefig(png, format="png", dpi=120)
    plt.close(figure)
    path.write_bytes(png.getvalue())
