"""A rollout worker holding one order at a time against one holding several (``sampler.
orders_in_flight``): the same orders, seeds and policy, side by side in one process.

    python benchmarks/bench_orders_in_flight.py                      # 16 orders, in flight 1 vs 2
    python benchmarks/bench_orders_in_flight.py --in-flight 2,3 --repeats 5

The worker is what ``RolloutWorker.serve`` runs: ``ContinuousRollout`` over the continuous
sampler and a sandbox pool, on ``experiments/rl/tiny_async_warm40.py``'s warm-started policy
(~40% pass rate, so episodes differ: a pass ends after one turn, a failure gets a second,
debugging turn; generations end at EOS or at max_new_tokens). With one order in flight the
next order starts when the last episode of the current one has its verdict; with K, a new
order joins as soon as one of the K is reported. Every mode plays the same episodes and draws
the same tokens (a request's randomness is its own): the script checks that the trajectories
are equal, so the modes differ only in how the slots are kept busy.

Printed per mode (median over repeats, modes alternated): wall seconds for all orders,
episodes/s, generated tokens/s, mean occupied slots per decode call, and the ratio of
episodes/s to one order in flight. The load average is printed: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class FixedPolicy:
    """One version for the whole benchmark (no weight updates: they are not what is compared)."""

    def __init__(self, variables) -> None:
        self.variables, self.version, self._fresh = variables, 0, True

    def refresh(self) -> bool:
        fresh, self._fresh = self._fresh, False
        return fresh


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=16)
    parser.add_argument("--in-flight", default="2", help="comma-separated K > 1, each compared with 1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import numpy as np

    from glm5_jax.eval.pool import SandboxPool
    from glm5_jax.rl.continuous_rollout import ContinuousRollout
    from glm5_jax.rl.experiment_setup import (
        environment_factory,
        make_tasks,
        make_tokenizer,
    )
    from glm5_jax.rl.policy import policy_model_config
    from glm5_jax.rl.rollout import GroupOrder
    from glm5_jax.rl.rollout_worker import configure_compilation_cache
    from glm5_jax.rl.sampler import make_sampler
    from glm5_jax.rl.warm_start import warm_start_variables
    from glm5_jax.train.experiment import load_experiment

    config = load_experiment(REPO / "experiments" / "rl" / "tiny_async_warm40.py")
    config.environment.kind = "debug"  # a failed first attempt gets a second turn
    config.seq_len = 112  # holds two debugging turns (tiny_async.py)
    config.sampler.kind = "continuous"
    configure_compilation_cache(config.compilation_cache_dir)
    tokenizer, tasks = make_tokenizer(config), make_tasks(config)
    model_config = policy_model_config(config, tokenizer.vocab_size, tokenizer.bos_id,
                                       tokenizer.eos_id, tokenizer.pad_id)
    env_of = environment_factory(config)
    variables, _ = warm_start_variables(config, model_config, tasks, tokenizer,
                                        lambda task: env_of(task).reset(), log=lambda _: None)
    sampler = make_sampler(config, model_config)
    slots = sampler.batcher.slots
    rng = np.random.default_rng(args.seed)
    orders = []
    for o in range(args.orders):
        groups = []
        for g in range(config.groups_per_order):
            group_id = f"o{o}g{g}"
            groups.append(GroupOrder(group_id, int(rng.integers(len(tasks))),
                                     tuple(f"{group_id}e{i}" for i in range(config.group_size)),
                                     seed=1000 * o + g))
        orders.append((f"o{o}", groups))

    def play(in_flight: int, count: int) -> dict:
        emitted, occupancy = [], []
        with SandboxPool(workers=config.sandbox_workers) as pool:
            rollout = ContinuousRollout(lambda i: env_of(tasks[i]), FixedPolicy(variables), sampler, pool,
                                        tokenizer, emitted.append, max_context=config.seq_len)
            waiting = list(orders[:count])
            start = time.perf_counter()
            while waiting and rollout.live_orders < in_flight:
                rollout.add(*waiting.pop(0))
            while not rollout.idle:
                if not sampler.batcher.idle:
                    occupancy.append(sampler.batcher.running)
                for _ in rollout.step():
                    if waiting:
                        rollout.add(*waiting.pop(0))
            wall = time.perf_counter() - start
        tokens = sum(t.num_action_tokens for t in emitted)
        return {"wall": wall, "episodes": len(emitted), "tokens": tokens,
                "occupancy": float(np.mean(occupancy)) if occupancy else 0.0,
                "trajectories": {t.episode_id: [turn.action_tokens for turn in t.turns] for t in emitted},
                "turns": sum(len(t.turns) for t in emitted), "passed": sum(t.passed for t in emitted)}

    modes = [1] + [int(k) for k in args.in_flight.split(",")]
    play(max(modes), min(len(orders), 2 * max(modes)))  # compile every program both modes use
    results: dict[int, list[dict]] = {k: [] for k in modes}
    for repeat in range(args.repeats):
        for k in (modes if repeat % 2 == 0 else modes[::-1]):
            results[k].append(play(k, len(orders)))
    reference = results[1][0]["trajectories"]
    same = all(r["trajectories"] == reference for runs in results.values() for r in runs)
    load = os.getloadavg()
    first = results[1][0]
    print(f"orders {len(orders)} x {config.groups_per_order} groups x {config.group_size} episodes; slots "
          f"{slots}; debug env, max_turns {config.environment.max_turns}; episodes {first['episodes']}, "
          f"turns {first['turns']}, passed {first['passed']}; repeats {args.repeats}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    print(f"same trajectories in every mode and repeat: {'yes' if same else 'NO'}")
    print("| orders in flight | wall s (median) | episodes/s | tokens/s | mean occupied slots | "
          "episodes/s vs 1 | every repeat's ratio |")
    print("|---|---|---|---|---|---|---|")
    base = [r["episodes"] / r["wall"] for r in results[1]]
    for k in modes:
        rates = [r["episodes"] / r["wall"] for r in results[k]]
        ratios = [a / b for a, b in zip(rates, base, strict=True)]
        print(f"| {k} | {statistics.median(r['wall'] for r in results[k]):.2f} | "
              f"{statistics.median(rates):.2f} | "
              f"{statistics.median(r['tokens'] / r['wall'] for r in results[k]):.0f} | "
              f"{statistics.median(r['occupancy'] for r in results[k]):.2f} | "
              f"{statistics.median(ratios):.2f}x | {', '.join(f'{x:.2f}' for x in ratios)} |")
    if not same:
        sys.exit("trajectories differ between modes: the comparison is not of the same work")


if __name__ == "__main__":
    main()
