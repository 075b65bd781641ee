"""The first RL benchmark's per-seed analysis, kept for runs laid out as it laid them out.

``glm5_jax/reproduce/async_rl.py`` reads ``<base>/seed<N>/{async,sync}`` run directories with
these ``load`` and ``analyse`` (through ``bench_rl_async_vs_sync.py``, which re-exports them).
This analysis was criticised in issue 15 and is not what the benchmark reports now: its target
can sit inside the evaluation noise, and the first crossing of the raw, noisy curve favours the
mode with more snapshots per second. The benchmark's own numbers come from
``rl_bench_analysis.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from rl_bench_curves import first_crossing
from rl_bench_curves import interpolate as value_at

MODES = ("async", "sync")


def load(workdir: Path) -> dict[str, list[dict]]:
    """Training metrics per learner step, and evaluation results per split (by step)."""
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evaluations = [json.loads(line) for line in (workdir / "eval.jsonl").read_text().splitlines()]
    by_split = {split: sorted((r for r in evaluations if r["split"] == split), key=lambda r: r["step"])
                for split in ("train", "held_out")}
    return {"metrics": metrics, **by_split}


def analyse(runs: dict[str, dict[str, list[dict]]], target_fraction: float) -> dict:
    """Time-to-target, its ratio and ceiling, and the table rows, for one seed's pair of runs."""
    curves = {m: runs[m]["train"] for m in MODES}
    starts = {m: curves[m][0]["reward"] for m in MODES}
    if any(curves[m][0]["step"] != 0 for m in MODES):
        raise ValueError("an evaluation curve does not start at the warm start (step 0)")
    warm = starts["sync"]  # both modes start from the same cached warm start
    warm_stderr = curves["sync"][0].get("reward_stderr")
    best = min(max(r["reward"] for r in curves[m]) for m in MODES)
    target = warm + target_fraction * (best - warm)
    rows, times, samples_to = [], {}, {}
    for mode in MODES:
        metrics, evals = runs[mode]["metrics"], curves[mode]
        wall = [r["wall_time"] for r in evals]
        rewards = [r["reward"] for r in evals]
        times[mode] = first_crossing(wall, rewards, target)
        samples_to[mode] = first_crossing([r["samples"] for r in evals], rewards, target)
        held = runs[mode]["held_out"]
        last = metrics[-1]
        rows.append(
            f"| {mode} | {len(metrics)} | {last['wall_time']:.0f} | {_fmt(times[mode])} | "
            f"{_fmt(samples_to[mode], 0)} | {evals[0]['reward']:.3f} | {max(rewards):.3f} | "
            f"{evals[-1]['reward']:.3f} | {evals[-1]['pass_rate']:.2f} ({_by_level(evals[0])} -> "
            f"{_by_level(evals[-1])}) | "
            f"{held[0]['reward']:.3f} -> {held[-1]['reward']:.3f} | "
            f"{last['learner_idle_fraction']:.2f} | {last['worker_utilisation']:.2f} | "
            f"{last['tokens_per_s/generated']:.0f} | {last['buffer/dropped']} | {_staleness(metrics)} |")
    sync = runs["sync"]["metrics"]
    generate = sum(r["wait_s"] for r in sync) / len(sync)
    train_s = sum(r["train_s"] for r in sync) / len(sync)
    budget = min(runs[m]["metrics"][-1]["wall_time"] for m in MODES)
    return {
        "warm": warm, "warm_stderr": warm_stderr,
        "target_in_stderrs": (target - warm) / warm_stderr if warm_stderr else None, "starts": starts, "best": best, "target": target, "rows": rows, "times": times,
        "samples_to": samples_to, "generate": generate, "train": train_s,
        "ceiling": (generate + train_s) / max(generate, train_s),
        "ratio": times["sync"] / times["async"] if times["sync"] and times["async"] else None,
        "budget": budget,
        "at_budget": {m: value_at([r["wall_time"] for r in curves[m]], [r["reward"] for r in curves[m]],
                                  budget) for m in MODES},
        "final": {m: curves[m][-1]["reward"] for m in MODES},
        "held_out_gain": {m: runs[m]["held_out"][-1]["reward"] - runs[m]["held_out"][0]["reward"]
                          for m in MODES},
        "steps_per_s": {m: len(runs[m]["metrics"]) / runs[m]["metrics"][-1]["wall_time"] for m in MODES},
    }


def _staleness(records: list[dict]) -> str:
    total: dict[str, int] = {}
    for r in records:
        for k, v in r["staleness_histogram"].items():
            total[k] = total.get(k, 0) + v
    return ", ".join(f"{k}: {v}" for k, v in sorted(total.items(), key=lambda kv: int(kv[0])))


def _by_level(record: dict) -> str:
    levels = sorted(k for k in record if k.startswith("pass_rate/level_"))
    return "/".join(f"{record[k]:.2f}" for k in levels) or "n/a"


def _fmt(value: float | None, digits: int = 1) -> str:
    return "not reached" if value is None else f"{value:.{digits}f}"
