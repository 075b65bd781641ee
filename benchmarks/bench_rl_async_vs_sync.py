"""Asynchronous vs lock-step RL on the tiny preset: reward against wall-clock time and samples.

    python benchmarks/bench_rl_async_vs_sync.py --steps 250 --seeds 0,1,2 --workdir /tmp/glm5_rl_bench
    python benchmarks/bench_rl_async_vs_sync.py --seeds 0,1,2 --workdir /tmp/glm5_rl_bench --skip_run

For each seed (``--config.seed``: the warm start, the task draws and sampling all change),
runs ``experiments/rl/tiny_async.py`` and ``tiny_sync.py`` one after the other (never at the
same time: they would steal each other's cores), then prints time-to-target-reward for each,
their ratio, and the ratio's ceiling on this machine, (generation + training) / max(both), from
the lock-step run's own phase times; a summary table gives every seed and the medians. Writes the plot to
``benchmarks/results/rl_async_vs_sync.svg`` and the table to ``benchmarks/results/rl.md``.

The target is the warm-start reward plus ``--target_fraction`` of the way to the lower of the
two runs' best smoothed rewards, so that both reach it and neither is favoured by the choice.
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


def run(mode: str, workdir: Path, steps: int, extra: list[str]) -> None:
    command = [sys.executable, "-m", "glm5_jax.rl", f"--config=experiments/rl/tiny_{mode}.py",
               f"--workdir={workdir}", f"--config.total_steps={steps}", *extra]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def load(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def smooth(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1):i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def first_reaching(xs: list[float], ys: list[float], target: float, window: int) -> float | None:
    """First x where the moving average over a *full* window reaches the target (a partial
    window at the start is a handful of batches and mostly measures which tasks were drawn)."""
    for x, y in list(zip(xs, ys))[window - 1:]:
        if y >= target:
            return x
    return None


def svg_panel(series: dict[str, tuple[list[float], list[float]]], x_label: str, origin: tuple[int, int],
              size: tuple[int, int], y_range: tuple[float, float], target: float) -> list[str]:
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
                 'stroke="#888" stroke-dasharray="4,3"/>')
    for name, (xs, ys) in series.items():
        coords = " ".join(point(x, y) for x, y in zip(xs, ys))
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{COLOURS[name]}" stroke-width="2"/>')
    return parts


def write_svg(path: Path, runs: dict[str, list[dict]], window: int, target: float) -> None:
    rewards = {m: smooth([r["reward"] for r in recs], window) for m, recs in runs.items()}
    low = min(min(v) for v in rewards.values())
    high = max(max(v) for v in rewards.values())
    pad = 0.05 * (high - low or 1.0)
    y_range = (low - pad, high + pad)
    by_time = {m: ([r["wall_time"] for r in recs], rewards[m]) for m, recs in runs.items()}
    by_samples = {m: (_cumulative([r["samples"] for r in recs]), rewards[m]) for m, recs in runs.items()}
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="900" height="360" font-family="sans-serif">',
             '<rect width="100%" height="100%" fill="white"/>',
             (f'<text x="450" y="20" font-size="14" text-anchor="middle">Tiny GLM-5 policy, code tasks: '
             f'mean reward ({window}-step moving average); dashed: target {target:.2f}</text>')]
    parts += svg_panel(by_time, "wall-clock seconds", (70, 40), (360, 260), y_range, target)
    parts += svg_panel(by_samples, "samples trained on", (510, 40), (360, 260), y_range, target)
    for i, name in enumerate(runs):
        parts.append(f'<rect x="{80 + 90 * i}" y="50" width="12" height="12" fill="{COLOURS[name]}"/>')
        parts.append(f'<text x="{96 + 90 * i}" y="60" font-size="12">{name}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def _cumulative(values: list[float]) -> list[float]:
    total, out = 0.0, []
    for v in values:
        total += v
        out.append(total)
    return out


def analyse(runs: dict[str, list[dict]], window: int, target_fraction: float) -> dict:
    """Time-to-target, its ratio and ceiling, and the table rows, for one seed's pair of runs."""
    smoothed = {m: smooth([r["reward"] for r in recs], window) for m, recs in runs.items()}
    warm = sum(r["reward"] for r in runs["sync"][:window]) / min(window, len(runs["sync"]))
    best = min(max(v[window - 1:]) for v in smoothed.values())
    target = warm + target_fraction * (best - warm)
    rows, times, samples_to = [], {}, {}
    for mode, records in runs.items():
        wall = [r["wall_time"] for r in records]
        samples = _cumulative([r["samples"] for r in records])
        times[mode] = first_reaching(wall, smoothed[mode], target, window)
        samples_to[mode] = first_reaching(samples, smoothed[mode], target, window)
        last = records[-1]
        final_pass = sum(r["pass_rate"] for r in records[-window:]) / window
        rows.append(
            f"| {mode} | {len(records)} | {wall[-1]:.0f} | {_fmt(times[mode])} | {_fmt(samples_to[mode], 0)} | "
            f"{smoothed[mode][-1]:.3f} | {final_pass:.2f} | "
            f"{last['learner_idle_fraction']:.2f} | {last['worker_utilisation']:.2f} | "
            f"{last['tokens_per_s/generated']:.0f} | {last['tokens_per_s/trained']:.0f} | "
            f"{last['buffer/dropped']} | {_staleness(records)} |")
    sync = runs["sync"]
    generate = sum(r["wait_s"] for r in sync) / len(sync)
    train_s = sum(r["train_s"] for r in sync) / len(sync)
    budget = min(runs[m][-1]["wall_time"] for m in runs)
    return {
        "warm": warm, "best": best, "target": target, "rows": rows, "times": times,
        "samples_to": samples_to, "generate": generate, "train": train_s,
        "ceiling": (generate + train_s) / max(generate, train_s),
        "ratio": times["sync"] / times["async"] if times["sync"] and times["async"] else None,
        "budget": budget,
        "at_budget": {m: _value_at([r["wall_time"] for r in runs[m]], smoothed[m], budget) for m in runs},
        "final": {m: smoothed[m][-1] for m in runs},
        "steps_per_s": {m: len(runs[m]) / runs[m][-1]["wall_time"] for m in runs},
    }


def seed_section(seed: int, a: dict, window: int, target_fraction: float) -> list[str]:
    return [
        f"### Seed {seed}", "",
        (f"Warm-start reward (first {window} lock-step steps): {a['warm']:.3f}; target "
        f"{a['target']:.3f} ({target_fraction:.0%} of the way to the lower run's best "
        f"{window}-step mean, {a['best']:.3f})."), "",
        ("| mode | steps | wall s | time to target s | samples to target | final reward | final pass rate "
        "| learner idle | worker util | gen tok/s | trained tok/s | dropped | staleness (all steps) |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|", *a["rows"], "",
        (f"Time-to-target ratio sync/async: **{_fmt(a['ratio'], 2)}x**. Ceiling from the lock-step "
        f"run's phases: generation {a['generate']:.2f}s + training {a['train']:.2f}s per step -> "
        f"(g + t) / max(g, t) = **{a['ceiling']:.2f}x**. Learner steps per second: async "
        f"{a['steps_per_s']['async']:.2f}, sync {a['steps_per_s']['sync']:.2f} "
        f"(**{a['steps_per_s']['async'] / a['steps_per_s']['sync']:.2f}x**)."), "",
        (f"Reward ({window}-step mean) at an equal wall-clock budget of {a['budget']:.0f}s: async "
        f"{a['at_budget']['async']:.3f}, sync {a['at_budget']['sync']:.3f}."), ""]


def summary_section(results: dict[int, dict]) -> list[str]:
    """One row per seed and the medians: the numbers to quote."""
    def median(values):
        values = [v for v in values if v is not None]  # None: a run that never reached target
        return statistics.median(values) if values else None

    columns = {
        "time-to-target ratio sync/async": lambda a: a["ratio"],
        "ceiling (g+t)/max(g,t)": lambda a: a["ceiling"],
        "learner steps/s async/sync": lambda a: a["steps_per_s"]["async"] / a["steps_per_s"]["sync"],
        "reward at equal budget, async - sync": lambda a: a["at_budget"]["async"] - a["at_budget"]["sync"],
        "final reward async": lambda a: a["final"]["async"],
        "final reward sync": lambda a: a["final"]["sync"],
        "warm start": lambda a: a["warm"],
    }
    lines = ["| seed | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for seed, a in results.items():
        lines.append(f"| {seed} | " + " | ".join(_fmt(f(a), 2) for f in columns.values()) + " |")
    lines.append("| **median** | " + " | ".join(
        f"**{_fmt(median([f(a) for a in results.values()]), 2)}**" for f in columns.values()) + " |")
    return lines + [""]


def seed_workdir(base: Path, seed: int) -> Path:
    return base / f"seed{seed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/glm5_rl_bench")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--seeds", default="0", help="comma-separated; each seed runs both modes")
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--target_fraction", type=float, default=0.7)
    parser.add_argument("--skip_run", action="store_true", help="re-analyse the runs already in --workdir")
    parser.add_argument("--extra", nargs="*", default=[], help="more --config.* overrides for both")
    parser.add_argument("--results_name", default="rl",
                        help="writes benchmarks/results/NAME.md and NAME_async_vs_sync.svg")
    parser.add_argument("--title", default="Asynchronous vs lock-step RL (tiny preset, CPU)")
    args = parser.parse_args()
    base = Path(args.workdir)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    for seed in seeds:
        directory = seed_workdir(base, seed)
        if not args.skip_run:
            for mode in ("sync", "async"):
                run(mode, directory / mode, args.steps, [f"--config.seed={seed}", *args.extra])
        runs = {mode: load(directory / mode) for mode in ("async", "sync")}
        results[seed] = analyse(runs, args.window, args.target_fraction)
        if seed == seeds[0]:
            RESULTS.mkdir(parents=True, exist_ok=True)
            write_svg(RESULTS / f"{args.results_name}_async_vs_sync.svg", runs, args.window,
                      results[seed]["target"])
    command = " ".join(["python benchmarks/bench_rl_async_vs_sync.py", f"--steps {args.steps}",
                        f"--seeds {args.seeds}", f"--workdir {args.workdir}"]
                       + ([f"--results_name {args.results_name}"] if args.results_name != "rl" else [])
                       + ([f"--extra {' '.join(args.extra)}"] if args.extra else []))
    lines = [
        f"## {args.title}", "",
        f"Command: `{command}`", "",
        (f"Plot (seed {seeds[0]}): `benchmarks/results/{args.results_name}_async_vs_sync.svg` "
        "(reward against wall-clock time and against samples)."), "",
        *summary_section(results)]
    for seed, a in results.items():
        lines += seed_section(seed, a, args.window, args.target_fraction)
    text = "\n".join(lines)
    print(text)
    (RESULTS / f"{args.results_name}.md").write_text(text)


def _value_at(xs: list[float], ys: list[float], x: float) -> float:
    """The last y at or before x."""
    value = ys[0]
    for xi, yi in zip(xs, ys):
        if xi > x:
            break
        value = yi
    return value


def _staleness(records: list[dict]) -> str:
    total: dict[str, int] = {}
    for r in records:
        for k, v in r["staleness_histogram"].items():
            total[k] = total.get(k, 0) + v
    return ", ".join(f"{k}: {v}" for k, v in sorted(total.items(), key=lambda kv: int(kv[0])))


def _fmt(value: float | None, digits: int = 1) -> str:
    return "not reached" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
