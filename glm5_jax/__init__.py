"""glm5_jax: a JAX research codebase for GLM-5-style models.

Public entry points: ``ModelConfig`` and presets (``glm5_jax.config``), ``GLM5Model``,
``init_variables`` / ``abstract_variables``, ``load_hf`` / ``save_hf`` for local Hugging Face
checkpoints, and ``generate``. Heavy modules (jax, the model) are imported on first use, so
command-line tools that only need the sandbox (``glm5-eval``) start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from glm5_jax.config import ConfigError, ModelConfig, get_preset

_LAZY = {
    "GLM5Model": ("glm5_jax.model", "GLM5Model"),
    "init_variables": ("glm5_jax.model", "init_variables"),
    "abstract_variables": ("glm5_jax.model", "abstract_variables"),
    "load_hf": ("glm5_jax.convert.hf_checkpoint", "load_hf"),
    "save_hf": ("glm5_jax.convert.hf_checkpoint", "save_hf"),
    "generate": ("glm5_jax.generate", "generate"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'glm5_jax' has no attribute {name!r}")


__all__ = ["ConfigError", "ModelConfig", "get_preset", *_LAZY]
