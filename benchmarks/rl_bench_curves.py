"""One RL run's curves for the async-vs-sync benchmark: its per-step log and its fixed
evaluation, and the few operations the analysis needs on them.

A run directory (a sweep point of ``python -m glm5_jax.sweep --job=rl``) holds
``metrics.jsonl`` (one record per learner step: ``wall_time``, ``buffer/consumed`` = samples
trained on, ``wait_s``, ``train_s``, ...), ``eval.jsonl`` (the fixed evaluation of the kept
snapshots, per split) and ``config.json``.

Time-to-target is read on a *monotone fit in samples*: the snapshots sit at the same sample
counts in both modes (every ``eval.every`` learner steps of ``groups_per_batch x group_size``
samples), so neither mode gets more chances to cross a target by noise; the fit (least-squares
non-decreasing, pool-adjacent-violators) removes the dips of a noisy curve without inventing a
rise, and the wall-clock time at the crossing comes from the run's dense per-step log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPLITS = ("train", "held_out")


def load_run(workdir: Path) -> dict[str, Any]:
    """{"metrics": per step, "train"/"held_out": evaluation per snapshot by step, "config"}."""
    workdir = Path(workdir)
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evaluations = [json.loads(line) for line in (workdir / "eval.jsonl").read_text().splitlines()
                   if line.strip()] if (workdir / "eval.jsonl").exists() else []
    run: dict[str, Any] = {"metrics": metrics, "workdir": str(workdir),
                           "config": json.loads((workdir / "config.json").read_text())}
    for split in SPLITS:
        by_step = {r["step"]: r for r in evaluations if r["split"] == split}  # latest score wins
        run[split] = [by_step[step] for step in sorted(by_step)]
    info = workdir / "run_info.json"
    run["run_info"] = json.loads(info.read_text()) if info.exists() else {}
    return run


def end_wall(run: dict[str, Any]) -> float:
    return run["metrics"][-1]["wall_time"]


def interpolate(xs: list[float], ys: list[float], x: float) -> float:
    """The piecewise-linear curve through (xs, ys) at x, clamped to its ends."""
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def first_crossing(xs: list[float], ys: list[float], target: float) -> float | None:
    """The first x where the piecewise-linear curve through (xs, ys) reaches ``target``."""
    if ys and ys[0] >= target:
        return xs[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y1 >= target:
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return None


def monotone_fit(ys: list[float]) -> list[float]:
    """The least-squares non-decreasing sequence closest to ``ys`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for y in ys:
        blocks.append([y, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, n1), (m2, n2) = blocks[-2], blocks.pop()
            blocks[-1] = [(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2]
    return [mean for mean, count in blocks for _ in range(int(count))]


def curve(run: dict[str, Any], split: str, x: str, y: str = "reward") -> tuple[list[float], list[float]]:
    """(x values, y values) of the evaluated snapshots; x is "wall_time" or "samples"."""
    records = run[split]
    return [r[x] for r in records], [r[y] for r in records]


def wall_at_samples(run: dict[str, Any], samples: float) -> float:
    """Wall-clock seconds at which the run had trained on ``samples`` samples (per-step log)."""
    xs = [0.0] + [r["buffer/consumed"] for r in run["metrics"]]
    ys = [0.0] + [r["wall_time"] for r in run["metrics"]]
    return interpolate(xs, ys, samples)


def phase_seconds(run: dict[str, Any]) -> tuple[float, float]:
    """Mean seconds per learner step waiting for the batch (generation, in lock-step) and
    training on it."""
    metrics = run["metrics"]
    return (sum(r["wait_s"] for r in metrics) / len(metrics),
            sum(r["train_s"] for r in metrics) / len(metrics))


def on_grid(runs: list[dict[str, Any]], split: str, x: str, grid: list[float]) -> list[list[float]]:
    """Each run's evaluation curve interpolated on ``grid`` (one list per run)."""
    return [[interpolate(*curve(run, split, x), g) for g in grid] for run in runs]
