"""What a sweep point runs, chosen with ``--job`` and recorded in every point's status and row.

* ``train``: ``python -m glm5_jax.train --config=C --workdir=POINT <overrides>``; the table
  reads the losses of ``POINT/metrics.jsonl``.
* ``rl``: ``python -m glm5_jax.rl --config=C --workdir=POINT <overrides>``, then
  ``python -m glm5_jax.rl.evaluation --workdir=POINT`` on this host, so every point has its
  fixed-evaluation curve (``POINT/eval.jsonl``); the table reads that curve (reward and pass
  rate on the training tasks and on the held-out tasks), not the noisy training draws.

The first command of a point goes through the launcher; the ones after it run here once it
has succeeded. ``rl`` points therefore run on this host only (``--launcher=local``).
"""

from __future__ import annotations

import dataclasses
import sys

from glm5_jax.errors import UserError
from glm5_jax.sweep.grid import Point, override_flags

# Fixed-evaluation metrics of an RL point: reward or pass rate on the training tasks
# ("eval_*") or on the held-out tasks ("eval_held_out_*"), per evaluated snapshot.
RL_METRICS = ("eval_reward", "eval_pass_rate", "eval_held_out_reward", "eval_held_out_pass_rate")
TRAIN_METRICS = ("loss", "ce_loss", "mtp_loss", "indexer_kl", "indexer_recall")


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    entry: str  # the module that trains a point (through the launcher)
    after: tuple[str, ...]  # modules run here afterwards with --workdir=POINT only
    metrics: tuple[str, ...]  # what the table and the plot may show
    default_metric: str


JOBS = {
    "train": Job("train", "glm5_jax.train", (), TRAIN_METRICS, "ce_loss"),
    "rl": Job("rl", "glm5_jax.rl", ("glm5_jax.rl.evaluation",), RL_METRICS, "eval_reward"),
}


def get_job(name: str) -> Job:
    if name not in JOBS:
        raise UserError(f"--job={name!r}; allowed: {list(JOBS)}")
    return JOBS[name]


def resolve_metric(job: Job, metric: str | None) -> str:
    """``--metric`` for ``job``: its default when not given, else one it records."""
    if metric is None:
        return job.default_metric
    if metric not in job.metrics:
        raise UserError(f"--metric={metric!r} for --job={job.name}; allowed: {list(job.metrics)}")
    return metric


def point_commands(job: Job, config_path: str, point_dir, point: Point, shared: list[str]) -> list[list[str]]:
    """The commands of one point, in order: the training command, then the ones after it."""
    train = [sys.executable, "-m", job.entry, f"--config={config_path}", f"--workdir={point_dir}",
             *shared, *override_flags(point)]
    return [train] + [[sys.executable, "-m", module, f"--workdir={point_dir}"] for module in job.after]
