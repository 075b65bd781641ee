"""Asynchronous vs lock-step RL on the tiny preset: a learning-rate sweep, then many seeds.

    python benchmarks/bench_rl_async_vs_sync.py --workdir /tmp/glm5_rl_bench --steps 250 \
        --lrs 1e-4,3e-4,1e-3 --sweep_seeds 0,1 --seeds 0,1,2,3,4

Configs: ``experiments/rl/tiny_async_warm40.py`` and ``tiny_sync_warm40.py`` (a warm start near
40% pass rate, where the policy learns; the lock-step worker has every core, since its
generation never overlaps training, while the async worker keeps one XLA thread beside the
learner). Every RL run is a point of ``python -m glm5_jax.sweep --job=rl`` (training, then
the fixed evaluation of its snapshots), in ``WORKDIR/sweep_<mode>/points/learning_rate=LR,seed=S``;
one run at a time, lock-step and async interleaved.

1. Learning-rate sweep: every ``--lrs`` x ``--sweep_seeds`` point in both modes; each mode
   keeps the rate with the highest median evaluation reward at its equal budget
   (``rl_bench_analysis.choose_learning_rate``).
2. Seeds: ``--seeds`` in both modes at each mode's rate (sweep points with the same rate and
   seed are reused).
3. Separate cores: one ``--ceiling_steps`` run per mode with the learner pinned to one CPU and
   the rollout worker (and its sandboxes) to another (``placement.learner_cpus`` /
   ``rollout_cpus``); the lock-step run's phase times give the overlap ceiling that separate
   devices would give, the async run what overlap achieves there.

Reports first the evaluation reward at equal wall-clock budget and the final reward (median
and range over seeds, and the per-seed difference async - sync), then per-seed numbers,
time-to-target only where the target is outside the evaluation noise (``rl_bench_analysis``
says how), the sweep and the ceilings, and a verdict on the paper's "2.5x faster with higher
reward". Writes ``<results_dir>/<name>.md`` and ``<name>_async_vs_sync.svg`` (reward against
wall clock and against samples: median over seeds, min-max band). Rerunning skips finished
runs; ``--skip_run`` only re-analyses what is there.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the rl_bench_* helpers

from rl_bench_analysis import (MODES, analyse_pair, choose_learning_rate,  # noqa: E402
                               pinned_ceiling, verdict)
from rl_bench_curves import load_run  # noqa: E402
from rl_bench_legacy import analyse, load  # noqa: E402,F401  (glm5_jax/reproduce/async_rl.py reads old runs)
from rl_bench_plot import write_figure  # noqa: E402
from rl_bench_report import (ceiling_lines, headline, learning_rate_table,  # noqa: E402
                             reproduce_table, seed_table, setup_of, setup_table)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"async": "experiments/rl/tiny_async_warm40.py", "sync": "experiments/rl/tiny_sync_warm40.py"}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def point_dir(base: Path, mode: str, lr: str, seed: int) -> Path:
    return base / f"sweep_{mode}" / "points" / f"learning_rate={lr},seed={seed}"


def _run(command: list[str]) -> None:
    print("$", shlex.join(command), flush=True)
    if subprocess.run(command, cwd=REPO, env=ENV).returncode != 0:
        workdir = next(a.split("=", 1)[1] for a in command if a.startswith("--workdir="))
        sys.exit(f"failed: {shlex.join(command)}\n(its log: {workdir}/points/*/sweep.log or the output above); "
                 "rerun the same command to continue from there")


def run_point(base: Path, mode: str, lr: str, seed: int, steps: int, extra: list[str]) -> None:
    """One sweep point (RL training, then its fixed evaluation); a finished one is skipped."""
    status = point_dir(base, mode, lr, seed) / "sweep_status.json"
    if status.exists() and json.loads(status.read_text()).get("status") == "done":
        return
    _run([sys.executable, "-m", "glm5_jax.sweep", "--job=rl", f"--config={CONFIGS[mode]}",
          f"--workdir={base / f'sweep_{mode}'}", f"--axis=learning_rate={lr}", f"--axis=seed={seed}",
          f"--config.total_steps={steps}", *extra])


def run_pinned(base: Path, mode: str, lr: str, seed: int, steps: int, cpus: tuple[str, str],
               extra: list[str]) -> None:
    """A run without evaluation, learner and worker each on its own CPU; skipped when complete."""
    workdir = base / "pinned" / mode
    metrics = workdir / "metrics.jsonl"
    if metrics.exists() and len(metrics.read_text().splitlines()) >= steps:
        return
    _run([sys.executable, "-m", "glm5_jax.rl", f"--config={CONFIGS[mode]}", f"--workdir={workdir}",
          f"--config.total_steps={steps}", f"--config.seed={seed}", f"--config.learning_rate={lr}",
          *extra, f"--config.placement.learner_cpus={cpus[0]}",
          f"--config.placement.rollout_cpus={cpus[1]}", "--config.eval.every=0"])


def check_settings(base: Path, settings: dict, skip_run: bool) -> None:
    """A workdir holds runs of one setting: a rerun with other steps or overrides is refused."""
    path = base / "benchmark.json"
    if path.exists():
        before = json.loads(path.read_text())
        if before != settings:
            sys.exit(f"{base} holds runs made with {before}; this invocation asks for {settings}: "
                     "use another --workdir")
    elif not skip_run:
        base.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings) + "\n")


def load_points(base: Path, mode: str, keys: list[tuple[str, int]]) -> dict[tuple[str, int], dict]:
    missing = [k for k in keys if not (point_dir(base, mode, *k) / "eval.jsonl").exists()]
    if missing:
        sys.exit(f"{mode}: no finished run for (learning rate, seed) {missing} in {base}; run without --skip_run")
    return {key: load_run(point_dir(base, mode, *key)) for key in keys}


def rebuild_sweep_tables(base: Path, used: dict[str, set]) -> None:
    """Each mode's sweep table over every point the benchmark used (each invocation of the sweep
    runner wrote one point's)."""
    from glm5_jax.sweep.results import point_row, write_results
    from glm5_jax.sweep.runner import read_status

    for mode, keys in used.items():
        directory = base / f"sweep_{mode}"
        rows = [point_row(d.name, {"learning_rate": lr, "seed": seed}, read_status(d), d, "rl")
                for lr, seed in sorted(keys, key=lambda k: (float(k[0]), k[1]))
                for d in [point_dir(base, mode, lr, seed)]]
        write_results(directory, rows, "eval_reward", "rl")


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/glm5_rl_bench")
    parser.add_argument("--steps", type=int, default=250, help="learner steps per run")
    parser.add_argument("--lrs", default="1e-4,3e-4,1e-3", help="learning rates of the sweep (as written)")
    parser.add_argument("--sweep_seeds", default="0,1", help="seeds of the learning-rate sweep")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="seeds of the comparison, per mode")
    parser.add_argument("--ceiling_steps", type=int, default=60,
                        help="learner steps of each separate-cores run (0: skip them)")
    parser.add_argument("--ceiling_cpus", default="0,1", help="CPU of the learner, CPU of the worker")
    parser.add_argument("--target_fraction", type=float, default=0.7)
    parser.add_argument("--min_target_stderrs", type=float, default=4.0,
                        help="time-to-target only for targets this many std errors above the warm start")
    parser.add_argument("--skip_run", action="store_true", help="re-analyse the runs already in --workdir")
    parser.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--results_name", default="rl", help="writes NAME.md and NAME_async_vs_sync.svg")
    parser.add_argument("--title", default="Asynchronous vs lock-step RL (tiny preset, CPU)")
    args, extra = parser.parse_known_args()
    stray = [a for a in extra if not a.startswith("--config.")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)} (run overrides look like --config.X=V)")
    command = shlex.join(["python", "benchmarks/bench_rl_async_vs_sync.py", *sys.argv[1:]])
    started, load_at_start = time.time(), load_average()
    print(f"$ {command}\nload average at start (1/5/15 min): {load_at_start}", flush=True)
    base = Path(args.workdir)
    lrs = [lr.strip() for lr in args.lrs.split(",") if lr.strip()]
    sweep_seeds = [int(s) for s in args.sweep_seeds.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    cpus = tuple(args.ceiling_cpus.split(","))
    check_settings(base, {"steps": args.steps, "extra": extra, "configs": CONFIGS}, args.skip_run)

    sweep_keys = [(lr, seed) for seed in sweep_seeds for lr in lrs]
    if not args.skip_run:  # one run at a time, the modes interleaved
        for lr, seed in sweep_keys:
            for mode in ("sync", "async"):
                run_point(base, mode, lr, seed, args.steps, extra)
    chosen, lr_rows = {}, {}
    for mode in MODES:
        chosen[mode], lr_rows[mode] = choose_learning_rate(load_points(base, mode, sweep_keys))
    print(f"chosen learning rates: {chosen}", flush=True)
    if not args.skip_run:
        for seed in seeds:
            for mode in ("sync", "async"):
                run_point(base, mode, chosen[mode], seed, args.steps, extra)
    runs = {mode: load_points(base, mode, [(chosen[mode], seed) for seed in seeds]) for mode in MODES}
    pairs = {seed: analyse_pair({m: runs[m][chosen[m], seed] for m in MODES}, args.target_fraction,
                                args.min_target_stderrs) for seed in seeds}

    pinned = None
    can_pin = args.ceiling_steps > 0 and len(cpus) == 2 and (os.cpu_count() or 1) >= 2
    if can_pin and not args.skip_run:
        for mode in ("sync", "async"):
            run_pinned(base, mode, chosen[mode], seeds[0], args.ceiling_steps, cpus, extra)
    if can_pin and all((base / "pinned" / m / "metrics.jsonl").exists() for m in MODES):
        pinned_runs = {m: load_run(base / "pinned" / m) for m in MODES}
        pinned = pinned_ceiling(pinned_runs)
    rebuild_sweep_tables(base, {m: set(sweep_keys) | {(chosen[m], s) for s in seeds} for m in MODES})

    results = Path(args.results_dir)
    svg = results / f"{args.results_name}_async_vs_sync.svg"
    labels = {m: f"{m} (lr {chosen[m]})" for m in MODES}
    write_figure(svg, {m: [runs[m][chosen[m], s] for s in seeds] for m in MODES}, labels,
                 f"{args.title}: fixed-evaluation reward, {len(seeds)} seeds per mode")
    setups = {f"{m} (seeds)": setup_of(runs[m][chosen[m], seeds[0]]) for m in MODES}
    if pinned is not None:
        setups.update({f"{m} (separate cores)": setup_of(pinned_runs[m]) for m in MODES})
    load_at_end = load_average()
    lines = [
        f"## {args.title}", "",
        f"Command: `{command}`", "",
        (f"Load average (1/5/15 min) at start {load_at_start}, at end {load_at_end}; "
         f"{(time.time() - started) / 60:.0f} min for this invocation."), "",
        f"Plot: `{svg.name}` (fixed-evaluation reward against wall-clock time and against samples; "
        "median over seeds, band from the lowest to the highest seed).", "",
        "### Reward at equal wall-clock budget and at the end", "",
        *headline(pairs, chosen), "",
        *verdict(pairs, pinned), "",
        "### Per seed", "",
        *seed_table(pairs, args.min_target_stderrs), "",
        ("How: the equal budget is the shorter run's wall-clock time (the curve is linear between "
         "snapshots); final is the last snapshot. Time-to-target is read on the monotone "
         "(non-decreasing least-squares) fit of the training-task evaluation reward against samples "
         "(snapshots every `eval.every` learner steps, so at the same sample counts in both modes), "
         f"then converted to seconds through the run's per-step log; the target is {args.target_fraction:.0%} "
         "of the way from the warm start to the lower of the two modes' best fitted reward, and is "
         f"used only if at least {args.min_target_stderrs:g} standard errors of the warm-start evaluation "
         "above it. A time ratio above the overlap ceiling can only come from fewer samples to target."), "",
        "### Learning-rate sweep (python -m glm5_jax.sweep --job=rl)", "",
        ("Rule: per mode, the rate with the highest median (over the sweep seeds) training-task "
         "evaluation reward at that mode's equal budget, the shortest wall-clock time among its sweep "
         "runs; ties go to the lower rate."), "",
        *learning_rate_table(lr_rows), "",
        "### Overlap ceiling", "",
        *ceiling_lines(pairs, pinned, {"learner": cpus[0], "rollout": cpus[-1]}), "",
        "### What each mode ran with", "",
        *setup_table(setups), "",
        "### Per seed, in the columns glm5_jax/reproduce/async_rl.py reads", "",
        *reproduce_table(pairs), ""]
    text = "\n".join(lines)
    print(text)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.results_name}.md").write_text(text)
    print(f"wrote {results / (args.results_name + '.md')} and {svg}; load average at end: {load_at_end}")


if __name__ == "__main__":
    main()
