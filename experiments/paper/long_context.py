"""Paper table 2, long context: dense MLA against DSA, trained identically, on a synthetic
retrieval task (``glm5_jax/reproduce/retrieval_task.py``: multi-key recall in code-like
filler), evaluated at prompts far longer than the training rows.

    python -m glm5_jax.reproduce long_context --scale=cpu --workdir=/tmp/repro_long_context

The paper (as the issue quotes it): >95% of performance at 8K prompts, dense baselines degrade
sharply beyond 4K; the released paper: DSA matches MLA on MQ-NIAH / MV-NIAH at 128K. Rows:

* ``dense_mla``: dense attention for every step and at every evaluation length
  (``index_topk`` above the longest prompt);
* ``dsa``: GLM-5's recipe on the same tokens: dense pretraining, DSA stage 1 (only the
  indexer trains), then sparse attention over the indexer's top ``index_topk`` keys; evaluated
  sparse.

Both train at ``seq_len`` (512 at cpu scale) and are scored at 512-8K (16K did not fit a CPU run): the
comparison is of length generalisation, which is what a CPU can afford; it is not a model
trained at the evaluated lengths.
"""

from __future__ import annotations

import ml_collections

from glm5_jax.config import ModelConfig
from glm5_jax.config_fields import overridable
from glm5_jax.reproduce.scales import EXPERIMENTS, check_scale
from glm5_jax.train.experiment import load_experiment

LONGEST_PROMPT = {"smoke": 256, "cpu": 8192, "pod": 131072}


def get_config(scale: str = "cpu") -> ml_collections.ConfigDict:
    scale = check_scale(scale)
    if scale == "pod":
        config = load_experiment(EXPERIMENTS / "glm5_full.py")
        config.model_overrides.num_mtp_layers = 0
        config.model_overrides.num_hidden_layers = 24
        config.model_overrides.first_k_dense_replace = 2
        # 16 x 32K tokens a step on v5p-256 (128 chips), each sequence split over 16 chips.
        # Batch 64 with context=4 asked 355 GiB per chip in the dense stage (the planner's
        # verdict, 2026-12-05): tokens per chip, not the mesh's shape, set the activations.
        config.update(seq_len=32768, batch_size=16, total_steps=20_000, warmup_steps=500,
                      dense_steps=12_000, dense_warmup_steps=1_000, mesh="expert=8,context=16",
                      log_every=50, checkpoint_every=1000)
        config.data.corpus = "gs://YOUR_BUCKET/long_context_corpus"  # placeholder
        config.data.data_dir = "gs://YOUR_BUCKET/glm5_data"
        return config
    config = load_experiment(EXPERIMENTS / "tiny.py")
    smoke = scale == "smoke"
    # Three layers with their own indexers (a retrieval needs a previous-token layer and an
    # induction layer; a "shared" layer would reuse the first layer's selection).
    layers = 2 if smoke else 3
    config.model_overrides = overridable(
        ModelConfig, moe_impl="blocked", attention_impl="gather", num_mtp_layers=0,
        num_hidden_layers=layers, first_k_dense_replace=1, indexer_types=("full",) * layers,
        index_topk=16 if smoke else 32, max_position_embeddings=LONGEST_PROMPT[scale])
    config.data.vocab_size = 320 if smoke else 512
    config.data.max_files = None
    # Answer-only loss (the MQAR recipe): the loss is on the token after each " ==", the value
    # asked for, so every gradient step is about retrieval (retrieval_task.py).
    config.data.loss_only_after = " =="
    # cpu: 512-token rows (8 per step; 1024-token rows cost 4 s a step here, 3x the 512 ones).
    # The 256-token runs of 2,000 steps copied some key's value but never matched the key asked
    # for (BENCHMARKS.md#repro-long-context). DSA trains dense for 700 steps, then the indexer
    # alone (100), then sparse (400).
    config.update(seq_len=64 if smoke else 512, batch_size=4 if smoke else 8,
                  total_steps=6 if smoke else 1200, warmup_steps=1 if smoke else 30,
                  learning_rate=3e-3, dense_steps=2 if smoke else 700,
                  dense_warmup_steps=1 if smoke else 100, log_every=2 if smoke else 20,
                  checkpoint_every=6 if smoke else 300, progress_bar=False)
    return config


def get_table(scale: str = "cpu") -> ml_collections.ConfigDict:
    scale = check_scale(scale)
    config = get_config(scale)
    smoke = scale == "smoke"
    table = ml_collections.ConfigDict()
    table.seeds = (0,)
    table.corpus = "retrieval"
    table.task = ml_collections.ConfigDict({
        # Multi-query associative recall: every key is asked for in a training document (the
        # loss is on the answers only). Training documents have min_keys..num_keys keys (weight
        # 1/k: every key count has the same share of the answers) and min..max filler lines;
        # evaluation prompts have num_keys keys. One key count for every document (12) or
        # too few easy documents (uniform k) stayed at chance for 400 steps (pilots).
        "num_documents": 400 if smoke else 30_000, "num_keys": 2 if smoke else 12,
        "min_keys": 1,
        # Filler lines per training document: the longest documents fill a training row.
        "min_lines": 0, "max_lines": 5 if smoke else 60, "seed": 0})
    table.rows = {
        "dense_mla": {"model_overrides": {"index_topk": LONGEST_PROMPT[scale]},
                      "dense_steps": config.total_steps, "dense_warmup_steps": 0},
        "dsa": {},
    }
    table.train_length = config.seq_len
    # 16K does not fit the time of a CPU run here (dense attention at 16K, 24 prompts: ~30 min).
    table.eval_lengths = (128, 256) if smoke else (512, 1024, 2048, 4096, 8192)
    table.retention = (128, 256) if smoke else (1024, 8192)  # accuracy at [1] / at [0]
    # Evaluation prompts set k keys (at random depths) and ask for one, for every k here: 1 is a
    # single needle (find the one assignment), 4 is multi-key recall (match the key asked for;
    # the middle of the training distribution). 12-key prompts left the 1000-step models at
    # 0.33 / 0.25 at 256 tokens: too close to chance to read a retention from.
    table.eval_keys = (1, 2) if smoke else (1, 4)
    table.eval_prompts = 4 if smoke else 48  # prompts per length
    table.eval_seed = 1
    # Prefill latency (batch 1) against prompt length, both rows.
    table.latency_lengths = (64, 128) if smoke else (128, 256, 512, 1024, 2048, 4096, 8192)
    table.topologies = {"default": "v5p-256"} if scale == "pod" else {}
    table.paper = (
        {"claim": ">95% of performance at 8K prompts (retention 8K / 1K >= 0.95)", "value": 0.95,
         "source": "GLM-5, arXiv 2602.15763, as quoted in the issue"},
        {"claim": "dense baselines degrade sharply beyond 4K", "value": 4096,
         "source": "GLM-5, arXiv 2602.15763, as quoted in the issue"},
    )
    return table
