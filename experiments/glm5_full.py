"""The released GLM-5 (744B parameters, ~40B active) as a pod-scale experiment.

    python -m glm5_jax.plan --config=experiments/glm5_full.py --topology=v5p-1024 \
        --config.seq_len=4096 --config.batch_size=256

Architecture: ``glm5_jax.config.glm5_full()`` (the released HF config: 78 layers, 256
routed experts top-8 with a shared expert, MLA, DSA top-2048, one MTP layer), bf16
compute over float32 master weights, Muon with the paper's Muon Split, full remat of each
scanned layer. The attention stages follow GLM-5's recipe (dense pretraining, DSA stage 1
where only the indexer trains, then sparse training). Everything not set here is
``tiny.py``'s. Step counts and the learning rate are placeholders of the right order for
a pod run, not the paper's exact schedule (its summary does not give one): set them from
the paper's appendix before a real run.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from glm5_jax.config import ModelConfig
from glm5_jax.config_fields import overridable
from glm5_jax.train.experiment import load_experiment


def get_config() -> ml_collections.ConfigDict:
    config = load_experiment(Path(__file__).with_name("tiny.py"))
    config.model = "glm5_full"
    # Declared here so the command line can change them (--config.model_overrides.X=...):
    # the released values, restated, and the memory policy.
    config.model_overrides = overridable(
        ModelConfig, moe_impl="ragged_dot", num_hidden_layers=78, first_k_dense_replace=3,
        remat_policy="full", attention_impl="gather",
        # Tokens reach their experts by ragged all-to-all into buffers of 2x the balanced load.
        expert_dispatch="ragged", expert_capacity_factor=2.0)
    config.compute_dtype = "bfloat16"
    config.param_dtype = "float32"
    config.data.vocab_size = 154880  # the released tokenizer's size
    config.data.read_threads = 16
    config.seq_len = 4096
    config.batch_size = 256  # sequences per step (~1M tokens)

    config.total_steps = 500_000  # placeholder
    config.warmup_steps = 2_000  # placeholder
    config.learning_rate = 2e-4  # placeholder
    config.optimizer = "muon"
    config.dense_steps = 400_000  # placeholder: dense pretraining before DSA
    config.dense_warmup_steps = 1_000  # DSA stage 1 (indexer only)

    # 512 chips: 32-way expert parallelism (8 of 256 experts per device), 2-way tensor
    # parallelism, FSDP over the rest. Rows shard over fsdp x expert: 256 sequences, one each.
    config.mesh = "fsdp=-1,expert=32,tensor=2"
    config.checkpoint_every = 1000
    # The checksum copies every shard to the host synchronously at each save: not at 744B.
    config.checkpoint_fingerprint = False
    config.progress_bar = False
    return config
