"""Asynchronous vs lock-step RL on the tiny preset: reward against wall-clock time and samples.

    python benchmarks/bench_rl_async_vs_sync.py --steps 250 --seeds 0,1,2 --workdir /tmp/glm5_rl_bench
    python benchmarks/bench_rl_async_vs_sync.py --seeds 0,1,2 --workdir /tmp/glm5_rl_s1 --modes async \
        --sync_workdir /tmp/glm5_rl_bench --results_name rl_staleness1 --config.max_staleness=1

For each seed (``--config.seed``: the warm start, the task draws and sampling all change),
runs ``experiments/rl/tiny_sync.py`` and ``tiny_async.py`` one after the other (never at the
same time: they would steal each other's cores), then scores every kept policy snapshot (the
warm start and every ``eval.every`` learner steps) with ``glm5_jax.rl.evaluation``: the
training tasks and the held-out tasks, a fixed number of samples per task, fixed seeds. The
reward curves, time-to-target and final rewards come from that fixed evaluation, not from the
noisy training draws. ``--sync_workdir`` reuses lock-step runs made before (lock-step mode
ignores ``max_staleness``, so an async variant can be compared with the same lock-step runs).

Printed per seed: time-to-target-reward for each mode, their ratio, and the ratio's ceiling on
this machine, (generation + training) / max(both), from the lock-step run's own phase times;
a summary table gives every seed and the medians. Writes the plot to
``benchmarks/results/<name>_async_vs_sync.svg`` and the tables to ``benchmarks/results/<name>.md``.

The target is the warm-start evaluation reward plus ``--target_fraction`` of the way to the
lower of the two runs' best evaluation rewards, so that both reach it and neither is favoured
by the choice; the crossing time is interpolated linearly between snapshots.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
COLOURS = {"async": "#d62728", "sync": "#1f77b4"}
MODES = ("async", "sync")


def _python(module: str, *args: str) -> None:
    command = [sys.executable, "-m", module, *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def run(mode: str, workdir: Path, steps: int, extra: list[str]) -> None:
    _python("glm5_jax.rl", f"--config=experiments/rl/tiny_{mode}.py", f"--workdir={workdir}",
            f"--config.total_steps={steps}", *extra)
    _python("glm5_jax.rl.evaluation", f"--workdir={workdir}")


def load(workdir: Path) -> dict[str, list[dict]]:
    """Training metrics per learner step, and evaluation results per split (by step)."""
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evaluations = [json.loads(line) for line in (workdir / "eval.jsonl").read_text().splitlines()]
    by_split = {split: sorted((r for r in evaluations if r["split"] == split), key=lambda r: r["step"])
                for split in ("train", "held_out")}
    return {"metrics": metrics, **by_split}


def first_crossing(xs: list[float], ys: list[float], target: float) -> float | None:
    """The first x where the piecewise-linear curve through (xs, ys) reaches ``target``."""
    if ys and ys[0] >= target:
        return xs[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y1 >= target:
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return None


def value_at(xs: list[float], ys: list[float], x: float) -> float:
    """The piecewise-linear curve through (xs, ys) at x (clamped to its ends)."""
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def svg_panel(series: dict[tuple[str, str], tuple[list[float], list[float]]], x_label: str,
              origin: tuple[int, int], size: tuple[int, int], y_range: tuple[float, float],
              target: float) -> list[str]:
    """Lines keyed by (mode, split): solid for the training tasks, dashed for held-out ones."""
    (left, top), (width, height) = origin, size
    x_max = max(max(xs) for xs, _ in series.values()) or 1.0
    y_low, y_high = y_range

    def point(x: float, y: float) -> str:
        return f"{left + width * x / x_max:.1f},{top + height * (1 - (y - y_low) / (y_high - y_low)):.1f}"

    parts = [f'<rect x="{left}" y="{top}" width="{width}" height="{height}" fill="none" stroke="#444"/>']
    for i in range(5):
        y = y_low + (y_high - y_low) * i / 4
        x = x_max * i / 4
        parts.append(f'<text x="{left - 6}" y="{point(0, y).split(",")[1]}" font-size="11" '
                     f'text-anchor="end">{y:.2f}</text>')
        parts.append(f'<text x="{point(x, y_low).split(",")[0]}" y="{top + height + 15}" '
                     f'font-size="11" text-anchor="middle">{x:.0f}</text>')
    parts.append(f'<text x="{left + width / 2}" y="{top + height + 32}" font-size="12" '
                 f'text-anchor="middle">{x_label}</text>')
    parts.append(f'<polyline points="{point(0, target)} {point(x_max, target)}" fill="none" '
                 'stroke="#888" stroke-dasharray="2,2"/>')
    for (mode, split), (xs, ys) in series.items():
        coords = " ".join(point(x, y) for x, y in zip(xs, ys))
        dash = ' stroke-dasharray="7,4"' if split == "held_out" else ""
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{COLOURS[mode]}" '
                     f'stroke-width="2"{dash}/>')
        parts += [f'<circle cx="{point(x, y).split(",")[0]}" cy="{point(x, y).split(",")[1]}" r="2.5" '
                  f'fill="{COLOURS[mode]}"/>' for x, y in zip(xs, ys)]
    return parts


def write_svg(path: Path, runs: dict[str, dict[str, list[dict]]], target: float, title: str) -> None:
    curves = {(m, split): runs[m][split] for m in runs for split in ("train", "held_out") if runs[m][split]}
    rewards = [r["reward"] for records in curves.values() for r in records]
    low, high = min(rewards), max(rewards)
    pad = 0.05 * (high - low or 1.0)
    y_range = (low - pad, high + pad)
    by_time = {key: ([r["wall_time"] for r in recs], [r["reward"] for r in recs]) for key, recs in curves.items()}
    by_samples = {key: ([r["samples"] for r in recs], [r["reward"] for r in recs]) for key, recs in curves.items()}
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="900" height="380" font-family="sans-serif">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="450" y="20" font-size="14" text-anchor="middle">{title}</text>',
             ('<text x="450" y="38" font-size="12" text-anchor="middle">fixed-evaluation reward of '
              f'policy snapshots; solid: training tasks, dashed: held-out tasks; dotted: target {target:.2f}</text>')]
    parts += svg_panel(by_time, "wall-clock seconds", (70, 55), (360, 260), y_range, target)
    parts += svg_panel(by_samples, "samples trained on", (510, 55), (360, 260), y_range, target)
    for i, name in enumerate(runs):
        parts.append(f'<rect x="{80 + 90 * i}" y="65" width="12" height="12" fill="{COLOURS[name]}"/>')
        parts.append(f'<text x="{96 + 90 * i}" y="75" font-size="12">{name}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


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


def seed_section(seed: int, a: dict, target_fraction: float) -> list[str]:
    return [
        f"### Seed {seed}", "",
        (f"Warm-start evaluation reward (step 0, training tasks): {a['warm']:.3f} (standard error "
         f"{_fmt(a['warm_stderr'], 3)}); target {a['target']:.3f} ({target_fraction:.0%} of the way to "
         f"the lower run's best evaluation reward, {a['best']:.3f}), "
         f"{_fmt(a['target_in_stderrs'], 1)} standard errors above the start."), "",
        ("| mode | steps | wall s | time to target s | samples to target | eval reward: start | best "
         "| final | final pass rate (by level: start -> final) | held-out reward start -> final | learner idle | worker util "
         "| gen tok/s | dropped | staleness (all steps) |"),
        "|---" * 15 + "|", *a["rows"], "",
        (f"Time-to-target ratio sync/async: **{_fmt(a['ratio'], 2)}x**. Ceiling from the lock-step "
         f"run's phases: generation {a['generate']:.2f}s + training {a['train']:.2f}s per step -> "
         f"(g + t) / max(g, t) = **{a['ceiling']:.2f}x**. Learner steps per second: async "
         f"{a['steps_per_s']['async']:.2f}, sync {a['steps_per_s']['sync']:.2f} "
         f"(**{a['steps_per_s']['async'] / a['steps_per_s']['sync']:.2f}x**)."), "",
        (f"Evaluation reward at an equal wall-clock budget of {a['budget']:.0f}s: async "
         f"{a['at_budget']['async']:.3f}, sync {a['at_budget']['sync']:.3f}."), ""]


def summary_section(results: dict[int, dict]) -> list[str]:
    """One row per seed and the medians: the numbers to quote."""
    def median(values):
        values = [v for v in values if v is not None]  # None: a run that never reached target
        return statistics.median(values) if values else None

    columns = {
        "time-to-target ratio sync/async": lambda a: a["ratio"],
        "target above start, in std errors": lambda a: a["target_in_stderrs"],
        "ceiling (g+t)/max(g,t)": lambda a: a["ceiling"],
        "learner steps/s async/sync": lambda a: a["steps_per_s"]["async"] / a["steps_per_s"]["sync"],
        "eval reward at equal budget, async - sync": lambda a: a["at_budget"]["async"] - a["at_budget"]["sync"],
        "warm start": lambda a: a["warm"],
        "final eval reward async": lambda a: a["final"]["async"],
        "final eval reward sync": lambda a: a["final"]["sync"],
        "held-out gain async": lambda a: a["held_out_gain"]["async"],
        "held-out gain sync": lambda a: a["held_out_gain"]["sync"],
    }
    lines = ["| seed | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for seed, a in results.items():
        lines.append(f"| {seed} | " + " | ".join(_fmt(f(a), 2) for f in columns.values()) + " |")
    lines.append("| **median** | " + " | ".join(
        f"**{_fmt(median([f(a) for a in results.values()]), 2)}**" for f in columns.values()) + " |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/glm5_rl_bench")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--seeds", default="0", help="comma-separated; each seed runs both modes")
    parser.add_argument("--modes", default="sync,async", help="which modes to run (the others are read)")
    parser.add_argument("--sync_workdir", default="",
                        help="read the lock-step runs from this base instead of --workdir")
    parser.add_argument("--plot_seed", type=int, default=None, help="seed to plot (default: the first)")
    parser.add_argument("--target_fraction", type=float, default=0.7)
    parser.add_argument("--skip_run", action="store_true", help="re-analyse the runs already in --workdir")
    parser.add_argument("--extra", nargs="*", default=[],
                        help="--config.* overrides for the runs (bare --config.* arguments work too)")
    parser.add_argument("--results_name", default="rl",
                        help="writes benchmarks/results/NAME.md and NAME_async_vs_sync.svg")
    parser.add_argument("--title", default="Asynchronous vs lock-step RL (tiny preset, CPU)")
    args, unknown = parser.parse_known_args()
    stray = [a for a in unknown if not a.startswith("--config.")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    args.extra = [*args.extra, *unknown]
    base = Path(args.workdir)
    sync_base = Path(args.sync_workdir or args.workdir)
    seeds = [int(s) for s in args.seeds.split(",")]
    to_run = [m for m in args.modes.split(",") if m]
    if set(to_run) - set(MODES):
        parser.error(f"--modes={args.modes!r}; allowed: {list(MODES)}")
    plot_seed = seeds[0] if args.plot_seed is None else args.plot_seed
    results = {}
    for seed in seeds:
        directories = {"async": base / f"seed{seed}" / "async", "sync": sync_base / f"seed{seed}" / "sync"}
        if not args.skip_run:
            for mode in ("sync", "async"):
                if mode in to_run:
                    run(mode, directories[mode], args.steps, [f"--config.seed={seed}", *args.extra])
        runs = {mode: load(directories[mode]) for mode in MODES}
        results[seed] = analyse(runs, args.target_fraction)
        if seed == plot_seed:
            RESULTS.mkdir(parents=True, exist_ok=True)
            write_svg(RESULTS / f"{args.results_name}_async_vs_sync.svg", runs,
                      results[seed]["target"], f"{args.title}, seed {seed}")
    command = " ".join(["python benchmarks/bench_rl_async_vs_sync.py", f"--steps {args.steps}",
                        f"--seeds {args.seeds}", f"--workdir {args.workdir}"]
                       + ([f"--modes {args.modes}"] if args.modes != "sync,async" else [])
                       + ([f"--sync_workdir {args.sync_workdir}"] if args.sync_workdir else [])
                       + ([f"--results_name {args.results_name}"] if args.results_name != "rl" else [])
                       + ([f"--plot_seed {plot_seed}"] if args.plot_seed is not None else [])
                       + args.extra)
    lines = [
        f"## {args.title}", "",
        f"Command: `{command}`", "",
        (f"Plot (seed {plot_seed}): `benchmarks/results/{args.results_name}_async_vs_sync.svg` "
         "(fixed-evaluation reward against wall-clock time and against samples)."), "",
        *summary_section(results)]
    for seed, a in results.items():
        lines += seed_section(seed, a, args.target_fraction)
    text = "\n".join(lines)
    print(text)
    (RESULTS / f"{args.results_name}.md").write_text(text)


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


if __name__ == "__main__":
    main()
