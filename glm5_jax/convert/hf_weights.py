"""Parameter layout mapping between Hugging Face safetensors and our variable tree.

HF stores one ``torch.nn.Linear`` weight [out, in] per projection and one entry per layer; we
store kernels [in..., out...] with heads/experts as explicit axes, and layers stacked along a
leading scan axis. Each entry of ``_layer_entries`` names both sides and how many leading
kernel dims are inputs, which is all a transpose-and-reshape needs in either direction.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from glm5_jax.config import ModelConfig

LINEAR, COPY = "linear", "copy"


def _attention_entries(runs_indexer: bool) -> list[tuple[str, tuple[str, ...], str, int]]:
    entries = [
        ("self_attn.q_a_proj.weight", ("self_attn", "q_a_proj", "kernel"), LINEAR, 1),
        ("self_attn.q_a_layernorm.weight", ("self_attn", "q_a_layernorm", "weight"), COPY, 0),
        ("self_attn.q_b_proj.weight", ("self_attn", "q_b_proj", "kernel"), LINEAR, 1),
        ("self_attn.kv_a_proj_with_mqa.weight", ("self_attn", "kv_a_proj_with_mqa", "kernel"), LINEAR, 1),
        ("self_attn.kv_a_layernorm.weight", ("self_attn", "kv_a_layernorm", "weight"), COPY, 0),
        ("self_attn.kv_b_proj.weight", ("self_attn", "kv_b_proj", "kernel"), LINEAR, 1),
        ("self_attn.o_proj.weight", ("self_attn", "o_proj", "kernel"), LINEAR, 2),
        ("input_layernorm.weight", ("input_layernorm", "weight"), COPY, 0),
        ("post_attention_layernorm.weight", ("post_attention_layernorm", "weight"), COPY, 0),
    ]
    if runs_indexer:
        entries += [
            ("self_attn.indexer.wq_b.weight", ("self_attn", "indexer", "wq_b", "kernel"), LINEAR, 1),
            ("self_attn.indexer.wk.weight", ("self_attn", "indexer", "wk", "kernel"), LINEAR, 1),
            ("self_attn.indexer.k_norm.weight", ("self_attn", "indexer", "k_norm", "weight"), COPY, 0),
            ("self_attn.indexer.k_norm.bias", ("self_attn", "indexer", "k_norm", "bias"), COPY, 0),
            ("self_attn.indexer.weights_proj.weight", ("self_attn", "indexer", "weights_proj", "kernel"), LINEAR, 1),
        ]
    return entries


def _mlp_entries(prefix_hf: str, prefix_ours: tuple[str, ...]) -> list[tuple[str, tuple[str, ...], str, int]]:
    return [(f"{prefix_hf}.{p}.weight", prefix_ours + (p, "kernel"), LINEAR, 1)
            for p in ("gate_proj", "up_proj", "down_proj")]


def layer_entries(config: ModelConfig, mlp_type: str, runs_indexer: bool):
    """(hf suffix, our path, kind, number of input dims) for one decoder layer's parameters."""
    entries = _attention_entries(runs_indexer)
    if mlp_type == "dense" or config.moe_as_dense:
        entries += _mlp_entries("mlp", ("mlp",))
    else:
        entries.append(("mlp.gate.weight", ("mlp", "gate", "kernel"), LINEAR, 1))
        if config.n_shared_experts:
            entries += _mlp_entries("mlp.shared_experts", ("mlp", "shared_experts"))
    return entries


def to_ours(kind: str, n_in: int, weight: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if kind == COPY:
        return weight.reshape(shape)
    return np.ascontiguousarray(weight.T).reshape(shape)


def to_hf(kind: str, n_in: int, kernel: np.ndarray) -> np.ndarray:
    if kind == COPY:
        return kernel
    fan_in = int(np.prod(kernel.shape[:n_in]))
    return np.ascontiguousarray(kernel.reshape(fan_in, -1).T)


def expert_tensors_to_ours(read: Callable[[str], np.ndarray], has: Callable[[str], bool],
                           prefix: str, num_experts: int, experts: slice = slice(None)
                           ) -> dict[str, np.ndarray]:
    """Experts ``experts`` (default all) from either HF layout: fused ``gate_up_proj`` or one
    Linear per expert (then only the selected experts' tensors are read)."""
    if has(f"{prefix}.experts.gate_up_proj"):
        gate_up = read(f"{prefix}.experts.gate_up_proj")[experts]  # [e, 2f, d]
        width = gate_up.shape[1] // 2
        return {
            "wi_gate": np.ascontiguousarray(gate_up[:, :width].transpose(0, 2, 1)),
            "wi_up": np.ascontiguousarray(gate_up[:, width:].transpose(0, 2, 1)),
            "wo": np.ascontiguousarray(read(f"{prefix}.experts.down_proj")[experts].transpose(0, 2, 1)),
        }
    stacked = {name: [] for name in ("wi_gate", "wi_up", "wo")}
    for e in range(num_experts)[experts]:
        stacked["wi_gate"].append(read(f"{prefix}.experts.{e}.gate_proj.weight").T)
        stacked["wi_up"].append(read(f"{prefix}.experts.{e}.up_proj.weight").T)
        stacked["wo"].append(read(f"{prefix}.experts.{e}.down_proj.weight").T)
    return {k: np.ascontiguousarray(np.stack(v)) for k, v in stacked.items()}


def expert_tensors_to_hf(prefix: str, experts: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """One Linear per expert, the layout transformers itself writes."""
    for e in range(experts["wi_gate"].shape[0]):
        yield f"{prefix}.experts.{e}.gate_proj.weight", np.ascontiguousarray(experts["wi_gate"][e].T)
        yield f"{prefix}.experts.{e}.up_proj.weight", np.ascontiguousarray(experts["wi_up"][e].T)
        yield f"{prefix}.experts.{e}.down_proj.weight", np.ascontiguousarray(experts["wo"][e].T)
