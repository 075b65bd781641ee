"""The row and the curve of an RL sweep point (``--job=rl``), from its fixed evaluation.

An RL point's own training draws (a few tasks per learner step) are too noisy to compare
points by, so its row reads ``POINT/eval.jsonl`` (``python -m glm5_jax.rl.evaluation``: every
kept snapshot scored on the same training and held-out tasks with the same seeds). Per
metric of ``jobs.RL_METRICS``: the value at the first evaluated snapshot (``start_``, the warm
start), at the last (``final_``) and the best (``best_``); beside them the run's learner
steps, wall-clock seconds, samples trained on and learner steps per second from
``POINT/metrics.jsonl``. RL workdirs are local directories.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from glm5_jax.rl.evaluation import read_results
from glm5_jax.sweep.rows import row_head

# metric -> (split of eval.jsonl, field of its records)
RL_METRIC_SOURCES = {
    "eval_reward": ("train", "reward"),
    "eval_pass_rate": ("train", "pass_rate"),
    "eval_held_out_reward": ("held_out", "reward"),
    "eval_held_out_pass_rate": ("held_out", "pass_rate"),
}


def _metrics(workdir: Path) -> list[dict[str, Any]]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def evaluation_curve(workdir: Path, metric: str) -> list[tuple[int, float]]:
    """(learner step, value) per evaluated snapshot, oldest first; a snapshot scored twice
    (e.g. with another ``--samples_per_task``) counts with its latest score."""
    split, field = RL_METRIC_SOURCES[metric]
    by_step = {r["step"]: r[field] for r in read_results(workdir) if r["split"] == split}
    return sorted(by_step.items())


def rl_point_row(name: str, overrides: dict, status: dict, workdir: Path) -> dict[str, Any]:
    records = _metrics(workdir)
    row = row_head(name, "rl", overrides, status, records)
    if records:
        last = records[-1]
        row["wall_time"] = last["wall_time"]
        row["samples"] = last.get("buffer/consumed")
        row["steps_per_second"] = last["step"] / last["wall_time"] if last["wall_time"] > 0 else None
    for metric in RL_METRIC_SOURCES:
        curve = evaluation_curve(workdir, metric)
        if curve:
            row[f"start_{metric}"] = curve[0][1]
            row[f"final_{metric}"] = curve[-1][1]
            row[f"best_{metric}"] = max(value for _, value in curve)
            row["evaluated_steps"] = [step for step, _ in curve]
    return row
