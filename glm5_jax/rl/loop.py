"""The RL loop, asynchronous or in lock-step, reading top to bottom.

    placement (learner devices and mesh) -> warm start -> learner (compiled) -> weight sender,
    publish version 0 -> start workers on their own devices and wait for them -> run_info.json
    -> clock starts -> per step: batch from the buffer (async) or from one lock-step round
    (sync) -> train -> every ``sync_every`` steps publish version + 1 (sync: and wait until
    every worker holds it) -> log, checkpoint

Both modes use the same workers, buffer, batching and learner; only *when* rollouts are
dispatched differs, so their wall-clock curves compare like for like. The clock starts once
every worker has compiled its sampler and the learner its step (compilation is a one-off
cost that both modes pay identically and that would otherwise dominate a short CPU run).

Weights travel shard by shard from the learner's devices to the workers' (``weight_sender``);
an asynchronous run trains on while a version is in flight, a lock-step run waits for it. A
learner of several processes runs this same loop in each; process 0 alone runs the workers,
the buffer and the files, and shares each batch (``learner_processes``).
"""

from __future__ import annotations

import contextlib
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
from glm5_jax.rl.eval_snapshots import write_eval_snapshot
from glm5_jax.rl.experiment_setup import environment_factory, make_tasks, make_tokenizer
from glm5_jax.rl.learner import Learner
from glm5_jax.rl.learner_processes import (in_turn, is_main_process, share_batch,
                                           weight_sync_totals)
from glm5_jax.rl.placement import (learner_devices, learner_devices_beside_workers, process_record,
                                   resolved_rollout_platform, validate_placement)
from glm5_jax.rl.policy import policy_model_config
from glm5_jax.rl.rewards import TERMS
from glm5_jax.rl.rollout_worker import configure_compilation_cache, worker_launch
from glm5_jax.rl.warm_start import warm_start_variables
from glm5_jax.rl.weight_sender import WeightSender, gather_addresses, sender_hosts
from glm5_jax.run_info import describe, write_run_info
from glm5_jax.sharding import MeshSpecError, make_mesh

MODES = ("async", "sync")
BACKENDS = ("process", "ray")

StepHook = Callable[[int, RolloutCoordinator], None]


def make_pool(config: ml_collections.ConfigDict, launch: str):
    if config.backend == "process":
        from glm5_jax.rl.process_pool import ProcessWorkerPool

        return ProcessWorkerPool(config.num_workers, config, launch)
    if config.backend == "ray":
        from glm5_jax.rl.ray_pool import RayWorkerPool

        return RayWorkerPool(config.num_workers, config, launch)
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
    if config.backend not in BACKENDS:
        raise ValueError(f"backend={config.backend!r}; allowed: {list(BACKENDS)}")
    if config.weight_sync.streams < 1 or config.weight_sync.timeout_s <= 0:
        raise ValueError(f"weight_sync.streams={config.weight_sync.streams} must be >= 1 and "
                         f"weight_sync.timeout_s={config.weight_sync.timeout_s} > 0")
    sampler = config.get("sampler") or {}
    in_flight = sampler.get("orders_in_flight", 1)
    if in_flight < 1:
        raise ValueError(f"sampler.orders_in_flight={in_flight} must be >= 1")
    if in_flight > 1 and sampler.get("kind", "batch") != "continuous":
        raise ValueError(f"sampler.orders_in_flight={in_flight} needs sampler.kind='continuous' (a "
                         f"batch sampler runs one order at a time), not {sampler.get('kind', 'batch')!r}")
    validate_placement(config)


def learner_mesh(config: ml_collections.ConfigDict):
    """``config.mesh`` over the learner's devices (``placement.learner_devices``)."""
    devices = learner_devices(config)
    try:
        return make_mesh(config.mesh, devices)
    except MeshSpecError as error:
        raise MeshSpecError(f"mesh={config.mesh!r} over placement.learner_devices="
                            f"{config.placement.learner_devices} ({len(devices)} devices): {error}") from None


def train(config: ml_collections.ConfigDict, workdir: str | Path, log: Callable[[str], None] = print,
          on_step: StepHook | None = None) -> dict[str, Any]:
    """Run (or resume) ``config`` in ``workdir``; returns the last metrics record."""
    validate(config)
    main = is_main_process()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    configure_compilation_cache(config.compilation_cache_dir)
    mesh = learner_mesh(config)
    if main:
        (workdir / "config.json").write_text(config.to_json(indent=2))
    tokenizer, tasks = make_tokenizer(config), make_tasks(config)
    model_config = policy_model_config(config, tokenizer.vocab_size, tokenizer.bos_id,
                                       tokenizer.eos_id, tokenizer.pad_id)
    make_env = environment_factory(config)

    def prompt_of(task) -> str:
        return make_env(task).reset()

    variables, warm_info = in_turn(lambda: warm_start_variables(config, model_config, tasks, tokenizer,
                                                                prompt_of, log), "rl warm start")
    learner = Learner(config, model_config, variables, mesh=mesh)
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
    if config.eval.every and start_step == 0:  # the warm start: where both modes begin
        write_eval_snapshot(workdir, learner.variables, 0, version, 0.0, 0)
    advertised, bind = sender_hosts(config)
    sender = WeightSender(config.weight_sync.streams, advertised, bind, config.weight_sync.timeout_s)
    addresses = gather_addresses(sender.address)
    pool = coordinator = None
    record: dict[str, Any] = {}
    try:
        sender.publish(version, learner.variables)
        platform = mesh.devices.flat[0].platform
        if main:  # the workers, the buffer, the metrics: process 0's
            launch = worker_launch(addresses, resolved_rollout_platform(config, platform),
                                   learner_devices_beside_workers(config, mesh))
            pool = make_pool(config, launch)
            coordinator = RolloutCoordinator(pool, buffer, len(tasks), config.groups_per_order,
                                             config.seed + 7919 * resumes, config.max_worker_restarts,
                                             log, order_prefix=f"r{resumes}",
                                             lock_step=config.mode == "sync",
                                             groups_per_batch=config.groups_per_batch,
                                             sync_every=config.sync_every,
                                             orders_in_flight=config.sampler.get("orders_in_flight", 1))
            pool.start_all()
            coordinator.wait_until_ready(config.num_workers, config.worker_start_timeout_s)
            log(f"{config.num_workers} rollout workers ready ({config.backend} backend); "
                f"mode {config.mode}")
            write_run_info(workdir, describe(
                mesh, learner=process_record(list(mesh.devices.flat), mesh, platform=platform),
                workers=[pool.ready_info.get(w, {}).get("placement") for w in range(config.num_workers)],
                weight_sync={"addresses": addresses, "streams": config.weight_sync.streams}))
            coordinator.dispatch_enabled = True
            if config.mode == "async":
                coordinator.start_background()
            busy_at_start = coordinator.worker_busy_s
        clock = time.perf_counter() - elapsed
        idle_s, train_s_total, trained_tokens = 0.0, 0.0, 0
        for step in range(start_step, config.total_steps):
            wait_start = time.perf_counter()
            batch = None
            if main:
                if config.mode == "async":
                    groups = coordinator.take(config.groups_per_batch, version, config.batch_timeout_s)
                else:
                    groups = coordinator.lock_step_round(config.groups_per_batch, version,
                                                         config.batch_timeout_s)
                train_start = time.perf_counter()
                batch, info = build_batch(groups, config.seq_len, config.gamma,
                                          config.normalize_advantages_by_std, tokenizer.pad_id)
                histogram = staleness_histogram(groups, version)
            batch = share_batch(batch, config)  # every learner process trains on process 0's
            if not main:
                train_start = time.perf_counter()
            idle_s += train_start - wait_start
            train_metrics = learner.train(batch)
            train_s = time.perf_counter() - train_start
            train_s_total += train_s
            blocked_s = 0.0  # how long this step's push held the learner up
            if (step + 1) % config.sync_every == 0:
                version += 1
                blocked_s = sender.publish(version, learner.variables)
                if config.mode == "sync":  # the next round samples with these weights
                    blocked_s += sender.wait_delivered(version, config.batch_timeout_s)
                if config.reset_optimizer_on_push:
                    learner.reset_optimizer()
            sync_metrics = weight_sync_totals(sender.metrics())
            now = time.perf_counter()
            wall = now - clock
            if main:
                trained_tokens += info.policy_tokens
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
                    **{f"learner/{k}": v for k, v in train_metrics.items()}, **shared,
                    **sync_metrics, "weight_sync/learner_blocked_s": blocked_s,
                }
                with open(workdir / "metrics.jsonl", "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                if step % config.log_every == 0 or step + 1 == config.total_steps:
                    log(f"step {step + 1} t={wall:.1f}s v={version} reward={info.mean_reward:.3f} "
                        f"pass={info.pass_rate:.2f} idle={record['learner_idle_fraction']:.2f} "
                        f"util={record['worker_utilisation']:.2f} stale={histogram}")
            last_step = step + 1 == config.total_steps
            if config.checkpoint_every and ((step + 1) % config.checkpoint_every == 0 or last_step):
                with coordinator.lock if main else contextlib.nullcontext():
                    buffer_state = buffer.state_dict()
                checkpointer.save(step + 1, learner.state, {
                    "step": step + 1, "policy_version": version, "wall_time": wall,
                    "resumes": resumes, "buffer": buffer_state})
            if config.eval.every and ((step + 1) % config.eval.every == 0 or last_step):
                write_eval_snapshot(workdir, learner.variables, step + 1, version, wall,
                                    record.get("buffer/consumed", 0))
            if main and on_step is not None:
                on_step(step + 1, coordinator)
    finally:
        if coordinator is not None:
            coordinator.stop()
        if pool is not None:
            pool.close()
        sender.close()
        checkpointer.close()
    return {**record, **warm_info}
