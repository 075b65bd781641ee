"""A CPU-test-sized experiment: the tiny preset trimmed for compile time, on a synthetic corpus.

Why a library function and not a fixture: the loop test, its command-line runs (through an
experiment file that calls this) and the indexer test all build *the same* config, so they
compile the same programs and the persistent compilation cache shares them. On CPU,
compiling the train step costs far more than running it. The trim keeps the structure the
loop's mechanics touch (a dense-prefix layer with its own indexer, an MoE layer that reuses
that selection, routing biases, sparse attention at seq_len 32 > index_topk 16) in 2
layers, and drops the MTP module, which on its own doubles the step's compile time (an
unscanned MoE layer plus ~25 more parameters for the optimizer). MTP's loss is unit-tested
(tests/test_train_losses.py) and trained by the main job and the benchmark. The run is
sparse from step 1 (the dense stages are exercised by the indexer test and the main job).
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from glm5_jax.config import ModelConfig
from glm5_jax.config_fields import overridable
from glm5_jax.data.synthetic_corpus import write_synthetic_corpus
from glm5_jax.train.experiment import load_experiment

REPO = Path(__file__).resolve().parents[2]
TEST_MODEL_OVERRIDES = {"num_hidden_layers": 2, "first_k_dense_replace": 1,
                        "indexer_types": ("full", "shared"), "num_mtp_layers": 0}
TEST_TOTAL_STEPS = 8


def cpu_test_config(corpus_dir: str | Path, data_dir: str | Path, **changes) -> ml_collections.ConfigDict:
    """experiments/tiny.py at seq_len 32 (> index_topk 16: the indexer selects), batch 4,
    TEST_TOTAL_STEPS steps, on the corpus in ``corpus_dir`` (see ``write_test_corpus``)."""
    config = load_experiment(REPO / "experiments" / "tiny.py")
    config.model_overrides = overridable(ModelConfig, **TEST_MODEL_OVERRIDES)
    config.data.corpus = str(corpus_dir)
    config.data.data_dir = str(data_dir)
    config.data.vocab_size = 320
    config.update(seq_len=32, batch_size=4, total_steps=TEST_TOTAL_STEPS, warmup_steps=2,
                  checkpoint_every=2, keep_checkpoints=20, log_every=1, progress_bar=False,
                  peak_flops_per_device=1e11, dense_steps=0, dense_warmup_steps=0)
    config.update(changes)
    return config


def write_test_corpus(directory: str | Path) -> Path:
    """The synthetic corpus every test run uses (same documents: same tokenizer, same shapes)."""
    write_synthetic_corpus(directory, num_documents=60, seed=0)
    return Path(directory)
