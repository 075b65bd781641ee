"""RL from the main job's pretrained checkpoint: pretrain, then RL, on one CPU host.

    python -m glm5_jax.train --config=experiments/tiny.py --workdir=/tmp/glm5_tiny
    python -m glm5_jax.rl --config=experiments/rl/pretrained_async.py --workdir=/tmp/rl_pretrained

The policy is the checkpoint in ``init_from`` (a training workdir or an HF directory: its
architecture, weights and BPE ``tokenizer.json``); everything else is ``tiny_async.py``.
``--config.mode=sync`` gives the lock-step twin. ``--config.tasks.suite=mbpp`` selects MBPP's
train split (299 training / 75 held-out tasks; with the main job's tokenizer prompts are 55
tokens at the median, references 61 at the median and 198 at the 95th percentile, so raise
``seq_len`` and ``warm_start.seq_len`` to 256 and ``max_new_tokens`` to 192); that
combination builds but has not been run end to end on CPU.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from glm5_jax.train.experiment import load_experiment


def get_config() -> ml_collections.ConfigDict:
    config = load_experiment(Path(__file__).with_name("tiny_async.py"))
    config.init_from = "/tmp/glm5_tiny"
    config.tokenizer = "checkpoint"
    config.warm_start.cache_dir = "/tmp/glm5_rl_warm_start_pretrained"
    return config
