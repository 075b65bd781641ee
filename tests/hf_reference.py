"""Random tiny transformers ``GlmMoeDsaForCausalLM`` checkpoints for parity tests."""

from __future__ import annotations

import os

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
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / (np.max(np.abs(expected)) + 1e-30))
