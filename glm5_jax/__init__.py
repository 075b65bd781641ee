"""glm5_jax: a JAX research codebase for GLM-5-style models.

Public entry points: ``ModelConfig`` and presets (``glm5_jax.config``), ``GLM5Model``,
``load_hf`` / ``save_hf`` for local Hugging Face checkpoints.
"""

from glm5_jax.config import ConfigError, ModelConfig, get_preset
from glm5_jax.model import GLM5Model, abstract_variables, init_variables


def load_hf(path: str, **config_overrides):
    """(model, variables) from a local HF ``GlmMoeDsaForCausalLM`` directory."""
    from glm5_jax.convert.hf_checkpoint import load_hf as _load

    return _load(path, **config_overrides)


def save_hf(model, variables, path: str, dtype: str = "float32") -> None:
    """Write a checkpoint directory that transformers loads."""
    from glm5_jax.convert.hf_checkpoint import save_hf as _save

    _save(model, variables, path, dtype)


__all__ = [
    "ConfigError", "ModelConfig", "GLM5Model", "abstract_variables", "get_preset", "init_variables",
    "load_hf", "save_hf",
]
