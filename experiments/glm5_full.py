"""The released GLM-5 (744B parameters, ~40B active) as a pod-scale experiment.

    python -m glm5_jax.plan --config=experiments/glm5_full.py --topology=v5p-1024 \
        --config.seq_len=4096 --config.batch_size=256

Architecture: ``glm5_jax.config.glm5_full()`` (the released HF config: 78 layers, 256
routed experts top-8 with a shared expert, MLA, DSA top-2048, one MTP layer), bf16
compute over float32 master weights, Muon with the paper's Muon Split. The attention
stages follow GLM-5's recipe (dense pretraining, DSA stage 1 where only the indexer
trains, then sparse training). Step counts and learning rates below are placeholders of
the right order for a pod run, not the paper's exact schedule (its summary does not give
one): set them from the paper's appendix before a real run.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "glm5_full"
    # Declared here so the command line can change them (--config.model_overrides.X=...):
    # the released values, restated.
    config.model_overrides = ml_collections.ConfigDict({
        "moe_impl": "ragged_dot", "num_hidden_layers": 78, "first_k_dense_replace": 3,
        "remat_policy": "full"})
    config.compute_dtype = "bfloat16"
    config.param_dtype = "float32"

    # Data: a prebuilt corpus on the pod's storage; the released tokenizer (154,880 tokens).
    config.data = ml_collections.ConfigDict()
    config.data.data_dir = "/tmp/glm5_data"
    config.data.corpus = "python_code"
    config.data.vocab_size = 154880
    config.data.max_files = 1000
    config.data.max_bytes = 32 * 1024 * 1024
    config.data.tokenizer_path = config_dict.placeholder(str)
    config.data.read_threads = 16
    config.data.shuffle = True
    config.seq_len = 4096
    config.batch_size = 256  # sequences per step (~1M tokens)
    config.grad_accum_steps = 1
    config.seed = 0

    config.total_steps = 500_000  # placeholder
    config.warmup_steps = 2_000  # placeholder
    config.learning_rate = 2e-4  # placeholder
    config.min_learning_rate_ratio = 0.1
    config.optimizer = "muon"
    config.adam_b1 = 0.9
    config.adam_b2 = 0.95
    config.adam_eps = 1e-8
    config.weight_decay = 0.1
    config.max_grad_norm = 1.0
    config.muon_beta = 0.95
    config.muon_ns_steps = 5
    config.muon_split_heads = True
    config.muon_consistent_rms = 0.2

    config.mtp_loss_weight = 0.3
    config.balance_loss_weight = 1e-4
    config.indexer_loss_weight = 1.0
    config.dense_steps = 400_000  # placeholder: dense pretraining before DSA
    config.dense_warmup_steps = 1_000  # DSA stage 1 (indexer only)
    config.routing_bias_update_rate = 1e-3

    # 512 chips: 32-way expert parallelism (8 of 256 experts per device), FSDP over the rest.
    config.mesh = "fsdp=-1,expert=32"
    config.checkpoint_every = 1000
    config.keep_checkpoints = 3
    config.async_checkpointing = True
    config.log_every = 10
    config.progress_bar = False
    config.peak_flops_per_device = 0.0
    return config
