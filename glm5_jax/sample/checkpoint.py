"""Loading a model and tokenizer for generation from an HF directory or a training workdir.

* Hugging Face directory (``config.json`` + safetensors, as ``save_hf`` writes or transformers
  saves): ``glm5_jax.load_hf``; MTP weights come along when present.
* Training workdir (``python -m glm5_jax.train``): orbax steps under ``DIR/checkpoints/<step>/``
  whose ``state`` item is ``TrainState.as_dict()`` ({"params", "routing", "opt_state", ...}).
  The model config must sit beside it as ``DIR/model_config.json`` (``ModelConfig.to_dict()``)
  or be passed in; the newest step is used. This is an assumption about the workdir layout,
  kept to this one function so it can follow the trainer if that changes.

A ``tokenizer.json`` in the directory (or given explicitly) is loaded with ``tokenizers``.
"""

from __future__ import annotations

import json
import os

from glm5_jax.config import ModelConfig
from glm5_jax.model import GLM5Model

TOKENIZER_FILE = "tokenizer.json"
MODEL_CONFIG_FILE = "model_config.json"
CHECKPOINTS_DIR = "checkpoints"


def is_train_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, CHECKPOINTS_DIR)) and not os.path.exists(os.path.join(path, "config.json"))


def _train_workdir_model_config(path: str) -> ModelConfig:
    config_path = os.path.join(path, MODEL_CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(
            f"{config_path} not found: a training workdir needs the model config beside its checkpoints "
            f"(ModelConfig.to_dict() as JSON), or pass model_config=...")
    with open(config_path) as f:
        return ModelConfig.from_dict(json.load(f))


def load_model_config(path: str) -> ModelConfig:
    """The model config of a training workdir (``model_config.json``) or an HF directory."""
    if is_train_workdir(path):
        return _train_workdir_model_config(path)
    hf_path = os.path.join(path, "config.json")
    if not os.path.exists(hf_path):
        raise FileNotFoundError(f"{path} is neither a training workdir (checkpoints/ + "
                                f"{MODEL_CONFIG_FILE}) nor an HF checkpoint directory (config.json)")
    from glm5_jax.convert.hf_config import config_from_hf

    with open(hf_path) as f:
        return config_from_hf(json.load(f))


def load_train_workdir(path: str, model_config: ModelConfig | None = None) -> tuple[GLM5Model, dict]:
    """(model, {"params", "routing"}) from the newest orbax step of a training workdir."""
    import orbax.checkpoint as ocp

    model_config = model_config or _train_workdir_model_config(path)
    manager = ocp.CheckpointManager(os.path.abspath(os.path.join(path, CHECKPOINTS_DIR)))
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint steps under {os.path.join(path, CHECKPOINTS_DIR)}")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    state = restored["state"]
    return GLM5Model(model_config), {"params": state["params"], "routing": state["routing"]}


def load_for_generation(path: str, model_config: ModelConfig | None = None) -> tuple[GLM5Model, dict]:
    """An HF checkpoint directory or a training workdir, whichever ``path`` is."""
    if is_train_workdir(path):
        return load_train_workdir(path, model_config)
    from glm5_jax import load_hf

    return load_hf(path)


def load_tokenizer(path: str, tokenizer_path: str | None = None):
    """A ``tokenizers.Tokenizer`` from tokenizer_path or ``path/tokenizer.json``; None if absent."""
    candidate = tokenizer_path or os.path.join(path, TOKENIZER_FILE)
    if not os.path.exists(candidate):
        if tokenizer_path:
            raise FileNotFoundError(f"tokenizer file {tokenizer_path} does not exist")
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(candidate)
