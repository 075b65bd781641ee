"""What one rollout worker holds, whatever carries its messages (a local process or a Ray
actor): the task suite, environments, a sandbox pool, the sampler, its own devices and mesh,
and the policy it receives from the learner.

The transport layer calls ``serve`` with its ``receive`` and ``send`` (orders in, trajectories
and order reports out); everything above that line is shared by both backends. ``launch`` is
what the learner tells a worker when it starts it (``worker_launch``): the learner processes'
weight-sync addresses and the platform; the worker derives its own devices from
``config.placement`` and its id.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from glm5_jax.rl.rollout import GroupOrder, run_orders
from glm5_jax.rl.trajectory import Trajectory

PROMPT_BUCKET = 8  # glm5_jax.sample.engine pads prompt lengths to multiples of this


def worker_launch(weight_addresses: list[str], platform: str, learner_local_devices: int) -> str:
    """What every worker of a run is started with (JSON: it crosses pipes and Ray)."""
    return json.dumps({"weight_addresses": list(weight_addresses), "platform": platform,
                       "learner_local_devices": learner_local_devices})


def configure_compilation_cache(directory: str) -> None:
    """The persistent XLA cache shared by the learner, the workers and later runs."""
    import jax

    if directory:
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def configure_worker_process(worker_id: int, config: ml_collections.ConfigDict, launch: str):
    """In a fresh worker process, before its JAX starts: its devices (``placement``) and cache."""
    from glm5_jax.rl.placement import apply_worker_slot, worker_slot

    details = json.loads(launch)
    slot = worker_slot(config, worker_id, details["platform"], details["learner_local_devices"])
    apply_worker_slot(slot)
    configure_compilation_cache(config.get("compilation_cache_dir", ""))
    return slot


class RolloutWorker:
    def __init__(self, worker_id: int, config: ml_collections.ConfigDict, launch: str, slot=None) -> None:
        import jax

        from glm5_jax.eval.limits import SandboxLimits
        from glm5_jax.eval.pool import SandboxPool
        from glm5_jax.model import GLM5Model, logical_partition_specs
        from glm5_jax.rl.experiment_setup import (
            environment_factory,
            make_tasks,
            make_tokenizer,
        )
        from glm5_jax.rl.placement import process_record
        from glm5_jax.rl.policy import policy_model_config
        from glm5_jax.rl.sampler import make_sampler
        from glm5_jax.rl.weight_receiver import WeightReceiver
        from glm5_jax.rl.weight_shards import sharding_by_path
        from glm5_jax.sharding import make_mesh

        self.worker_id = worker_id
        self.config = config
        self.tokenizer = make_tokenizer(config)
        self.tasks = make_tasks(config)
        make_env = environment_factory(config)
        self.make_env = lambda task_index: make_env(self.tasks[task_index])
        model_config = policy_model_config(config, self.tokenizer.vocab_size, self.tokenizer.bos_id,
                                           self.tokenizer.eos_id, self.tokenizer.pad_id)
        # This worker's devices, its mesh (the sampler decodes on it), and the weights assembled
        # under that mesh's sharding.
        self.mesh = make_mesh(config.placement.rollout_mesh or "tensor=-1", jax.devices())
        self.sampler = make_sampler(config, model_config, self.mesh)  # config.sampler.kind: batch | continuous
        self.sandbox = SandboxPool(workers=config.sandbox_workers,
                                   limits=SandboxLimits(timeout_s=config.sandbox_timeout_s))
        weight_sync = config.weight_sync
        self.policy = WeightReceiver(
            json.loads(launch)["weight_addresses"],
            sharding_by_path(self.mesh, logical_partition_specs(GLM5Model(model_config))),
            worker_id, streams=weight_sync.streams, timeout_s=weight_sync.timeout_s)
        self.placement = process_record(jax.devices(), self.mesh, worker_id=worker_id,
                                        platform=jax.devices()[0].platform,
                                        assigned=slot.describe() if slot is not None else "")

    def warm_up(self) -> dict[str, Any]:
        """Wait for the first weights and compile generation for every first-turn prompt shape
        (the engine buckets prompt lengths), so no compilation lands inside the timed run."""
        start = time.perf_counter()
        self.policy.wait_for_first()
        by_bucket: dict[int, list[int]] = {}
        for index in range(len(self.tasks)):
            prompt = [self.tokenizer.bos_id] + self.tokenizer.encode(self.make_env(index).reset())
            by_bucket.setdefault(-(-len(prompt) // PROMPT_BUCKET), prompt)
        if self.config.environment.kind != "single_turn" and self.config.environment.max_turns > 1:
            # Later turns see longer contexts; compile every length they can reach.
            filler = by_bucket[min(by_bucket)]
            for bucket in range(min(by_bucket) + 1, -(-self.config.seq_len // PROMPT_BUCKET) + 1):
                by_bucket[bucket] = (filler * bucket * PROMPT_BUCKET)[:bucket * PROMPT_BUCKET]
        for prompt in by_bucket.values():
            self.sampler.sample(self.policy.variables, [prompt], seed=0)
        return {"warm_up_s": time.perf_counter() - start, "prompt_shapes": float(len(by_bucket)),
                "placement": self.placement}

    def run(self, orders: Sequence[GroupOrder], emit: Callable[[Trajectory], None]) -> dict[str, Any]:
        stats = run_orders(orders, self.make_env, self.policy, self.sampler, self.sandbox,
                           self.tokenizer, emit, worker_id=self.worker_id,
                           refresh_each_turn=self.config.refresh_weights_each_turn,
                           max_context=self.config.seq_len)
        return self._order_report(stats)

    def _order_report(self, stats) -> dict[str, Any]:
        """What ``order_done`` carries: the order's rollout statistics and the policy's load time."""
        return {**dataclasses.asdict(stats), "policy_load_s": self.policy.load_seconds}

    def serve(self, receive: Callable[[bool], tuple | None], send: Callable[[tuple], None]) -> None:
        """Take orders from the coordinator until it says stop, sending back every trajectory
        when its episode ends and ``("order_done", order_key, stats)`` when an order's last one
        does. ``receive(block)`` is the coordinator's next message (``("orders", key, orders)``
        or ``("stop",)``; None when ``block`` is False and nothing waits).

        With the continuous sampler an order that arrives while others run joins their batch
        (the coordinator sends up to ``config.sampler.orders_in_flight``); with the batch
        sampler orders run one after another."""
        from glm5_jax.rl.continuous_rollout import ContinuousRollout

        def emit(trajectory: Trajectory) -> None:
            send(("trajectory", trajectory))

        if not hasattr(self.sampler, "batcher"):
            while (message := receive(True))[0] != "stop":
                _, order_key, orders = message
                send(("order_done", order_key, self.run(orders, emit)))
            return
        rollout = ContinuousRollout(self.make_env, self.policy, self.sampler, self.sandbox, self.tokenizer,
                                    emit, self.worker_id, self.config.refresh_weights_each_turn,
                                    self.config.seq_len)
        while True:
            message = receive(rollout.idle)  # block only when nothing runs
            while message is not None:
                if message[0] == "stop":
                    return
                _, order_key, orders = message
                rollout.add(order_key, orders)
                message = receive(False)
            for order_key, stats in rollout.step():
                send(("order_done", order_key, self._order_report(stats)))

    def close(self) -> None:
        self.policy.close()
        self.sandbox.close()
