"""Table 4, asynchronous RL: the RL benchmark's runs in the paper's terms.

Two sources, both in the RL benchmark's own format (``benchmarks/bench_rl_async_vs_sync.py``):

* its summary tables, ``benchmarks/results/rl*.md`` (one row per seed: time-to-target ratio,
  the ratio's ceiling, learner steps/s, final evaluation rewards, ...), parsed by header, so a
  regenerated fragment is read as it is;
* run directories ``<base>/seed<N>/{async,sync}`` with ``metrics.jsonl`` and ``eval.jsonl``,
  analysed by the benchmark's ``load`` and ``analyse`` (the same numbers its tables print).

Every row is one seed's pair of runs (each run its own workdir); a source's median row
follows its seeds. Nothing here runs RL: at pod scale it writes the commands that would.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import statistics
from pathlib import Path
from typing import Any

from glm5_jax.errors import UserError
from glm5_jax.reproduce.context import Context
from glm5_jax.reproduce.experiment_files import load_module
from glm5_jax.reproduce.plots import figure
from glm5_jax.reproduce.scales import REPO
from glm5_jax.reproduce.table_files import Table

BENCHMARK_SCRIPT = REPO / "benchmarks" / "bench_rl_async_vs_sync.py"
SUMMARY_HEADER = "| seed | time-to-target ratio sync/async"
# Summary-table header -> row key (the benchmark's column names).
SUMMARY_COLUMNS = {
    "time-to-target ratio sync/async": "ratio",
    "target above start, in std errors": "target_in_stderrs",
    "ceiling (g+t)/max(g,t)": "ceiling",
    "learner steps/s async/sync": "steps_per_s_ratio",
    "eval reward at equal budget, async - sync": "reward_at_budget_diff",
    "warm start": "warm_start",
    "final eval reward async": "final_async",
    "final eval reward sync": "final_sync",
    "held-out gain async": "held_out_gain_async",
    "held-out gain sync": "held_out_gain_sync",
}
COLUMNS = [("source", "source"), ("seed", "seed"), ("ratio", "time-to-target sync/async"),
           ("ceiling", "ceiling (g+t)/max(g,t)"), ("steps_per_s_ratio", "learner steps/s async/sync"),
           ("target_in_stderrs", "target above start (std errors)"), ("final_async", "final reward async"),
           ("final_sync", "final reward sync"), ("final_diff", "final async - sync"),
           ("reward_at_budget_diff", "reward at equal time, async - sync")]


def _number(cell: str) -> float | None:
    cell = cell.strip().strip("*").strip()
    try:
        return float(cell)
    except ValueError:
        return None  # "not reached"


def parse_summary(text: str) -> tuple[str, list[dict[str, Any]]]:
    """(the fragment's title, one dict per seed) from a benchmark fragment's summary table."""
    title = next((line[3:].strip() for line in text.splitlines() if line.startswith("## ")), "untitled")
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(SUMMARY_HEADER)), None)
    if start is None:
        return title, []
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        seed = cells[0].strip("*")
        if not seed.isdigit():
            continue  # the median row: recomputed from the seeds
        row = {"seed": int(seed)}
        for name, cell in zip(header[1:], cells[1:], strict=False):
            if name in SUMMARY_COLUMNS:
                row[SUMMARY_COLUMNS[name]] = _number(cell)
        rows.append(row)
    return title, rows


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("bench_rl_async_vs_sync", BENCHMARK_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def analyse_runs(base: Path, target_fraction: float) -> list[dict[str, Any]]:
    """One row per ``base/seed<N>`` holding both modes' metrics.jsonl and eval.jsonl."""
    bench = _benchmark_module()
    rows = []
    for seed_dir in sorted(base.glob("seed*"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0)):
        modes = {mode: seed_dir / mode for mode in ("async", "sync")}
        if not all((d / "metrics.jsonl").exists() and (d / "eval.jsonl").exists() for d in modes.values()):
            continue
        result = bench.analyse({mode: bench.load(d) for mode, d in modes.items()}, target_fraction)
        rows.append({
            "seed": int(re.sub(r"\D", "", seed_dir.name)), "ratio": result["ratio"],
            "ceiling": result["ceiling"],
            "steps_per_s_ratio": result["steps_per_s"]["async"] / result["steps_per_s"]["sync"],
            "target_in_stderrs": result["target_in_stderrs"], "warm_start": result["warm"],
            "final_async": result["final"]["async"], "final_sync": result["final"]["sync"],
            "reward_at_budget_diff": result["at_budget"]["async"] - result["at_budget"]["sync"],
            "held_out_gain_async": result["held_out_gain"]["async"],
            "held_out_gain_sync": result["held_out_gain"]["sync"],
            "provenance": {"workdirs": [str(d) for d in modes.values()]}})
    return rows


def _median_row(source: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    median = {"source": source, "seed": "median"}
    for key in ("ratio", "ceiling", "steps_per_s_ratio", "target_in_stderrs", "final_async", "final_sync",
                "final_diff", "reward_at_budget_diff"):
        values = [r[key] for r in rows if r.get(key) is not None]
        median[key] = statistics.median(values) if values else None
    return median


def collect(context: Context) -> list[tuple[str, list[dict[str, Any]]]]:
    """(source, its rows) for every fragment and run directory of the spec."""
    spec = context.spec
    sources = []
    for fragment in spec.fragments:
        path = REPO / fragment
        if not path.exists():
            raise UserError(f"table.fragments: {fragment} does not exist")
        title, rows = parse_summary(path.read_text())
        command = next((line for line in path.read_text().splitlines() if line.startswith("Command:")), "")
        for row in rows:
            row["provenance"] = {"fragment": fragment, "command": command.removeprefix("Command: ").strip("`")}
        sources.append((f"{Path(fragment).name}: {title.removesuffix(' (tiny preset, CPU)')}", rows))
    for base in spec.run_dirs:
        rows = analyse_runs(Path(base), spec.target_fraction)
        if not rows:
            raise UserError(f"table.run_dirs: {base} holds no seed<N>/async and seed<N>/sync runs with "
                            "metrics.jsonl and eval.jsonl")
        sources.append((f"runs in {base}", rows))
    return sources


def build(context: Context) -> Table:
    spec = context.spec
    rows = []
    for source, seeds in collect(context):
        for row in seeds:
            row["source"] = source
            if row.get("final_async") is not None and row.get("final_sync") is not None:
                row["final_diff"] = row["final_async"] - row["final_sync"]
        rows += seeds
        if seeds:
            rows.append(_median_row(source, seeds))
    medians = [r for r in rows if r["seed"] == "median"]
    comparison = []
    for median in medians:
        comparison.append({"quantity": f"time-to-target sync/async, median over seeds ({_short(median['source'])})",
                           "paper": spec.paper[0]["value"], "ours": median["ratio"],
                           "note": f"ceiling from the lock-step phases {_fmt(median['ceiling'])}x"})
        comparison.append({"quantity": f"final eval reward async - sync, median ({_short(median['source'])})",
                           "paper": "> 0", "ours": median["final_diff"],
                           "note": f"async {_fmt(median['final_async'])}, sync {_fmt(median['final_sync'])}"})
    notes = [
        (f"Read from the RL benchmark's summaries ({', '.join(spec.fragments)}) and run directories "
         f"({', '.join(spec.run_dirs) or 'none given'}); each source's commands and machine notes are in "
         "its fragment (BENCHMARKS.md, agentic RL)."),
        ("time-to-target: wall-clock seconds to a fixed-evaluation reward 70% of the way from the warm "
         "start to the lower run's best; 'not reached' is n/a. The ceiling is what overlap alone could "
         "give on that host, (generation + training) / max of the two, from the lock-step run's phases."),
    ]
    return Table(name="async_rl", title="Asynchronous vs lock-step RL: time to target and final reward",
                 scale=context.scale, paper=list(spec.paper), columns=COLUMNS, rows=rows,
                 comparison=comparison, plots=[_plot(context, rows)], notes=notes,
                 status="complete" if rows else "incomplete")


def _short(source: str) -> str:
    return source.split(":")[0]


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _plot(context: Context, rows: list[dict]) -> str:
    name = "async_vs_sync.png"
    seeds = [r for r in rows if r["seed"] != "median"]
    sources = list(dict.fromkeys(r["source"] for r in seeds))
    with figure(context.workdir / name, size=(11, 4.5), columns=2) as (ratio_axes, reward_axes):
        for index, source in enumerate(sources):
            mine = [r for r in seeds if r["source"] == source]
            label = _short(source)
            xs = [index + 0.15 * (i - (len(mine) - 1) / 2) for i in range(len(mine))]
            ratio_axes.scatter(xs, [r.get("ratio") or 0.0 for r in mine], label=label)
            ratio_axes.scatter(xs, [r.get("ceiling") or 0.0 for r in mine], marker="_", s=200, color="grey")
            reward_axes.scatter([r.get("final_sync") for r in mine], [r.get("final_async") for r in mine],
                                label=label)
        ratio_axes.axhline(context.spec.paper[0]["value"], color="black", linestyle="--", label="paper: 2.5x")
        ratio_axes.set_xticks(range(len(sources)), [_short(s) for s in sources], fontsize=7)
        ratio_axes.set_ylabel("time to target, sync / async (grey: overlap ceiling)")
        ratio_axes.set_title("async_rl: one point per seed")
        finals = [v for r in seeds for v in (r.get("final_sync"), r.get("final_async")) if v is not None]
        if finals:
            low, high = min(finals), max(finals)
            reward_axes.plot([low, high], [low, high], color="grey", linestyle=":", label="equal reward")
        reward_axes.set_xlabel("final eval reward, lock-step")
        reward_axes.set_ylabel("final eval reward, async (above the line: async higher)")
    return name


def build_pod(context: Context) -> Table:
    """Commands for both modes per seed on a pod (RL from a pretrained checkpoint), then the
    benchmark's analysis; the planner compiles train steps, not the RL learner, so --plan adds
    nothing here."""
    spec = context.spec
    pod_dir = context.workdir / "pod"
    pod_dir.mkdir(parents=True, exist_ok=True)
    lines = ["#!/bin/sh", "# async vs lock-step RL at pod scale: set YOUR_* first; run from the repository root.", ""]
    rows = []
    for seed in spec.seeds:
        for mode in ("async", "sync"):
            workdir = f"/mnt/shared/repro/async_rl/seed{seed}/{mode}"
            command = ["python", "launch/tpu.py", "--tpu_name=YOUR_TPU", "--zone=YOUR_ZONE", "--code_dir=glm5_jax",
                       "--venv=.venv", f"--workdir={workdir}", "--", "python", "-m", "glm5_jax.rl",
                       f"--config={context.config_argument}", f"--workdir={workdir}", f"--config.mode={mode}",
                       f"--config.seed={seed}", f"--config.total_steps={spec.pod_steps}",
                       "--config.init_from=/mnt/shared/glm5_checkpoint"]
            lines += [shlex.join(command),
                      shlex.join(["python", "-m", "glm5_jax.rl.evaluation", f"--workdir={workdir}"]), ""]
            rows.append({"source": "pod commands", "seed": seed, "mode": mode,
                         "provenance": {"commands": [shlex.join(command)]}})
    lines.append(shlex.join(["python", "benchmarks/bench_rl_async_vs_sync.py", "--skip_run",
                             "--seeds", ",".join(str(s) for s in spec.seeds),
                             "--workdir", "/mnt/shared/repro/async_rl", "--results_name", "rl_pod"]))
    (pod_dir / "commands.sh").write_text("\n".join(lines) + "\n")
    config = load_module(context.experiment).get_config("pod")
    (pod_dir / "async.json").write_text(config.to_json_best_effort(indent=1) + "\n")
    plot = "pod_runs.png"
    with figure(context.workdir / plot) as axes:
        axes.bar(["async", "sync"], [len(spec.seeds)] * 2)
        axes.set_ylabel("runs planned per mode (seeds)")
        axes.set_title("async_rl at pod scale (commands written, not run)")
    return Table(name="async_rl", title="async_rl at pod scale: commands", scale="pod", paper=list(spec.paper),
                 columns=[("source", "source"), ("seed", "seed"), ("mode", "mode")], rows=rows, comparison=[],
                 plots=[plot], notes=[("pod/commands.sh runs both modes per seed and the benchmark's analysis; "
                                       "pod/async.json is the asynchronous run's config. Nothing here ran.")],
                 status="planned")
