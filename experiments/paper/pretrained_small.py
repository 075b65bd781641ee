"""The small pretrained model that tables 3 (code_benchmarks) and 5 (mtp_acceptance) evaluate:
the tiny GLM-5 (MLA, DSA, grouped sigmoid MoE with a shared expert) with GLM-5's shared
3-step MTP module, pretrained on the local Python-code corpus.

    python -m glm5_jax.train --config=experiments/paper/pretrained_small.py:cpu --workdir=D

At pod scale it is the released GLM-5 itself (``experiments/glm5_full.py``: one MTP layer
shared over 3 steps).
"""

from __future__ import annotations

import ml_collections

from glm5_jax.config import ModelConfig
from glm5_jax.config_fields import overridable
from glm5_jax.reproduce.scales import EXPERIMENTS, SMOKE_MODEL, SMOKE_VOCAB, check_scale
from glm5_jax.train.experiment import load_experiment

MTP_STEPS = 3  # GLM-5: one MTP module shared over 3 steps


def get_config(scale: str = "cpu") -> ml_collections.ConfigDict:
    scale = check_scale(scale)
    if scale == "pod":
        return load_experiment(EXPERIMENTS / "glm5_full.py")
    config = load_experiment(EXPERIMENTS / "tiny.py")
    config.model_overrides = overridable(ModelConfig, moe_impl="blocked", num_mtp_layers=1,
                                         mtp_share_parameters=True, mtp_num_steps=MTP_STEPS)
    config.update(seq_len=256, batch_size=8, total_steps=600, warmup_steps=30, dense_steps=300,
                  dense_warmup_steps=40, log_every=20, checkpoint_every=600, progress_bar=False)
    if scale == "smoke":
        config.model_overrides = overridable(
            ModelConfig, moe_impl="blocked", **{**SMOKE_MODEL, "num_mtp_layers": 1},
            mtp_share_parameters=True, mtp_num_steps=MTP_STEPS)
        config.data.vocab_size = SMOKE_VOCAB
        config.data.max_files = None
        config.update(seq_len=64, batch_size=4, total_steps=6, warmup_steps=1, dense_steps=0,
                      dense_warmup_steps=0, log_every=2, checkpoint_every=6)
    return config
