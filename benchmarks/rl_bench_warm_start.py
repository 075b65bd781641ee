"""How strong a supervised warm start is: its fixed-evaluation pass rate, per seed and step count.

    python benchmarks/rl_bench_warm_start.py --steps 300,400,500 --seeds 0,1,2,3,4 \
        --workdir /tmp/glm5_rl_warm_probe

Used to choose ``warm_start.steps`` for ``experiments/rl/tiny_*_warm40.py``. For every (steps,
seed) it builds the warm start exactly as an RL run of ``--config`` would (same cache under
``warm_start.cache_dir``, keyed by content, so the RL runs of the benchmark reuse it), keeps it
as the step-0 snapshot of a run directory and scores it with ``glm5_jax.rl.evaluation`` (the
same tasks, samples and seeds as the step-0 point of every RL run's curve). Prints a table of
pass rate and reward per seed, and their median, on the training and held-out tasks. One
process, one job at a time; a rerun reuses the cached warm starts and finished evaluations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def probe(config_path: str, steps: int, seed: int, workdir: Path, overrides: dict) -> dict:
    """The step-0 fixed evaluation of the warm start of (steps, seed), by split."""
    from glm5_jax.rl.eval_snapshots import write_eval_snapshot
    from glm5_jax.rl.evaluation import evaluate_run, read_results, read_snapshots
    from glm5_jax.rl.experiment_setup import environment_factory, make_tasks, make_tokenizer
    from glm5_jax.rl.policy import policy_model_config
    from glm5_jax.rl.warm_start import warm_start_variables
    from glm5_jax.train.experiment import load_experiment

    config = load_experiment(config_path)
    config.seed = seed
    config.warm_start.steps = steps
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = config
        for part in path:
            node = node[part]
        node[leaf] = type(node[leaf])(value)
    workdir.mkdir(parents=True, exist_ok=True)
    if not read_snapshots(workdir):
        tokenizer, tasks = make_tokenizer(config), make_tasks(config)
        model_config = policy_model_config(config, tokenizer.vocab_size, tokenizer.bos_id,
                                           tokenizer.eos_id, tokenizer.pad_id)
        make_env = environment_factory(config)
        start = time.perf_counter()
        variables, info = warm_start_variables(config, model_config, tasks, tokenizer,
                                               lambda task: make_env(task).reset(), log=lambda m: None)
        print(f"warm start steps={steps} seed={seed}: {time.perf_counter() - start:.1f}s "
              f"({'cached' if info['warm_start/cached'] else 'trained'})", flush=True)
        (workdir / "config.json").write_text(config.to_json(indent=2))
        write_eval_snapshot(workdir, variables, 0, 0, 0.0, 0)
    if not read_results(workdir):
        start = time.perf_counter()
        evaluate_run(workdir, log=lambda m: None)
        print(f"  evaluated in {time.perf_counter() - start:.1f}s", flush=True)
    return {r["split"]: r for r in read_results(workdir) if r["step"] == 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="experiments/rl/tiny_async.py")
    parser.add_argument("--steps", default="300,400,500", help="warm_start.steps values")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--workdir", default="/tmp/glm5_rl_warm_probe")
    parser.add_argument("--set", action="append", default=[],
                        help="KEY=VALUE config override (e.g. eval.samples_per_task=2)")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    seeds = [int(s) for s in args.seeds.split(",")]
    lines = ["| warm_start.steps | split | " + " | ".join(f"seed {s} pass (reward)" for s in seeds)
             + " | median pass | median reward |", "|---" * (len(seeds) + 4) + "|"]
    for steps in (int(s) for s in args.steps.split(",")):
        by_seed = {seed: probe(args.config, steps, seed, Path(args.workdir) / f"steps{steps}_seed{seed}",
                               overrides) for seed in seeds}
        for split in ("train", "held_out"):
            rows = [by_seed[seed][split] for seed in seeds]
            lines.append(f"| {steps} | {split} | " + " | ".join(
                f"{r['pass_rate']:.2f} ({r['reward']:.2f})" for r in rows)
                + f" | {statistics.median(r['pass_rate'] for r in rows):.2f}"
                + f" | {statistics.median(r['reward'] for r in rows):.2f} |")
    text = "\n".join(lines)
    print(text)
    (Path(args.workdir) / "warm_start_pass_rates.md").write_text(text + "\n")
    (Path(args.workdir) / "command.json").write_text(json.dumps(vars(args)) + "\n")


if __name__ == "__main__":
    main()
