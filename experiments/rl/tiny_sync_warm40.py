"""The lock-step twin of ``tiny_async_warm40.py``: the same warm start, model, tasks, seeds,
batch and learner; ``mode`` differs, and so does the worker's XLA threading.

    python -m glm5_jax.rl --config=experiments/rl/tiny_sync_warm40.py --workdir=/tmp/rl_sync40

In lock-step mode generation and training alternate, so while the worker generates the
learner waits and its cores idle. ``tiny_sync.py`` keeps the async worker's one-thread
setting and leaves a core idle during generation; here the worker gets every core
(``worker_xla_flags = ""``: XLA's default threading), the fair lock-step baseline.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from glm5_jax.train.experiment import load_experiment


def get_config() -> ml_collections.ConfigDict:
    config = load_experiment(Path(__file__).with_name("tiny_async_warm40.py"))
    config.mode = "sync"
    config.worker_xla_flags = ""
    return config
