"""The lock-step baseline of ``tiny_async.py``: generate a batch with the current weights,
train on it, publish, repeat. Everything else is identical.

    python -m glm5_jax.rl --config=experiments/rl/tiny_sync.py --workdir=/tmp/rl_sync
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("rl_tiny_async", Path(__file__).with_name("tiny_async.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.mode = "sync"
    return config
