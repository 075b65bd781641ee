"""``tiny_async.py`` from a stronger warm start, where RL has something to learn from: the
asynchronous side of the async-vs-sync benchmark (``benchmarks/bench_rl_async_vs_sync.py``).

    python -m glm5_jax.rl --config=experiments/rl/tiny_async_warm40.py --workdir=/tmp/rl_async40

Its lock-step twin is ``tiny_sync_warm40.py``.

Warm start: 400 supervised steps instead of 300. Measured with
``python benchmarks/rl_bench_warm_start.py --steps 300,400,500 --seeds 0,1,2,3,4`` (the
fixed evaluation of step 0: 86 training tasks x 4 samples, standard error of the reward
0.03-0.04; on the working tree of commit d0117a4), training-task pass rate per seed 0-4:

    300 steps: 0.32 0.35 0.16 0.19 0.15   median 0.19  (reward median 0.34)
    400 steps: 0.58 0.87 0.35 0.39 0.26   median 0.39  (reward median 0.68)
    500 steps: 0.41 0.95 0.54 0.54 0.40   median 0.54  (reward median 0.92)

so 400 steps puts the median seed near 40%. The seeds spread widely (0.26-0.87: the warm
start's init and batches follow ``seed``); seed 1 starts high and has the least room to learn.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from glm5_jax.train.experiment import load_experiment

WARM_START_STEPS = 400


def get_config() -> ml_collections.ConfigDict:
    config = load_experiment(Path(__file__).with_name("tiny_async.py"))
    config.warm_start.steps = WARM_START_STEPS
    # The worker keeps tiny_async.py's single XLA thread: generation overlaps training, and the
    # learner's multi-threaded step keeps the other core.
    return config
