"""The async-vs-sync benchmark's markdown: the headline numbers first (reward at equal
wall-clock budget and final reward, per mode and per-seed difference), then per seed, the
learning-rate sweep, the overlap ceilings, each mode's setup, and a per-seed table in the
format ``glm5_jax/reproduce/async_rl.py`` reads."""

from __future__ import annotations

from typing import Any

from rl_bench_analysis import MODES, spread


def fmt(value: float | None, digits: int = 3, missing: str = "n/a") -> str:
    return missing if value is None else f"{value:.{digits}f}"


def _spread_cell(values: list[float | None], digits: int = 3, signed: bool = False) -> str:
    s = spread(values)
    if s["n"] == 0:
        return "n/a"
    sign = "+" if signed else ""
    return (f"**{s['median']:{sign}.{digits}f}** [{s['min']:{sign}.{digits}f}, "
            f"{s['max']:{sign}.{digits}f}]")


def headline(pairs: dict[int, dict[str, Any]], chosen: dict[str, str]) -> list[str]:
    """Per mode and for the per-seed difference async - sync: median [min, max] over seeds."""
    def column(key: str, mode: str | None) -> list[float]:
        if mode is None:
            return [a[key]["async"] - a[key]["sync"] for a in pairs.values()]
        return [a[key][mode] for a in pairs.values()]

    lines = ["| | learning rate | eval reward at equal budget | final eval reward | final held-out reward "
             "| learner steps/s | wall s |", "|---|---|---|---|---|---|---|"]
    for mode in MODES:
        lines.append(f"| {mode} | {chosen[mode]} | {_spread_cell(column('at_budget', mode))} | "
                     f"{_spread_cell(column('final', mode))} | {_spread_cell(column('final_held_out', mode))} | "
                     f"{_spread_cell(column('steps_per_s', mode), 2)} | {_spread_cell(column('wall', mode), 0)} |")
    throughput = [a["steps_per_s"]["async"] / a["steps_per_s"]["sync"] for a in pairs.values()]
    lines.append(f"| async - sync (per seed) | | {_spread_cell(column('at_budget', None), signed=True)} | "
                 f"{_spread_cell(column('final', None), signed=True)} | "
                 f"{_spread_cell(column('final_held_out', None), signed=True)} | "
                 f"async/sync: {_spread_cell(throughput, 2)} | |")
    wins = {key: sum(a[key]["async"] > a[key]["sync"] for a in pairs.values()) for key in ("at_budget", "final")}
    return lines + ["", f"Cells: median over {len(pairs)} seeds [min, max]. Async higher than lock-step in "
                        f"{wins['at_budget']} of {len(pairs)} seeds at equal budget, {wins['final']} of "
                        f"{len(pairs)} at the end."]


def seed_table(pairs: dict[int, dict[str, Any]], min_stderrs: float) -> list[str]:
    lines = ["| seed | warm start reward (pass rate) | budget s | at budget async / sync | final async / sync "
             "| final held-out async / sync (start) | steps/s async/sync | target (std errors above start) "
             "| time to target s async / sync | time ratio sync/async | samples ratio sync/async "
             "| ceiling (g+t)/max(g,t), shared cores |", "|---" * 12 + "|"]
    for seed, a in pairs.items():
        if a["target_outside_noise"]:
            target = f"{a['target']:.3f} ({a['target_in_stderrs']:.1f})"
            times = f"{fmt(a['time_to']['async'], 0, 'not reached')} / {fmt(a['time_to']['sync'], 0, 'not reached')}"
        else:
            target = f"no target outside noise ({fmt(a['target_in_stderrs'], 1)} < {min_stderrs:g})"
            times = "-"
        lines.append(
            f"| {seed} | {a['warm']:.3f} ({a['warm_pass_rate']:.2f}){'' if a['warm_starts_agree'] else ' (modes differ!)'} "
            f"| {a['budget']:.0f} | {a['at_budget']['async']:.3f} / {a['at_budget']['sync']:.3f} "
            f"| {a['final']['async']:.3f} / {a['final']['sync']:.3f} "
            f"| {a['final_held_out']['async']:.3f} / {a['final_held_out']['sync']:.3f} ({a['warm_held_out']:.3f}) "
            f"| {a['steps_per_s']['async'] / a['steps_per_s']['sync']:.2f} | {target} | {times} "
            f"| {fmt(a['time_ratio'], 2)} | {fmt(a['samples_ratio'], 2)} | {a['ceiling']:.2f} |")
    return lines


def learning_rate_table(rows_by_mode: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = ["| mode | learning rate | seeds | budget s | eval reward at budget, per seed | median "
             "| final eval reward, per seed | median | chosen |", "|---" * 9 + "|"]
    for mode, rows in rows_by_mode.items():
        for row in rows:
            lines.append(
                f"| {mode} | {row['learning_rate']} | {','.join(map(str, row['seeds']))} | {row['budget']:.0f} "
                f"| {' / '.join(f'{v:.3f}' for v in row['at_budget'])} | {row['median_at_budget']:.3f} "
                f"| {' / '.join(f'{v:.3f}' for v in row['finals'])} | {row['median_final']:.3f} "
                f"| {'**yes**' if row['chosen'] else ''} |")
    return lines


def ceiling_lines(pairs: dict[int, dict[str, Any]], pinned: dict[str, Any] | None,
                  pinned_cpus: dict[str, str]) -> list[str]:
    shared = spread([a["ceiling"] for a in pairs.values()])
    generate = spread([a["generate"] for a in pairs.values()])
    train = spread([a["train"] for a in pairs.values()])
    throughput = spread([a["steps_per_s"]["async"] / a["steps_per_s"]["sync"] for a in pairs.values()])
    lines = [f"Shared cores (the runs above; lock-step phases): generation {generate['median']:.2f}s + training "
             f"{train['median']:.2f}s per round (medians over seeds) -> ceiling (g + t) / max(g, t) "
             f"{shared['median']:.2f}x [{shared['min']:.2f}, {shared['max']:.2f}]; async achieved "
             f"{throughput['median']:.2f}x the learner steps per second. On shared cores both phases "
             "slow each other down while they overlap, so this ceiling is not what separate devices give."]
    if pinned is None:
        lines.append("Separate cores: not measured (--ceiling_steps 0, or fewer than two CPUs).")
        return lines
    lines.append(
        f"Separate cores (learner on CPU {pinned_cpus['learner']}, rollout worker and its sandboxes on CPU "
        f"{pinned_cpus['rollout']}; `placement.learner_cpus` / `placement.rollout_cpus`, i.e. "
        f"sched_setaffinity as taskset does, set before JAX starts): lock-step generation "
        f"{pinned['generate']:.2f}s + training {pinned['train']:.2f}s per round -> ceiling "
        f"**{pinned['ceiling']:.2f}x**; learner steps/s async {pinned['steps_per_s']['async']:.2f}, lock-step "
        f"{pinned['steps_per_s']['sync']:.2f} -> achieved **{pinned['achieved']:.2f}x**. This is what overlap "
        "buys when generation and training each own a device of this speed: a speed-up in wall-clock "
        "time-to-target above it needs async to reach the target with fewer samples, which is a learning "
        "effect, not overlap.")
    return lines


def reproduce_table(pairs: dict[int, dict[str, Any]]) -> list[str]:
    """The per-seed summary in the column names ``glm5_jax/reproduce/async_rl.py`` parses."""
    columns = {
        "time-to-target ratio sync/async": lambda a: a["time_ratio"],
        "target above start, in std errors": lambda a: a["target_in_stderrs"],
        "ceiling (g+t)/max(g,t)": lambda a: a["ceiling"],
        "learner steps/s async/sync": lambda a: a["steps_per_s"]["async"] / a["steps_per_s"]["sync"],
        "eval reward at equal budget, async - sync": lambda a: a["at_budget"]["async"] - a["at_budget"]["sync"],
        "warm start": lambda a: a["warm"],
        "final eval reward async": lambda a: a["final"]["async"],
        "final eval reward sync": lambda a: a["final"]["sync"],
        "held-out gain async": lambda a: a["final_held_out"]["async"] - a["warm_held_out"],
        "held-out gain sync": lambda a: a["final_held_out"]["sync"] - a["warm_held_out"],
    }
    lines = ["| seed | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for seed, a in pairs.items():
        missing = "not reached" if a["target_outside_noise"] else "no target outside noise"
        lines.append(f"| {seed} | " + " | ".join(fmt(f(a), 2, missing) for f in columns.values()) + " |")
    lines.append("| **median** | " + " | ".join(
        f"**{fmt(spread([f(a) for a in pairs.values()])['median'], 2, 'n/a')}**"
        for f in columns.values()) + " |")
    return lines


def setup_table(setups: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| run | worker XLA flags | learner CPUs | worker CPUs | warm_start.steps | eval every / samples per task |",
             "|---|---|---|---|---|---|"]
    for name, s in setups.items():
        lines.append(f"| {name} | `{s['worker_xla_flags'] or '(none: all cores)'}` | {s['learner_cpus']} | "
                     f"{s['worker_cpus']} | {s['warm_start_steps']} | {s['eval']} |")
    return lines


def setup_of(run: dict[str, Any]) -> dict[str, Any]:
    """What a run used, from its config.json and run_info.json (the CPUs each process had)."""
    config, info = run["config"], run["run_info"]
    workers = info.get("workers") or [{}]
    return {"worker_xla_flags": config.get("worker_xla_flags", ""),
            "learner_cpus": ",".join(map(str, info.get("learner", {}).get("cpus", []))) or "?",
            "worker_cpus": ",".join(map(str, (workers[0] or {}).get("cpus", []))) or "?",
            "warm_start_steps": config["warm_start"]["steps"],
            "eval": f"{config['eval']['every']} / {config['eval']['samples_per_task']}"}
