"""Fixed evaluation of an RL run: the same tasks and sampling seeds for every policy snapshot.

Reward on the training draws is a noisy yardstick (4 of ~100 tasks per learner step; a
20-step mean swings by +-0.15) and is measured on the very samples being trained on. Here a
snapshot is scored on a fixed task set with fixed seeds, so two snapshots, or two runs,
differ only through their weights (common random numbers):

* during the run the loop keeps a snapshot of the warm start (step 0) and of every
  ``eval.every``-th learner step: a hard link to the weights it has just published (no copy,
  no time on the clock), listed in ``DIR/eval_snapshots/index.jsonl`` with the step,
  wall-clock time, policy version and samples trained on so far;
* afterwards ``python -m glm5_jax.rl.evaluation --workdir DIR`` samples
  ``eval.samples_per_task`` answers per task on the training tasks and on the held-out tasks
  (``tasks.held_out_fraction``: never trained on, not even by the warm start) and appends one
  line per snapshot to ``DIR/eval.jsonl``. Snapshots already there are skipped: it resumes.

Evaluating after the run rather than inside it keeps evaluation off both modes' clocks (in
async mode the workers would run ahead while the learner evaluated) and gives it every core.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from glm5_jax.rl.environments import CodeEnvironment
from glm5_jax.rl.experiment_setup import (SPLITS, environment_factory, make_task_splits,
                                          make_tokenizer)
from glm5_jax.rl.rewards import TERMS
from glm5_jax.rl.rollout import GroupOrder, run_orders
from glm5_jax.rl.tasks import CodeTask
from glm5_jax.rl.trajectory import Trajectory

SNAPSHOTS = "eval_snapshots"
INDEX = "index.jsonl"
RESULTS = "eval.jsonl"


# During the run ------------------------------------------------------------------------------
def keep_snapshot(workdir: str | os.PathLike, policy_file: str | os.PathLike, step: int,
                  policy_version: int, wall_time: float, samples: int) -> None:
    """Keep the published weights of ``step`` for evaluation (a hard link where possible)."""
    directory = Path(workdir) / SNAPSHOTS
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"step_{step}.msgpack"
    target.unlink(missing_ok=True)  # a resumed run redoes a step: its newer weights win
    try:
        os.link(policy_file, target)
    except OSError:  # another filesystem, or no hard links there
        shutil.copyfile(policy_file, target)
    entry = {"step": step, "policy_version": policy_version, "wall_time": wall_time,
             "samples": samples, "file": target.name}
    with open(directory / INDEX, "a") as handle:
        handle.write(json.dumps(entry) + "\n")


def read_snapshots(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    """Index entries by step (the last entry of a step wins), oldest first."""
    path = Path(workdir) / SNAPSHOTS / INDEX
    if not path.exists():
        return []
    by_step = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
            by_step[int(entry["step"])] = entry
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}:{number}: malformed snapshot entry {line!r} ({error})") from None
    return [by_step[step] for step in sorted(by_step)]


def read_results(workdir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(workdir) / RESULTS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Scoring one snapshot ------------------------------------------------------------------------
class FixedPolicy:
    """A policy that never changes: what ``run_orders`` needs from a subscriber."""

    def __init__(self, variables: dict[str, Any], version: int) -> None:
        self.variables = variables
        self.version = version

    def refresh(self) -> bool:
        return False


def summarise(trajectories: Sequence[Trajectory], tasks: Sequence[CodeTask]) -> dict[str, float]:
    """Mean episode reward, pass rate (overall and per difficulty level) and reward terms;
    crashed sandboxes are counted, not scored."""
    scored = [t for t in trajectories if not t.env_crashed]
    count = max(len(scored), 1)
    passed_tasks = {t.task_id for t in scored if t.passed}
    level_of = {task.task_id: task.difficulty for task in tasks}
    by_level: dict[int, list[bool]] = {}
    for trajectory in scored:
        by_level.setdefault(level_of[trajectory.task_id], []).append(trajectory.passed)
    mean = sum(t.reward for t in scored) / count
    variance = sum((t.reward - mean) ** 2 for t in scored) / max(len(scored) - 1, 1)
    return {
        "reward": mean,
        "reward_stderr": math.sqrt(variance / count),  # of the mean, samples taken as independent
        "pass_rate": sum(t.passed for t in scored) / count,
        **{f"pass_rate/level_{level}": sum(passed) / len(passed)
           for level, passed in sorted(by_level.items())},
        "tasks_solved_fraction": len(passed_tasks) / max(len(tasks), 1),  # pass@k, k = samples per task
        **{f"reward/{term}": sum(t.reward_terms.get(term, 0.0) for t in scored) / count
           for term in TERMS},
        "mean_turns": sum(len(t.turns) for t in scored) / count,
        "episodes": float(len(trajectories)), "crashed": float(len(trajectories) - len(scored)),
    }


def evaluate_policy(variables: dict[str, Any], tasks: Sequence[CodeTask],
                    make_env: Callable[[CodeTask], CodeEnvironment], sampler, executor, tokenizer,
                    samples_per_task: int, seed: int, max_context: int | None) -> dict[str, float]:
    """Play ``samples_per_task`` episodes of every task with fixed weights and seeds."""
    if samples_per_task < 1:
        raise ValueError(f"eval.samples_per_task={samples_per_task} must be >= 1")
    orders = [GroupOrder(f"eval{i}", i, tuple(f"eval{i}:{k}" for k in range(samples_per_task)), seed)
              for i in range(len(tasks))]
    trajectories: list[Trajectory] = []
    run_orders(orders, lambda index: make_env(tasks[index]), FixedPolicy(variables, -1), sampler,
               executor, tokenizer, trajectories.append, refresh_each_turn=False,
               max_context=max_context)
    return summarise(trajectories, tasks)


# After the run -------------------------------------------------------------------------------
def load_run_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {workdir} an RL run directory?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def evaluate_run(workdir: str | os.PathLike, samples_per_task: int | None = None,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Score every snapshot of ``workdir`` not yet in ``eval.jsonl``; returns all results."""
    from flax import serialization

    from glm5_jax.eval.limits import SandboxLimits
    from glm5_jax.eval.pool import SandboxPool
    from glm5_jax.rl.policy import policy_model_config
    from glm5_jax.rl.sampler import PolicySampler

    workdir = Path(workdir)
    config = load_run_config(workdir)
    settings = config.eval
    samples_per_task = samples_per_task or settings.samples_per_task
    tokenizer = make_tokenizer(config)
    splits = {name: tasks for name, tasks in make_task_splits(config).items() if tasks}
    model_config = policy_model_config(config, tokenizer.vocab_size, tokenizer.bos_id,
                                       tokenizer.eos_id, tokenizer.pad_id)
    make_env = environment_factory(config)
    sampler = PolicySampler(model_config, settings.batch_rows, config.max_new_tokens, config.temperature)
    done = {(r["step"], r["split"]) for r in read_results(workdir)
            if r.get("samples_per_task") == samples_per_task}
    with SandboxPool(workers=settings.sandbox_workers or None,
                     limits=SandboxLimits(timeout_s=config.sandbox_timeout_s)) as sandbox:
        for snapshot in read_snapshots(workdir):
            todo = [split for split in SPLITS
                    if split in splits and (snapshot["step"], split) not in done]
            if not todo:
                continue
            data = (workdir / SNAPSHOTS / snapshot["file"]).read_bytes()
            variables = serialization.msgpack_restore(data)
            for split in todo:
                start = time.perf_counter()
                scores = evaluate_policy(variables, splits[split], make_env, sampler, sandbox,
                                         tokenizer, samples_per_task, settings.seed, config.seq_len)
                record = {**snapshot, "split": split, "tasks": len(splits[split]),
                          "samples_per_task": samples_per_task, **scores,
                          "eval_seconds": time.perf_counter() - start}
                record.pop("file")
                with open(workdir / RESULTS, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                log(f"step {snapshot['step']} {split}: reward {scores['reward']:.3f} pass "
                    f"{scores['pass_rate']:.3f} ({record['eval_seconds']:.1f}s)")
    return read_results(workdir)


def main(argv: list[str]) -> None:
    del argv
    evaluate_run(_WORKDIR.value, _SAMPLES.value or None)


if __name__ == "__main__":  # flags only here: importing this module must not define them
    from absl import app, flags

    _WORKDIR = flags.DEFINE_string("workdir", None, "RL run directory with eval_snapshots/")
    _SAMPLES = flags.DEFINE_integer("samples_per_task", 0, "0: the run's eval.samples_per_task")
    flags.mark_flag_as_required("workdir")
    app.run(main)
