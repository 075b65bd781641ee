"""The async-vs-sync benchmark's numbers: the learning-rate choice, each seed's pair of runs,
the overlap ceilings and the closing verdict.

Rules (printed with the results):

* **Learning rate**: per mode, the rate whose median over the sweep seeds of the training-task
  evaluation reward at that mode's equal budget (the shortest wall-clock time among the mode's
  sweep runs) is highest; ties go to the lower rate.
* **Equal budget**: per seed, the shorter of the two runs' wall-clock times; each mode's
  evaluation curve is read there (linear between snapshots). **Final**: the last snapshot.
* **Time-to-target**: target = warm start + ``target_fraction`` of the way to the lower of the
  two modes' best fitted reward; reported only when it lies at least ``min_stderrs`` standard
  errors of the warm-start evaluation above the warm start, else "no target outside noise". It
  is read on the monotone fit against samples (equal snapshot cadence in both modes) and turned
  into seconds through the run's own per-step log (``rl_bench_curves``).
* **Overlap ceiling**: with generation taking g and training t seconds per lock-step round,
  overlapping them can shorten a round to max(g, t) at best: (g + t) / max(g, t).
"""

from __future__ import annotations

import statistics
from typing import Any

from rl_bench_curves import (curve, end_wall, first_crossing, interpolate, monotone_fit,
                             phase_seconds, wall_at_samples)

MODES = ("async", "sync")
PAPER_SPEEDUP = 2.5


def spread(values: list[float | None]) -> dict[str, Any]:
    """Median, min and max of the values that exist, and how many there are."""
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(present), "min": min(present), "max": max(present),
            "n": len(present)}


def reward_at(run: dict[str, Any], seconds: float, split: str = "train") -> float:
    return interpolate(*curve(run, split, "wall_time"), seconds)


def choose_learning_rate(runs: dict[tuple[str, int], dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(the chosen rate, one row per rate) for one mode's sweep runs keyed by (rate, seed)."""
    budget = min(end_wall(run) for run in runs.values())
    rows = []
    for rate in dict.fromkeys(rate for rate, _ in runs):
        seeds = sorted(seed for r, seed in runs if r == rate)
        at_budget = [reward_at(runs[rate, seed], budget) for seed in seeds]
        finals = [runs[rate, seed]["train"][-1]["reward"] for seed in seeds]
        rows.append({"learning_rate": rate, "seeds": seeds, "budget": budget, "at_budget": at_budget,
                     "median_at_budget": statistics.median(at_budget), "finals": finals,
                     "median_final": statistics.median(finals)})
    best = max(rows, key=lambda row: (row["median_at_budget"], -float(row["learning_rate"])))
    for row in rows:
        row["chosen"] = row is best
    return best["learning_rate"], rows


def analyse_pair(runs: dict[str, dict[str, Any]], target_fraction: float, min_stderrs: float) -> dict[str, Any]:
    """Everything the tables say about one seed's async and lock-step runs."""
    for mode in MODES:
        if not runs[mode]["train"] or runs[mode]["train"][0]["step"] != 0:
            raise ValueError(f"{runs[mode]['workdir']}: no fixed evaluation of the warm start (step 0)")
    warm_records = {mode: runs[mode]["train"][0] for mode in MODES}
    warm = warm_records["sync"]["reward"]
    warm_stderr = warm_records["sync"].get("reward_stderr") or 0.0
    budget = min(end_wall(runs[mode]) for mode in MODES)
    result: dict[str, Any] = {
        "warm": warm, "warm_stderr": warm_stderr,
        "warm_starts_agree": abs(warm_records["async"]["reward"] - warm) < 1e-9,
        "warm_pass_rate": warm_records["sync"]["pass_rate"], "budget": budget,
        "at_budget": {m: reward_at(runs[m], budget) for m in MODES},
        "held_out_at_budget": {m: reward_at(runs[m], budget, "held_out") for m in MODES},
        "final": {m: runs[m]["train"][-1]["reward"] for m in MODES},
        "final_held_out": {m: runs[m]["held_out"][-1]["reward"] for m in MODES},
        "warm_held_out": runs["sync"]["held_out"][0]["reward"],
        "wall": {m: end_wall(runs[m]) for m in MODES},
        "steps_per_s": {m: runs[m]["metrics"][-1]["step"] / end_wall(runs[m]) for m in MODES},
    }
    fits = {m: monotone_fit(curve(runs[m], "train", "samples")[1]) for m in MODES}
    best_fit = min(max(fits[m]) for m in MODES)
    target = warm + target_fraction * (best_fit - warm)
    result.update(best_fit=best_fit, target=target,
                  target_in_stderrs=(target - warm) / warm_stderr if warm_stderr else None)
    result["samples_to"], result["time_to"] = {}, {}
    result["target_outside_noise"] = bool(warm_stderr) and target - warm >= min_stderrs * warm_stderr
    for mode in MODES:
        crossing = None
        if result["target_outside_noise"]:
            crossing = first_crossing(curve(runs[mode], "train", "samples")[0], fits[mode], target)
        result["samples_to"][mode] = crossing
        result["time_to"][mode] = wall_at_samples(runs[mode], crossing) if crossing is not None else None
    times, samples = result["time_to"], result["samples_to"]
    result["time_ratio"] = times["sync"] / times["async"] if times["sync"] and times["async"] else None
    result["samples_ratio"] = (samples["sync"] / samples["async"]
                               if samples["sync"] and samples["async"] else None)
    generate, train = phase_seconds(runs["sync"])
    result.update(generate=generate, train=train, ceiling=(generate + train) / max(generate, train))
    return result


def pinned_ceiling(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """From runs with the learner and the worker on separate cores: the lock-step run's phase
    times give the ceiling; the two runs' learner steps per second give what overlap achieved."""
    generate, train = phase_seconds(runs["sync"])
    rates = {m: runs[m]["metrics"][-1]["step"] / end_wall(runs[m]) for m in runs}
    return {"generate": generate, "train": train, "ceiling": (generate + train) / max(generate, train),
            "steps_per_s": rates,
            "achieved": rates["async"] / rates["sync"] if "async" in rates else None}


def verdict(pairs: dict[int, dict[str, Any]], pinned: dict[str, Any] | None) -> list[str]:
    """Sentences that say whether "async is 2.5x faster with a higher reward" holds here,
    computed from the numbers."""
    ratios = spread([a["time_ratio"] for a in pairs.values()])
    final_diff = spread([a["final"]["async"] - a["final"]["sync"] for a in pairs.values()])
    budget_diff = spread([a["at_budget"]["async"] - a["at_budget"]["sync"] for a in pairs.values()])
    throughput = spread([a["steps_per_s"]["async"] / a["steps_per_s"]["sync"] for a in pairs.values()])
    ceilings = spread([a["ceiling"] for a in pairs.values()])
    n = len(pairs)
    higher_final = sum(a["final"]["async"] > a["final"]["sync"] for a in pairs.values())
    lines = []
    if ratios["n"] == 0:
        speed_holds = False
        lines.append(f"Speed: no seed of {n} has a target outside the evaluation noise, so time-to-target "
                     f"cannot be measured; async ran {throughput['median']:.2f}x the lock-step learner "
                     f"steps per second (median), {'under' if throughput['median'] <= ceilings['median'] else 'above'} "
                     f"the shared-core ceiling of {ceilings['median']:.2f}x.")
    else:
        speed_holds = ratios["median"] >= PAPER_SPEEDUP
        samples = spread([a["samples_ratio"] for a in pairs.values()])
        lines.append(f"Speed: median time-to-target ratio sync/async {ratios['median']:.2f}x over {ratios['n']} "
                     f"of {n} seeds with a target outside the noise ({ratios['min']:.2f}-{ratios['max']:.2f}), "
                     f"{'at or above' if speed_holds else 'below'} the paper's {PAPER_SPEEDUP}x; roughly learner "
                     f"throughput async/sync {throughput['median']:.2f}x (median; shared-core ceiling "
                     f"{ceilings['median']:.2f}x) times samples-to-target sync/async "
                     f"{samples['median']:.2f}x ({'async needed fewer samples' if samples['median'] > 1 else 'async needed as many or more samples'}).")
    if pinned:
        lines.append(f"Separate cores (learner on one, worker on another): ceiling {pinned['ceiling']:.2f}x, "
                     f"achieved {pinned['achieved']:.2f}x learner steps per second: what separate devices "
                     f"would give at this scale, {'short of' if pinned['ceiling'] < PAPER_SPEEDUP else 'enough for'} "
                     f"{PAPER_SPEEDUP}x from overlap alone.")
    reward_holds = final_diff["median"] > 0
    lines.append(f"Reward: final evaluation reward async - sync median {final_diff['median']:+.3f} "
                 f"({final_diff['min']:+.3f} to {final_diff['max']:+.3f}; async higher in {higher_final} of {n} "
                 f"seeds); at equal wall-clock budget {budget_diff['median']:+.3f} "
                 f"({budget_diff['min']:+.3f} to {budget_diff['max']:+.3f}).")
    holds = speed_holds and reward_holds
    parts = []
    if not speed_holds:
        parts.append("it is not 2.5x faster" if ratios["n"] else "its speed-up cannot be measured")
    if not reward_holds:
        parts.append("its final reward is not higher")
    lines.append("**Verdict: the paper's \"async RL is 2.5x faster and reaches a higher reward\" "
                 + ("holds at this scale.**" if holds else f"does not hold at this scale: {'; '.join(parts)}.**"))
    return lines
