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
import ml_dtypes
import numpy as np
from flax import linen as nn
from flax import traverse_util
from jax.sharding import Mesh

from glm5_jax.config import ModelConfig
from glm5_jax.convert import hf_weights as hw
from glm5_jax.convert.hf_config import config_from_hf, config_to_hf
from glm5_jax.model import GLM5Model
from glm5_jax.model.decoder_layer import layer_location
from glm5_jax.model.router import ROUTING_COLLECTION
from glm5_jax.model.variables import abstract_variables, logical_partition_specs

Path = tuple[str, ...]


SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class _Reader:
    """Lazy tensor access across safetensors shards: each file is memory-mapped and a
    tensor is read from its byte range when asked for (the format is an 8-byte header
    length, a JSON header of dtype / shape / offsets, then the raw data)."""

    def __init__(self, path: str):
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"no .safetensors files in {path}")
        self._where: dict[str, tuple[np.memmap, dict]] = {}
        for name in files:
            file_path = os.path.join(path, name)
            with open(file_path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(header_len))
            data = np.memmap(file_path, np.uint8, "r", offset=8 + header_len)
            for key, info in header.items():
                if key != "__metadata__":
                    if info["dtype"] not in SAFETENSORS_DTYPES:
                        raise ValueError(f"{file_path}: tensor {key!r} has dtype {info['dtype']}; "
                                         f"readable dtypes: {sorted(SAFETENSORS_DTYPES)}")
                    self._where[key] = (data, info)

    def _raw(self, key: str) -> np.ndarray:
        data, info = self._where[key]
        start, stop = info["data_offsets"]
        return data[start:stop].view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])

    def has(self, key: str) -> bool:
        return key in self._where

    def read(self, key: str) -> np.ndarray:
        """The tensor as float32; FP8 block-scaled weights (the released GLM-5 FP8 format:
        ``W`` in float8_e4m3fn beside ``W_scale_inv``, one scale per 128 x 128 block) come
        back dequantised."""
        if key not in self._where:
            raise KeyError(f"checkpoint has no tensor {key!r}")
        value = self._raw(key).astype(np.float32)
        scale_name = key + "_scale_inv"
        if scale_name in self._where:
            value = dequantize_blocks(value, self._raw(scale_name))
        return value


FP8_BLOCK = 128  # rows and columns per scale in the FP8 checkpoints


def dequantize_blocks(value: np.ndarray, scale_inv: np.ndarray, block: int = FP8_BLOCK) -> np.ndarray:
    """value [m, n] (already float32) x scale_inv [ceil(m / block), ceil(n / block)]."""
    if value.ndim != 2 or scale_inv.shape != tuple(-(-d // block) for d in value.shape):
        raise ValueError(f"FP8 scales {scale_inv.shape} do not tile a {value.shape} weight in "
                         f"{block} x {block} blocks")
    expanded = np.repeat(np.repeat(scale_inv.astype(np.float32), block, 0), block, 1)
    return value * expanded[: value.shape[0], : value.shape[1]]


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


def load_hf(path: str, mesh: Mesh | None = None, **config_overrides: Any) -> tuple[GLM5Model, dict]:
    """Load a local HF checkpoint directory into ``(model, variables)``.

    Streaming: every variable is built with ``jax.make_array_from_callback``, so each device
    shard reads only its own layers and experts from the safetensors files (bf16, float32, or
    FP8 block-scaled), converted per layer; no whole-model host copy. With ``mesh`` the
    variables land in their training shardings (``sharding.LOGICAL_AXIS_RULES``), else on
    the default device.
    """
    with open(os.path.join(path, "config.json")) as f:
        config = config_from_hf(json.load(f), **config_overrides)
    model = GLM5Model(config)
    shapes = traverse_util.flatten_dict(abstract_variables(model))
    reader = _Reader(path)
    sources: dict[Path, dict[int | None, Any]] = {}  # key -> rep -> fn(expert slice) -> array
    needed: list[str] = []

    def add(key: Path, rep: int | None, names: list[str], fn) -> None:
        sources.setdefault(key, {})[rep] = fn
        needed.extend(names)

    def per_layer_shape(key: Path, rep: int | None) -> tuple[int, ...]:
        return shapes[key].shape if rep is None else shapes[key].shape[1:]

    def linear(key, rep, name, kind, n_in):
        return lambda _experts: hw.to_ours(kind, n_in, reader.read(name), per_layer_shape(key, rep))

    for hf_prefix, root, rep, mlp_type, runs_indexer in _layer_plan(config):
        for suffix, sub, kind, n_in in hw.layer_entries(config, mlp_type, runs_indexer):
            key = ("params",) + root + sub
            add(key, rep, [f"{hf_prefix}.{suffix}"], linear(key, rep, f"{hf_prefix}.{suffix}", kind, n_in))
        if mlp_type == "sparse" and not config.moe_as_dense:
            bias_name = f"{hf_prefix}.mlp.gate.e_score_correction_bias"
            add((ROUTING_COLLECTION,) + root + ("mlp", "gate", "e_score_correction_bias"), rep, [],
                lambda _e, name=bias_name: reader.read(name) if reader.has(name)
                else np.zeros(config.n_routed_experts, np.float32))
            prefix = f"{hf_prefix}.mlp"
            fused = reader.has(f"{prefix}.experts.gate_up_proj")
            names = ([f"{prefix}.experts.gate_up_proj", f"{prefix}.experts.down_proj"] if fused else
                     [f"{prefix}.experts.{e}.{p}_proj.weight" for e in range(config.n_routed_experts)
                      for p in ("gate", "up", "down")])
            for i, name in enumerate(("wi_gate", "wi_up", "wo")):
                add(("params",) + root + ("mlp", "experts", name), rep, names if i == 0 else [],
                    lambda experts, prefix=prefix, name=name: hw.expert_tensors_to_ours(
                        reader.read, reader.has, prefix, config.n_routed_experts, experts)[name])
    for j in range(config.num_mtp_layers):
        prefix = f"model.layers.{config.num_hidden_layers + j}"
        for suffix, sub, kind, n_in in _MTP_EXTRAS:
            key = ("params", f"mtp_{j}") + sub
            add(key, None, [f"{prefix}.{suffix}"], linear(key, None, f"{prefix}.{suffix}", kind, n_in))
    add(("params", "embed_tokens"), None, ["model.embed_tokens.weight"],
        lambda _e: reader.read("model.embed_tokens.weight"))
    add(("params", "norm", "weight"), None, ["model.norm.weight"], lambda _e: reader.read("model.norm.weight"))
    if not config.tie_word_embeddings:
        add(("params", "lm_head", "kernel"), None, ["lm_head.weight"], lambda _e: reader.read("lm_head.weight").T)
    missing = sorted({"/".join(k) for k in shapes if k not in sources}
                     | {n for n in needed if not reader.has(n)})
    if missing:
        raise KeyError(f"checkpoint at {path} lacks tensors for: {missing[:10]}")

    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = {key: device for key in shapes}
    else:
        from glm5_jax.sharding import logical_shardings

        shardings = traverse_util.flatten_dict(logical_shardings(
            mesh, logical_partition_specs(model), abstract_variables(model)))
    param_dtype = jnp.dtype(config.param_dtype)
    variables = {}
    for key, abstract in shapes.items():
        dtype = np.float32 if key[0] == ROUTING_COLLECTION else param_dtype
        variables[key] = jax.make_array_from_callback(
            abstract.shape, shardings[key], _shard_reader(sources[key], abstract.shape, dtype,
                                                          is_expert="experts" in key))
    return model, traverse_util.unflatten_dict(variables)


def _shard_reader(per_layer: dict, shape: tuple[int, ...], dtype, is_expert: bool):
    """The callback that reads one device's shard of a variable: per layer in its range, the
    converted tensor (for expert stacks only the experts in range), then the shard's slice.
    The last few layer tensors are cached: replicas of a shard ask for the same ones."""
    stacked = None not in per_layer
    cache: dict = {}

    def layer(rep, experts: slice):
        key = (rep, experts.start, experts.stop)
        if key not in cache:
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[key] = per_layer[rep](experts)
        return cache[key]

    lead = 1 if stacked else 0  # a scanned stack's layer axis
    layer_shape = shape[lead:]

    def callback(index: tuple[slice, ...]) -> np.ndarray:
        index = tuple(index) + (slice(None),) * (len(shape) - len(index))
        in_layer = index[lead:]
        experts = in_layer[0] if is_expert else slice(None)  # read only these experts
        rest = (slice(None),) + in_layer[1:] if is_expert else in_layer
        shape_read = (-1,) + layer_shape[1:] if is_expert else layer_shape

        def piece(rep):
            return np.asarray(layer(rep, experts)).reshape(shape_read)[rest]

        if not stacked:
            return piece(None).astype(dtype)
        return np.stack([piece(r) for r in range(*index[0].indices(shape[0]))]).astype(dtype)

    return callback


_MTP_EXTRAS = [
    ("enorm.weight", ("enorm", "weight"), hw.COPY, 0),
    ("hnorm.weight", ("hnorm", "weight"), hw.COPY, 0),
    ("eh_proj.weight", ("eh_proj", "kernel"), hw.LINEAR, 1),
    ("shared_head.norm.weight", ("head_norm", "weight"), hw.COPY, 0),
]


MAX_SHARD_BYTES = 5 * 1024**3  # per safetensors file, as transformers writes them


def save_hf(model: GLM5Model, variables: dict, path: str, dtype: str = "float32",
            max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """Write config.json + safetensors that transformers' GlmMoeDsaForCausalLM loads.

    Tensors stream out one layer at a time (a scanned stack's layer is sliced on device before
    it comes to host) into files of at most ``max_shard_bytes``: one ``model.safetensors``
    when everything fits, else ``model-0000i-of-0000N.safetensors`` with
    ``model.safetensors.index.json``.
    """
    from safetensors.numpy import save_file

    config = model.config
    if config.moe_as_dense:
        raise ValueError("moe_as_dense=True (the dense ablation) has no transformers equivalent")
    flat = traverse_util.flatten_dict(nn.meta.unbox(variables))
    np_dtype = np.dtype(jnp.dtype(dtype))
    keep_f32 = ("e_score_correction_bias", "mlp.gate.weight")

    def get(key: Path, rep: int | None) -> np.ndarray:
        value = flat[key] if rep is None else flat[key][rep]
        return np.asarray(jax.device_get(value), np.float32)

    def tensors():
        for hf_prefix, root, rep, mlp_type, runs_indexer in _layer_plan(config):
            for suffix, sub, kind, n_in in hw.layer_entries(config, mlp_type, runs_indexer):
                yield f"{hf_prefix}.{suffix}", hw.to_hf(kind, n_in, get(("params",) + root + sub, rep))
            if mlp_type == "sparse":
                yield f"{hf_prefix}.mlp.gate.e_score_correction_bias", get(
                    (ROUTING_COLLECTION,) + root + ("mlp", "gate", "e_score_correction_bias"), rep)
                experts = {n: get(("params",) + root + ("mlp", "experts", n), rep)
                           for n in ("wi_gate", "wi_up", "wo")}
                yield from hw.expert_tensors_to_hf(f"{hf_prefix}.mlp", experts)
        for j in range(config.num_mtp_layers):
            prefix = f"model.layers.{config.num_hidden_layers + j}"
            for suffix, sub, kind, n_in in _MTP_EXTRAS:
                yield f"{prefix}.{suffix}", hw.to_hf(kind, n_in, get(("params", f"mtp_{j}") + sub, None))
        yield "model.embed_tokens.weight", get(("params", "embed_tokens"), None)
        yield "model.norm.weight", get(("params", "norm", "weight"), None)
        if not config.tie_word_embeddings:
            yield "lm_head.weight", get(("params", "lm_head", "kernel"), None).T

    os.makedirs(path, exist_ok=True)
    files: list[tuple[str, list[str]]] = []
    pending: dict[str, np.ndarray] = {}
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        name = f".part-{len(files):05d}.safetensors"
        save_file(pending, os.path.join(path, name), metadata={"format": "pt"})
        files.append((name, list(pending)))
        pending, pending_bytes = {}, 0

    for name, value in tensors():
        value = np.ascontiguousarray(value if name.endswith(keep_f32) else value.astype(np_dtype))
        if pending and pending_bytes + value.nbytes > max_shard_bytes:
            flush()
        pending[name] = value
        pending_bytes += value.nbytes
    flush()
    if len(files) == 1:
        os.replace(os.path.join(path, files[0][0]), os.path.join(path, "model.safetensors"))
    else:
        weight_map = {}
        for i, (temporary, names) in enumerate(files):
            final = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
            os.replace(os.path.join(path, temporary), os.path.join(path, final))
            weight_map.update(dict.fromkeys(names, final))
        total = sum(os.path.getsize(os.path.join(path, f)) for f in set(weight_map.values()))
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    hf_config = config_to_hf(config)
    hf_config["dtype"] = dtype
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
