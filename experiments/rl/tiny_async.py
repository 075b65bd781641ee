"""Asynchronous agentic RL on the tiny preset: code tasks with unit tests, on CPU.

    python -m glm5_jax.rl --config=experiments/rl/tiny_async.py --workdir=/tmp/rl_async

Its lock-step twin is ``tiny_sync.py`` (same model, tasks, seeds, batch and workers; only
``mode`` differs). ``benchmarks/bench_rl_async_vs_sync.py`` runs both and plots them.
"""

from __future__ import annotations

import ml_collections

from glm5_jax.config import ModelConfig
from glm5_jax.config_fields import overridable


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "async"  # "async" | "sync"
    config.backend = "process"  # "process" | "ray"
    config.ray_address = ""  # "" starts a local Ray cluster; else ray.init(address=...)
    config.ray_num_cpus = 0  # 0: Ray's default (all cores)
    config.seed = 0

    # Policy: a preset from glm5_jax.config with the tokenizer's vocabulary, or, with init_from
    # (a training workdir or HF directory), that checkpoint's architecture and weights, usually
    # with tokenizer="checkpoint" (its tokenizer.json; see experiments/rl/pretrained_async.py).
    config.model = "tiny"
    config.model_overrides = overridable(ModelConfig)  # any field: --config.model_overrides.X=
    config.init_from = ""
    config.tokenizer = "char"  # "char" | "checkpoint"
    # Special tokens of a checkpoint tokenizer, by name (defaults: glm5_jax.data's tokenizer).
    config.special_tokens = ml_collections.ConfigDict({
        "bos": "<|endoftext|>", "eos": "<|endoftext|>", "pad": "<|pad|>"})
    config.mesh = ""  # the learner's mesh over placement.learner_devices ("": all on data)

    # Where things run (glm5_jax/rl/placement.py). Each rollout worker is its own JAX process
    # (or Ray actor) with its own devices and mesh; the learner keeps its own devices.
    config.placement = ml_collections.ConfigDict({
        "learner_platform": "",  # "": JAX's default (tpu, else gpu, else cpu) | "cpu" | "gpu" | "tpu"
        "learner_devices": 0,  # devices of the learner's mesh; 0: all of its processes' devices
        "rollout_platform": "",  # "": the learner's | "cpu" | "gpu" | "tpu"
        "rollout_devices_per_worker": 1,
        "rollout_mesh": "",  # a mesh over one worker's devices; "": tensor over all of them
        "rollout_cpus_per_worker": 0.0,  # what a Ray actor asks for (scheduling only)
        # Host CPUs (taskset -c syntax, "" = no pinning) of the learner's process and of every
        # worker's process (and its sandboxes): "0" / "1" gives each its own core.
        "learner_cpus": "",
        "rollout_cpus": "",
    })
    # Weights, learner to workers (glm5_jax/rl/weight_sender.py): each learner process streams
    # the shards it holds; no file, no gathered copy.
    config.weight_sync = ml_collections.ConfigDict({
        "streams": 4,  # connections per worker and learner process; pieces go in parallel
        "host": "",  # what workers dial: "" = 127.0.0.1 if all of them run on this host, else its IP
        "timeout_s": 300.0,  # a worker silent this long mid-transfer is dropped (it reconnects)
    })

    # Tasks, environment, reward.
    # 108 tasks; 20% of each level (22) held out: never trained on, scored by the evaluator.
    config.tasks = ml_collections.ConfigDict({"suite": "tiny", "levels": (1, 2, 3),
                                              "held_out_fraction": 0.2})
    config.environment = ml_collections.ConfigDict({
        "kind": "single_turn",  # "single_turn" | "debug" | "test_driven"
        "max_turns": 2, "shown_tests": 2, "feedback_chars": 32})
    config.reward = ml_collections.ConfigDict({
        "correct": 1.0, "fraction_passed": 0.5, "simplicity": 0.05, "cleanliness": 0.05,
        "feedback": 0.05, "gate_lower_terms_on_pass": True, "feedback_scorer": "labels"})
    config.gamma = 0.5  # credit of the final outcome per turn back
    config.sandbox_workers = 2  # sandboxes per rollout worker
    config.sandbox_timeout_s = 2.0

    # Rollouts.
    config.num_workers = 1
    config.group_size = 8
    config.groups_per_order = 2  # groups one worker generates in one batched call
    config.groups_per_batch = 4  # groups per learner step (32 samples)
    config.capacity_groups = 8  # back-pressure: buffered + running groups
    config.max_staleness = 2  # policy versions
    config.max_new_tokens = 32
    config.temperature = 1.0
    config.refresh_weights_each_turn = True  # pick up new weights mid-episode (recorded per turn)
    # "batch": generate on padded batches, one per turn. "continuous": requests join and leave
    # a running batch of `slots` rows (0: groups_per_order * group_size); with
    # refresh_weights_each_turn new weights are taken between decode steps (recorded per token).
    # orders_in_flight (continuous only): orders a worker holds at once; above 1 the slots an
    # order's finished episodes free go to the next order instead of waiting for its stragglers.
    config.sampler = ml_collections.ConfigDict({"kind": "batch", "slots": 0, "steps_per_call": 4,
                                                "recompute_on_update": True, "orders_in_flight": 1})
    config.max_worker_restarts = 20
    config.worker_start_timeout_s = 1200.0
    config.batch_timeout_s = 1200.0
    # One XLA thread per worker: on a small host the learner keeps the other cores.
    config.worker_xla_flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    config.compilation_cache_dir = "/tmp/glm5_rl_jax_cache"  # shared by learner, workers, runs

    # Learner.
    config.total_steps = 60
    config.seq_len = 48  # prompt + one attempt; 112 holds two debugging turns (feedback_chars=32)
    config.objective = "direct_double_sided"  # | "decoupled" | "truncated_is"
    config.is_eps_low = 0.2
    config.is_eps_high = 0.28
    config.clip_eps = 0.2  # decoupled
    config.behaviour_weight_cap = 0.0  # decoupled; 0 = uncapped
    config.truncation_cap = 2.0  # truncated_is
    config.minibatches = 1  # updates per batch pass (rows k::minibatches); divides the batch's rows
    config.ppo_epochs = 1  # passes per batch; "decoupled" needs minibatches * ppo_epochs > 1
    config.kl_coef = 0.0
    config.normalize_advantages_by_std = True
    config.learning_rate = 3e-4  # 1e-3 collapsed the policy within 2 steps (Adam moves every
    # weight by ~lr on the first steps, whatever the gradient's size)
    config.adam_b1 = 0.9
    config.adam_b2 = 0.99
    config.adam_eps = 1e-8
    config.weight_decay = 0.0
    config.max_grad_norm = 1.0
    config.frozen_params = ("indexer", "mtp_")  # the DSA indexer stays frozen during RL
    config.sync_every = 1  # publish new weights every learner step
    config.reset_optimizer_on_push = False

    # Supervised warm start (cached by content under cache_dir). 300 steps leave the sampled
    # pass rate near 30% (level 1: 36%, 2: 0%, 3: 33%; 400 steps: 58%, 14%, 29%).
    config.warm_start = ml_collections.ConfigDict({
        "steps": 300, "batch_size": 32, "learning_rate": 3e-3, "seq_len": 48,
        "cache_dir": "/tmp/glm5_rl_warm_start"})

    # Fixed evaluation (glm5_jax.rl.evaluation): snapshots of step 0 and every `every` steps,
    # scored after the run by `python -m glm5_jax.rl.evaluation --workdir=DIR` on the training
    # and held-out tasks with fixed seeds.
    config.eval = ml_collections.ConfigDict({
        "every": 20, "samples_per_task": 4, "seed": 2027, "batch_rows": 64, "sandbox_workers": 2})

    config.log_every = 1
    config.checkpoint_every = 20
    return config
