"""The README's main job: the tiny GLM-5 preset on the local Python-code corpus, on CPU.

    python -m glm5_jax.train --config=experiments/tiny.py --workdir=/tmp/glm5_tiny

Every structural feature of GLM-5 is on (MLA, the DSA indexer with top-16 of 128 keys, a
grouped sigmoid MoE with a shared expert and the aux-loss-free bias, two MTP steps), at a
size that trains in a few minutes on two CPU cores with the loss clearly falling. Override
any field on the command line, e.g. ``--config.optimizer=muon --config.total_steps=50``.
"""

from __future__ import annotations

import ml_collections

from glm5_jax.config import ModelConfig
from glm5_jax.config_fields import overridable
from glm5_jax.data.config import DataConfig


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # Model: a preset from glm5_jax.config plus field overrides. vocab_size always comes from
    # the tokenizer (an override of it is an error).
    config.model = "tiny"
    # CPU: the MoE's padded-block grouped matmul costs the chosen experts only (jax's CPU
    # ragged_dot multiplies every token by every expert); use "ragged_dot" or "pallas" on GPU/TPU.
    # Every ModelConfig field can be set: --config.model_overrides.num_hidden_layers=4.
    config.model_overrides = overridable(ModelConfig, moe_impl="blocked")
    config.compute_dtype = "float32"  # "bfloat16" on accelerators; float32 is faster on CPU
    config.param_dtype = "float32"  # master weights

    # Data: every glm5_jax.data.DataConfig field (seq_len, batch_size and seed live at the
    # top level); unset ones take DataConfig's defaults.
    config.data = overridable(
        DataConfig, exclude=("seq_len", "batch_size", "seed"), data_dir="/tmp/glm5_data",
        corpus="python_code", vocab_size=2048, max_files=1000, max_bytes=32 * 1024 * 1024,
        read_threads=2, shuffle=True)
    config.seq_len = 128
    config.batch_size = 8
    config.grad_accum_steps = 1
    config.seed = 0

    # Optimisation.
    config.total_steps = 300
    config.warmup_steps = 20
    config.learning_rate = 3e-3
    config.min_learning_rate_ratio = 0.1
    config.optimizer = "adamw"  # "adamw" | "muon"
    config.adam_b1 = 0.9
    config.adam_b2 = 0.95
    config.adam_eps = 1e-8
    config.weight_decay = 0.1
    config.max_grad_norm = 1.0
    config.muon_beta = 0.95
    config.muon_ns_steps = 5
    config.muon_split_heads = True  # the paper's Muon Split
    config.muon_consistent_rms = 0.2  # Muon updates scaled to AdamW's RMS: one LR for both

    # Losses and the DSA / MoE training rules.
    config.mtp_loss_weight = 0.3
    config.balance_loss_weight = 1e-4
    config.indexer_loss_weight = 1.0
    # Attention stages (GLM-5's recipe): dense pretraining, then DSA stage 1 (dense attention,
    # only the indexer trains), then stage 2 (sparse attention, everything trains).
    config.dense_steps = 150
    config.dense_warmup_steps = 20
    config.routing_bias_update_rate = 1e-3

    # Parallelism, checkpoints and logging.
    config.mesh = ""  # e.g. "data=1,fsdp=4,expert=2,tensor=1"; "" = every device on data
    config.checkpoint_every = 100
    config.keep_checkpoints = 3
    config.async_checkpointing = True
    config.checkpoint_fingerprint = True  # checksum the state on save, verify it on restore
    config.log_every = 10
    config.progress_bar = True
    config.peak_flops_per_device = 0.0  # 0: looked up by device kind, measured on CPU
    return config
