"""The lock-step baseline of ``tiny_async.py``: generate a batch with the current weights,
train on it, publish, repeat. Everything else is identical.

    python -m glm5_jax.rl --config=experiments/rl/tiny_sync.py --workdir=/tmp/rl_sync
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from glm5_jax.train.experiment import load_experiment


def get_config() -> ml_collections.ConfigDict:
    config = load_experiment(Path(__file__).with_name("tiny_async.py"))
    config.mode = "sync"
    return config
