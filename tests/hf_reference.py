"""Random tiny transformers ``GlmMoeDsaForCausalLM`` checkpoints for parity tests."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np


def tiny_hf_config(**overrides):
    from transformers import GlmMoeDsaConfig

    values = dict(
        vocab_size=96, hidden_size=48, intermediate_size=64, moe_intermediate_size=24,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=24,
        kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12,
        n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=1, topk_group=1,
        routed_scaling_factor=2.5, first_k_dense_replace=1, index_topk=8,
        # 16 index heads: the index score is a weighted sum of 16 ReLUs of random projections,
        # so two keys tie (and top-k could legally pick either) with probability ~0.
        index_n_heads=16, index_head_dim=16, indexer_types=["full", "full", "shared", "full"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=512,
    )
    values.update(overrides)
    return GlmMoeDsaConfig(**values)


def make_hf_checkpoint(path: str, seed: int = 0, **overrides):
    """Save a randomly initialised model (weights far from identity) and return it (eval mode)."""
    import torch
    from transformers import GlmMoeDsaForCausalLM

    torch.manual_seed(seed)
    config = tiny_hf_config(**overrides)
    config._attn_implementation = "eager"
    model = GlmMoeDsaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith("norm.bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
            else:
                fan_in = param.shape[-1]
                param.copy_(torch.randn(param.shape, generator=generator) / np.sqrt(fan_in))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.05 * torch.randn(buf.shape, generator=generator))
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    return model


def hf_logits(model, input_ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(input_ids, dtype=torch.long)).logits.float().numpy()


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|, leaf by leaf; the worst leaf's error.

    ``actual`` and ``expected`` are arrays (anything ``np.asarray`` takes, shapes must be
    equal: no broadcasting) or dicts of them, such as parameter or gradient trees with the
    same structure. Each leaf is judged against its own scale, never against the largest
    leaf: the gradients of the tiny models span 5e-7 (MTP q_a_layernorm) to 1e-1
    (embeddings), so one scale for the whole tree would leave the small leaves unchecked.
    Within a leaf the scale stays the leaf's maximum: float32 rounding follows the size of
    the terms summed, not of the result, so elements far below the maximum carry errors at
    the maximum's scale (a per-element relative error fails float32 noise).

    The scale has an absolute floor from the dtype, its smallest normal number
    (``finfo.tiny``; XLA flushes anything smaller to zero): a leaf whose reference is zero,
    such as the indexer's gradients under the LM loss alone, must come out zero.
    """
    if isinstance(expected, Mapping) or isinstance(actual, Mapping):
        errors = leaf_relative_errors(actual, expected)
        return max(errors.values(), default=0.0)
    return _array_relative_error(actual, expected)


def leaf_relative_errors(actual, expected) -> dict[str, float]:
    """``relative_error`` of every leaf of two trees with the same structure, by path."""
    import jax

    structure = jax.tree_util.tree_structure(expected)
    if jax.tree_util.tree_structure(actual) != structure:
        raise AssertionError(f"tree structures differ: {jax.tree_util.tree_structure(actual)} "
                             f"!= {structure}")
    return {jax.tree_util.keystr(path): _array_relative_error(a, e)
            for (path, e), a in zip(jax.tree_util.tree_leaves_with_path(expected),
                                    jax.tree_util.tree_leaves(actual))}


def _array_relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {actual.shape} != {expected.shape}")
    floor = max((float(np.finfo(x.dtype).tiny) for x in (actual, expected)
                 if np.issubdtype(x.dtype, np.inexact) or x.dtype.name == "bfloat16"),
                default=float(np.finfo(np.float64).tiny))
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    if actual.size == 0:
        return 0.0
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), floor))
