"""The dense baseline beside the tiny main job: same data, steps and optimiser, and the same
active parameters per token (every MoE layer is one dense MLP of the MoE's active width).

    python -m glm5_jax.train --config=experiments/dense_baseline.py --workdir=/tmp/glm5_dense
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from glm5_jax.train.experiment import load_experiment


def get_config() -> ml_collections.ConfigDict:
    config = load_experiment(Path(__file__).with_name("tiny.py"))
    config.model = "dense_baseline"
    return config
