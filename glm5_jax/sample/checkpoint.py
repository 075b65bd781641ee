"""Loading a model and tokenizer for generation from an HF directory or a training workdir.

* Hugging Face directory (``config.json`` + safetensors, as ``save_hf`` writes or transformers
  saves): ``glm5_jax.load_hf``; MTP weights come along when present.
* Training workdir (``python -m glm5_jax.train``): orbax steps under ``DIR/checkpoints/<step>/``
  whose ``state`` item is ``TrainState.as_dict()`` ({"params", "routing", "opt_state", ...}).
  The model config must sit beside it as ``DIR/model_config.json`` (``ModelConfig.to_dict()``)
  or be passed in; the newest step is used. This is an assumption about the workdir layout,
  kept to this one function so it can follow the trainer if that changes.

A ``tokenizer.json`` in the directory (or given explicitly) is loaded with ``tokenizers``.
A training workdir and a tokenizer file may be ``gs://...`` (read through ``etils.epath``); an
HF directory is read from local disk.
"""

from __future__ import annotations

import json
import os

from glm5_jax.config import ModelConfig
from glm5_jax.model import GLM5Model
from glm5_jax.paths import absolute, as_path

TOKENIZER_FILE = "tokenizer.json"
MODEL_CONFIG_FILE = "model_config.json"
CHECKPOINTS_DIR = "checkpoints"


def is_train_workdir(path: str) -> bool:
    return (as_path(path) / CHECKPOINTS_DIR).is_dir() and not (as_path(path) / "config.json").exists()


def _train_workdir_model_config(path: str) -> ModelConfig:
    config_path = as_path(path) / MODEL_CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(
            f"{config_path} not found: a training workdir needs the model config beside its checkpoints "
            f"(ModelConfig.to_dict() as JSON), or pass model_config=...")
    return ModelConfig.from_dict(json.loads(config_path.read_text()))


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
    manager = ocp.CheckpointManager(absolute(as_path(path) / CHECKPOINTS_DIR))
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint steps under {as_path(path) / CHECKPOINTS_DIR}")
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
    candidate = as_path(tokenizer_path or as_path(path) / TOKENIZER_FILE)
    if not candidate.exists():
        if tokenizer_path:
            raise FileNotFoundError(f"tokenizer file {tokenizer_path} does not exist")
        return None
    from glm5_jax.data.tokenizer import load_tokenizer as load_tokenizer_file

    return load_tokenizer_file(candidate)
