"""What one rollout worker holds, whatever carries its messages (a local process or a Ray
actor): the task suite, environments, a sandbox pool, the sampler and a policy snapshot.

The transport layer calls ``run`` with a list of ``GroupOrder``s and an ``emit`` callback;
everything above that line is shared by both backends.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from glm5_jax.rl.rollout import GroupOrder, run_orders
from glm5_jax.rl.trajectory import Trajectory

PROMPT_BUCKET = 8  # glm5_jax.sample.engine pads prompt lengths to multiples of this


def configure_jax(config: ml_collections.ConfigDict) -> None:
    """Per-process JAX settings; must run before the first computation of the process."""
    if config.get("worker_xla_flags"):
        os.environ["XLA_FLAGS"] = config.worker_xla_flags
    import jax

    jax.config.update("jax_platforms", config.get("worker_platform", "cpu"))
    if config.get("compilation_cache_dir"):
        jax.config.update("jax_compilation_cache_dir", os.path.abspath(config.compilation_cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class RolloutWorker:
    def __init__(self, worker_id: int, config: ml_collections.ConfigDict, policy_dir: str) -> None:
        from glm5_jax.eval.limits import SandboxLimits
        from glm5_jax.eval.pool import SandboxPool
        from glm5_jax.rl.experiment_setup import environment_factory, make_tasks, make_tokenizer
        from glm5_jax.rl.policy import PolicySubscriber, policy_model_config
        from glm5_jax.rl.sampler import PolicySampler

        self.worker_id = worker_id
        self.config = config
        self.tokenizer = make_tokenizer(config)
        self.tasks = make_tasks(config)
        make_env = environment_factory(config)
        self.make_env = lambda task_index: make_env(self.tasks[task_index])
        model_config = policy_model_config(config, self.tokenizer.vocab_size, self.tokenizer.bos_id,
                                           self.tokenizer.eos_id, self.tokenizer.pad_id)
        rows = config.groups_per_order * config.group_size
        self.sampler = PolicySampler(model_config, rows, config.max_new_tokens, config.temperature)
        self.sandbox = SandboxPool(workers=config.sandbox_workers,
                                   limits=SandboxLimits(timeout_s=config.sandbox_timeout_s))
        self.policy = PolicySubscriber(policy_dir)

    def warm_up(self) -> dict[str, float]:
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
        return {"warm_up_s": time.perf_counter() - start, "prompt_shapes": float(len(by_bucket))}

    def run(self, orders: Sequence[GroupOrder], emit: Callable[[Trajectory], None]) -> dict[str, Any]:
        stats = run_orders(orders, self.make_env, self.policy, self.sampler, self.sandbox,
                           self.tokenizer, emit, worker_id=self.worker_id,
                           refresh_each_turn=self.config.refresh_weights_each_turn,
                           max_context=self.config.seq_len)
        return {**dataclasses.asdict(stats), "policy_load_s": self.policy.load_seconds}

    def close(self) -> None:
        self.sandbox.close()
