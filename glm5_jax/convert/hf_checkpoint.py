"""``load_hf`` / ``save_hf``: local Hugging Face ``GlmMoeDsaForCausalLM`` checkpoints.

Reads config.json plus one or many safetensors shards (``model.safetensors.index.json``), with
no network access. MTP modules, which transformers does not model, are stored the DeepSeek way
as extra layers ``model.layers.{num_hidden_layers + j}`` (enorm, hnorm, eh_proj,
shared_head.norm and a full decoder layer); transformers ignores them when loading.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from glm5_jax.config import ModelConfig
from glm5_jax.convert import hf_weights as hw
from glm5_jax.convert.hf_config import config_from_hf, config_to_hf
from glm5_jax.model import GLM5Model
from glm5_jax.model.decoder_layer import layer_location
from glm5_jax.model.router import ROUTING_COLLECTION
from glm5_jax.model.variables import abstract_variables

Path = tuple[str, ...]


class _Reader:
    """Lazy tensor access across safetensors shards."""

    def __init__(self, path: str):
        from safetensors import safe_open

        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"no .safetensors files in {path}")
        self._where: dict[str, Any] = {}
        self._handles = [safe_open(os.path.join(path, f), framework="flax") for f in files]
        for handle in self._handles:
            for key in handle.keys():
                self._where[key] = handle

    def has(self, key: str) -> bool:
        return key in self._where

    def read(self, key: str) -> np.ndarray:
        if key not in self._where:
            raise KeyError(f"checkpoint has no tensor {key!r}")
        return np.asarray(self._where[key].get_tensor(key)).astype(np.float32)


def _layer_items(config: ModelConfig, layer: int, mtp_index: int | None):
    """(hf prefix, our params root, routing root, mlp type, runs indexer) for a layer."""
    hf_prefix = f"model.layers.{layer}"
    if mtp_index is not None:
        root: Path = (f"mtp_{mtp_index}", "layer")
        mlp_type = "sparse" if config.num_moe_layers else "dense"
        return hf_prefix, root, None, mlp_type, True
    stack, rep, local = layer_location(config, layer)
    return hf_prefix, (stack, "block", local), rep, config.mlp_layer_types[layer], config.indexer_types[layer] == "full"


def _layer_plan(config: ModelConfig):
    for layer in range(config.num_hidden_layers):
        yield _layer_items(config, layer, None)
    for j in range(config.num_mtp_layers):
        yield _layer_items(config, config.num_hidden_layers + j, j)


def load_hf(path: str, **config_overrides: Any) -> tuple[GLM5Model, dict]:
    """Load a local HF checkpoint directory into ``(model, variables)``."""
    with open(os.path.join(path, "config.json")) as f:
        config = config_from_hf(json.load(f), **config_overrides)
    model = GLM5Model(config)
    shapes = traverse_util.flatten_dict(abstract_variables(model))
    reader = _Reader(path)
    out: dict[Path, np.ndarray] = {}

    def put(key: Path, value: np.ndarray, rep: int | None) -> None:
        target = shapes[key]
        if rep is None:
            out[key] = value.reshape(target.shape)
            return
        if key not in out:
            out[key] = np.zeros(target.shape, np.float32)
        out[key][rep] = value.reshape(target.shape[1:])

    def per_layer_shape(key: Path, rep: int | None) -> tuple[int, ...]:
        return shapes[key].shape if rep is None else shapes[key].shape[1:]

    for hf_prefix, root, rep, mlp_type, runs_indexer in _layer_plan(config):
        for suffix, sub, kind, n_in in hw.layer_entries(config, mlp_type, runs_indexer):
            key = ("params",) + root + sub
            put(key, hw.to_ours(kind, n_in, reader.read(f"{hf_prefix}.{suffix}"), per_layer_shape(key, rep)), rep)
        if mlp_type == "sparse" and not config.moe_as_dense:
            bias_key = (ROUTING_COLLECTION,) + root + ("mlp", "gate", "e_score_correction_bias")
            bias_name = f"{hf_prefix}.mlp.gate.e_score_correction_bias"
            bias = reader.read(bias_name) if reader.has(bias_name) else np.zeros(config.n_routed_experts, np.float32)
            put(bias_key, bias, rep)
            experts = hw.expert_tensors_to_ours(reader.read, reader.has, f"{hf_prefix}.mlp", config.n_routed_experts)
            for name, value in experts.items():
                put(("params",) + root + ("mlp", "experts", name), value, rep)
    for j in range(config.num_mtp_layers):
        prefix = f"model.layers.{config.num_hidden_layers + j}"
        for suffix, sub, kind, n_in in _MTP_EXTRAS:
            key = ("params", f"mtp_{j}") + sub
            put(key, hw.to_ours(kind, n_in, reader.read(f"{prefix}.{suffix}"), shapes[key].shape), None)
    put(("params", "embed_tokens"), reader.read("model.embed_tokens.weight"), None)
    put(("params", "norm", "weight"), reader.read("model.norm.weight"), None)
    if not config.tie_word_embeddings:
        put(("params", "lm_head", "kernel"), reader.read("lm_head.weight").T, None)
    missing = sorted("/".join(k) for k in shapes if k not in out)
    if missing:
        raise KeyError(f"checkpoint at {path} lacks tensors for: {missing[:10]}")
    dtype = jnp.dtype(config.param_dtype)
    variables = traverse_util.unflatten_dict(
        {k: jnp.asarray(v, jnp.float32 if k[0] == ROUTING_COLLECTION else dtype) for k, v in out.items()})
    return model, variables


_MTP_EXTRAS = [
    ("enorm.weight", ("enorm", "weight"), hw.COPY, 0),
    ("hnorm.weight", ("hnorm", "weight"), hw.COPY, 0),
    ("eh_proj.weight", ("eh_proj", "kernel"), hw.LINEAR, 1),
    ("shared_head.norm.weight", ("head_norm", "weight"), hw.COPY, 0),
]


def save_hf(model: GLM5Model, variables: dict, path: str, dtype: str = "float32") -> None:
    """Write config.json + model.safetensors that transformers' GlmMoeDsaForCausalLM loads."""
    from safetensors.numpy import save_file

    config = model.config
    if config.moe_as_dense:
        raise ValueError("moe_as_dense=True (the dense ablation) has no transformers equivalent")
    flat = traverse_util.flatten_dict(nn.meta.unbox(variables))
    np_dtype = np.dtype(jnp.dtype(dtype))

    def get(key: Path, rep: int | None) -> np.ndarray:
        value = np.asarray(jax.device_get(flat[key]), np.float32)
        return value if rep is None else value[rep]

    tensors: dict[str, np.ndarray] = {}
    for hf_prefix, root, rep, mlp_type, runs_indexer in _layer_plan(config):
        for suffix, sub, kind, n_in in hw.layer_entries(config, mlp_type, runs_indexer):
            tensors[f"{hf_prefix}.{suffix}"] = hw.to_hf(kind, n_in, get(("params",) + root + sub, rep))
        if mlp_type == "sparse":
            tensors[f"{hf_prefix}.mlp.gate.e_score_correction_bias"] = get(
                (ROUTING_COLLECTION,) + root + ("mlp", "gate", "e_score_correction_bias"), rep)
            experts = {n: get(("params",) + root + ("mlp", "experts", n), rep) for n in ("wi_gate", "wi_up", "wo")}
            tensors.update(hw.expert_tensors_to_hf(f"{hf_prefix}.mlp", experts))
    for j in range(config.num_mtp_layers):
        prefix = f"model.layers.{config.num_hidden_layers + j}"
        for suffix, sub, kind, n_in in _MTP_EXTRAS:
            tensors[f"{prefix}.{suffix}"] = hw.to_hf(kind, n_in, get(("params", f"mtp_{j}") + sub, None))
    tensors["model.embed_tokens.weight"] = get(("params", "embed_tokens"), None)
    tensors["model.norm.weight"] = get(("params", "norm", "weight"), None)
    if not config.tie_word_embeddings:
        tensors["lm_head.weight"] = get(("params", "lm_head", "kernel"), None).T
    os.makedirs(path, exist_ok=True)
    keep_f32 = ("e_score_correction_bias", "mlp.gate.weight")
    save_file({k: np.ascontiguousarray(v if k.endswith(keep_f32) else v.astype(np_dtype))
               for k, v in tensors.items()}, os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})
    hf_config = config_to_hf(config)
    hf_config["dtype"] = dtype
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
