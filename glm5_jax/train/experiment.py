"""Reading an experiment's ``ml_collections`` config: checks, and the typed configs it implies.

An experiment file (``experiments/<name>.py``) returns a flat-ish ConfigDict; the library
pieces want typed, frozen configs (``ModelConfig``, ``DataConfig``). Converting here, once,
keeps every other module free of ConfigDict look-ups and catches a bad field before anything
compiles. The model's vocabulary size is not a config field: it is the tokenizer's.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import ml_collections

from glm5_jax.config import ModelConfig, get_preset
from glm5_jax.config_fields import set_fields
from glm5_jax.data.config import DataConfig
from glm5_jax.errors import UserError

OPTIMIZERS = ("adamw", "muon")
# Attention stages, in the order a run goes through them (GLM-5: dense pretraining, then DSA):
DENSE = "dense"  # dense attention, everything trains; the indexer already learns (dense KL)
DENSE_WARMUP = "dense_warmup"  # DSA stage 1: only the indexer trains, attention is dense
SPARSE = "sparse"  # DSA stage 2: everything trains, attention uses the indexer's top-k
STAGES = (DENSE, DENSE_WARMUP, SPARSE)

REQUIRED_FIELDS = (
    "model", "seq_len", "batch_size", "total_steps", "warmup_steps", "learning_rate",
    "optimizer", "mesh", "checkpoint_every", "log_every", "seed",
)


class ExperimentConfigError(UserError):
    """An experiment config field is missing or has a value the trainer cannot use."""


def load_experiment(path: str | Path, **overrides) -> ml_collections.ConfigDict:
    """``get_config()`` of an experiment file, with top-level field overrides (the Python
    counterpart of ``--config=path --config.field=value``)."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.update(overrides)
    return config


def validate(config: ml_collections.ConfigDict) -> None:
    """Every rule the trainer relies on, each failure naming the field."""
    missing = [name for name in REQUIRED_FIELDS if name not in config]
    if missing:
        raise ExperimentConfigError(f"config is missing required fields {missing}")

    def positive(*names: str) -> None:
        for name in names:
            value = config[name]
            if not isinstance(value, int) or value < 1:
                raise ExperimentConfigError(f"{name}={value!r} must be a positive integer")

    positive("seq_len", "batch_size", "total_steps", "checkpoint_every", "log_every",
             "grad_accum_steps", "keep_checkpoints")
    if config.optimizer not in OPTIMIZERS:
        raise ExperimentConfigError(f"optimizer={config.optimizer!r}; allowed: {list(OPTIMIZERS)}")
    if config.batch_size % config.grad_accum_steps:
        raise ExperimentConfigError(
            f"batch_size={config.batch_size} must be divisible by grad_accum_steps="
            f"{config.grad_accum_steps}")
    if not 0 <= config.warmup_steps <= config.total_steps:
        raise ExperimentConfigError(
            f"warmup_steps={config.warmup_steps} must be in [0, total_steps={config.total_steps}]")
    if config.learning_rate <= 0:
        raise ExperimentConfigError(f"learning_rate={config.learning_rate} must be positive")
    if not 0 <= config.min_learning_rate_ratio <= 1:
        raise ExperimentConfigError(
            f"min_learning_rate_ratio={config.min_learning_rate_ratio} must be in [0, 1]")
    for name in ("dense_steps", "dense_warmup_steps"):
        if config[name] < 0:
            raise ExperimentConfigError(f"{name}={config[name]} must be >= 0")
    if "vocab_size" in set_fields(config.model_overrides):
        raise ExperimentConfigError(
            "model_overrides.vocab_size is not allowed: the vocabulary size comes from the "
            "tokenizer (set data.vocab_size to change the tokenizer that is trained)")


def model_config_from(config: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
    """The preset, its overrides, the run's dtypes and the tokenizer's vocabulary size."""
    overrides = set_fields(config.model_overrides)
    overrides.update(vocab_size=vocab_size, dtype=config.compute_dtype,
                     param_dtype=config.param_dtype)
    model_config = get_preset(config.model).replace(**overrides)
    if config.seq_len > model_config.max_position_embeddings:
        raise ExperimentConfigError(
            f"seq_len={config.seq_len} exceeds the model's max_position_embeddings="
            f"{model_config.max_position_embeddings}")
    return model_config


def data_config_from(config: ml_collections.ConfigDict) -> DataConfig:
    """DataConfig from ``config.data`` plus the run-level seq_len, batch_size and seed."""
    known = {field.name for field in dataclasses.fields(DataConfig)}
    values = {k: v for k, v in config.data.to_dict().items() if v is not None}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ExperimentConfigError(f"unknown data fields {unknown}; allowed: {sorted(known)}")
    values.update(seq_len=config.seq_len, batch_size=config.batch_size, seed=config.seed)
    return DataConfig(**values)


def stage_at(config: ml_collections.ConfigDict, step: int) -> str:
    """The attention stage of update number ``step`` (1-based).

    Steps 1..dense_steps train the whole model with dense attention (pretraining before DSA);
    the next dense_warmup_steps are DSA stage 1; the rest are stage 2. The rule depends only
    on the step, so resuming with other values switches stage mid-run (e.g. end the warm-up
    now by resuming with a smaller dense_warmup_steps).
    """
    if step <= config.dense_steps:
        return DENSE
    if step <= config.dense_steps + config.dense_warmup_steps:
        return DENSE_WARMUP
    return SPARSE
