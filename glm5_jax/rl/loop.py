"""The RL loop, asynchronous or in lock-step, reading top to bottom.

    warm start -> learner (compiled) -> publish version 0 -> start workers and wait for them
    -> clock starts -> per step: batch from the buffer (async) or from one lock-step round
    (sync) -> train -> every ``sync_every`` steps publish version + 1 -> log, checkpoint

Both modes use the same workers, buffer, batching and learner; only *when* rollouts are
dispatched differs, so their wall-clock curves compare like for like. The clock starts once
every worker has compiled its sampler and the learner its step (compilation is a one-off
cost that both modes pay identically and that would otherwise dominate a short CPU run).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections

from glm5_jax.rl.batching import build_batch
from glm5_jax.rl.buffer import TrajectoryBuffer, staleness_histogram
from glm5_jax.rl.checkpoint import RunCheckpointer
from glm5_jax.rl.coordinator import RolloutCoordinator
from glm5_jax.rl.evaluation import keep_snapshot
from glm5_jax.rl.experiment_setup import environment_factory, make_tasks, make_tokenizer
from glm5_jax.rl.learner import Learner
from glm5_jax.rl.policy import PolicyPublisher, policy_model_config
from glm5_jax.rl.rewards import TERMS
from glm5_jax.rl.rollout_worker import configure_jax
from glm5_jax.rl.warm_start import warm_start_variables

MODES = ("async", "sync")
BACKENDS = ("process", "ray")

StepHook = Callable[[int, RolloutCoordinator], None]


def make_pool(config: ml_collections.ConfigDict, policy_dir: str):
    if config.backend == "process":
        from glm5_jax.rl.process_pool import ProcessWorkerPool

        return ProcessWorkerPool(config.num_workers, config, policy_dir)
    if config.backend == "ray":
        from glm5_jax.rl.ray_pool import RayWorkerPool

        return RayWorkerPool(config.num_workers, config, policy_dir)
    raise ValueError(f"backend={config.backend!r}; allowed: {list(BACKENDS)}")


def validate(config: ml_collections.ConfigDict) -> None:
    if config.mode not in MODES:
        raise ValueError(f"mode={config.mode!r}; allowed: {list(MODES)}")
    if config.groups_per_batch % config.groups_per_order:
        raise ValueError(f"groups_per_batch={config.groups_per_batch} must be a multiple of "
                         f"groups_per_order={config.groups_per_order}")
    if config.eval.every < 0:
        raise ValueError(f"eval.every={config.eval.every} must be >= 0 (0: keep no snapshots)")
    if config.capacity_groups < config.groups_per_batch:
        raise ValueError(f"capacity_groups={config.capacity_groups} must hold at least one batch "
                         f"(groups_per_batch={config.groups_per_batch})")


def train(config: ml_collections.ConfigDict, workdir: str | Path, log: Callable[[str], None] = print,
          on_step: StepHook | None = None) -> dict[str, Any]:
    """Run (or resume) ``config`` in ``workdir``; returns the last metrics record."""
    validate(config)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    configure_jax(ml_collections.ConfigDict({"compilation_cache_dir": config.compilation_cache_dir}))
    (workdir / "config.json").write_text(config.to_json(indent=2))
    tokenizer, tasks = make_tokenizer(config), make_tasks(config)
    model_config = policy_model_config(config, tokenizer.vocab_size, tokenizer.bos_id,
                                       tokenizer.eos_id, tokenizer.pad_id)
    make_env = environment_factory(config)

    def prompt_of(task) -> str:
        return make_env(task).reset()

    variables, warm_info = warm_start_variables(config, model_config, tasks, tokenizer, prompt_of, log)
    learner = Learner(config, model_config, variables)
    log(f"learner step compiled in {learner.compile_seconds:.1f}s")
    buffer = TrajectoryBuffer(config.group_size, config.max_staleness, config.capacity_groups)
    checkpointer = RunCheckpointer(workdir / "checkpoints")
    start_step, version, elapsed, resumes = 0, 0, 0.0, 0
    restored = checkpointer.restore_latest(learner.state)
    if restored is not None:
        learner.state, run = restored
        buffer.load_state_dict(run["buffer"])
        start_step, version, elapsed = run["step"], run["policy_version"], run["wall_time"]
        resumes = run["resumes"] + 1
        log(f"resumed at step {start_step}, policy version {version}")
    publisher = PolicyPublisher(workdir / "policy")
    push = publisher.publish(version, learner.variables)
    if config.eval.every and start_step == 0:  # the warm start: where both modes begin
        keep_snapshot(workdir, publisher.path_of(version), 0, version, 0.0, 0)

    pool = make_pool(config, str(workdir / "policy"))
    coordinator = RolloutCoordinator(pool, buffer, len(tasks), config.groups_per_order,
                                     config.seed + 7919 * resumes, config.max_worker_restarts,
                                     log, order_prefix=f"r{resumes}", lock_step=config.mode == "sync")
    record: dict[str, Any] = {}
    try:
        pool.start_all()
        coordinator.wait_until_ready(config.num_workers, config.worker_start_timeout_s)
        log(f"{config.num_workers} rollout workers ready ({config.backend} backend); "
            f"mode {config.mode}")
        coordinator.dispatch_enabled = True
        if config.mode == "async":
            coordinator.start_background()
        clock = time.perf_counter() - elapsed
        busy_at_start, idle_s, train_s_total, trained_tokens = coordinator.worker_busy_s, 0.0, 0.0, 0
        for step in range(start_step, config.total_steps):
            wait_start = time.perf_counter()
            if config.mode == "async":
                groups = coordinator.take(config.groups_per_batch, version, config.batch_timeout_s)
            else:
                groups = coordinator.lock_step_round(config.groups_per_batch, version,
                                                     config.batch_timeout_s)
            train_start = time.perf_counter()
            idle_s += train_start - wait_start
            batch, info = build_batch(groups, config.seq_len, config.gamma,
                                      config.normalize_advantages_by_std, tokenizer.pad_id)
            train_metrics = learner.train(batch)
            train_s = time.perf_counter() - train_start
            train_s_total += train_s
            trained_tokens += info.policy_tokens
            histogram = staleness_histogram(groups, version)
            if (step + 1) % config.sync_every == 0:
                version += 1
                push = publisher.publish(version, learner.variables)
                if config.reset_optimizer_on_push:
                    learner.reset_optimizer()
            now = time.perf_counter()
            wall = now - clock
            run_wall = max(now - (clock + elapsed), 1e-9)  # this process's share of the clock
            shared = coordinator.metrics()
            record = {
                "step": step + 1, "wall_time": wall, "policy_version": version,
                "reward": info.mean_reward, "pass_rate": info.pass_rate,
                **{f"reward/{term}": info.reward_terms.get(term, 0.0) for term in TERMS},
                "samples": info.samples, "mean_turns": info.mean_turns,
                "truncated_samples": info.truncated_samples,
                "staleness_histogram": histogram, "dropped_samples": shared["buffer/dropped"],
                "learner_idle_fraction": idle_s / run_wall,
                "worker_utilisation": (shared["workers/busy_s"] - busy_at_start)
                / (run_wall * config.num_workers),
                "tokens_per_s/generated": shared["workers/generated_tokens"] / run_wall,
                "tokens_per_s/trained": trained_tokens / run_wall,
                "train_s": train_s, "wait_s": train_start - wait_start,
                **{f"learner/{k}": v for k, v in train_metrics.items()}, **shared, **push,
            }
            with open(workdir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
            if step % config.log_every == 0 or step + 1 == config.total_steps:
                log(f"step {step + 1} t={wall:.1f}s v={version} reward={info.mean_reward:.3f} "
                    f"pass={info.pass_rate:.2f} idle={record['learner_idle_fraction']:.2f} "
                    f"util={record['worker_utilisation']:.2f} stale={histogram}")
            if config.checkpoint_every and ((step + 1) % config.checkpoint_every == 0
                                            or step + 1 == config.total_steps):
                with coordinator.lock:
                    buffer_state = buffer.state_dict()
                checkpointer.save(step + 1, learner.state, {
                    "step": step + 1, "policy_version": version, "wall_time": wall,
                    "resumes": resumes, "buffer": buffer_state})
            if config.eval.every and ((step + 1) % config.eval.every == 0
                                      or step + 1 == config.total_steps):
                keep_snapshot(workdir, publisher.path_of(version), step + 1, version, wall,
                              shared["buffer/consumed"])
            if on_step is not None:
                on_step(step + 1, coordinator)
    finally:
        coordinator.stop()
        pool.close()
        checkpointer.close()
    return {**record, **warm_info}
