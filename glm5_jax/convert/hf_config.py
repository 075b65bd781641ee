"""ModelConfig <-> Hugging Face ``config.json`` (model_type ``glm_moe_dsa``)."""

from __future__ import annotations

from typing import Any, Mapping

from glm5_jax.config import ConfigError, ModelConfig

# HF keys copied one to one.
_SAME_NAME = (
    "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
    "qk_rope_head_dim", "v_head_dim", "max_position_embeddings", "n_routed_experts",
    "n_shared_experts", "num_experts_per_tok", "n_group", "topk_group", "routed_scaling_factor",
    "norm_topk_prob", "first_k_dense_replace", "index_topk", "index_n_heads", "index_head_dim",
    "rms_norm_eps", "hidden_act", "tie_word_embeddings", "attention_bias", "initializer_range",
    "bos_token_id", "eos_token_id", "pad_token_id",
)
# HF keys that carry no information for this model (derived or training-only).
_IGNORED = {
    "architectures", "model_type", "transformers_version", "head_dim", "qk_head_dim", "layer_types",
    "use_cache", "attention_dropout", "mlp_bias", "output_router_logits", "dtype", "torch_dtype",
    "num_local_experts",
}


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """Translate an HF config dict; raises ConfigError naming unsupported settings."""
    if hf.get("model_type", "glm_moe_dsa") != "glm_moe_dsa":
        raise ConfigError(f"model_type={hf.get('model_type')!r} is not supported; allowed: ['glm_moe_dsa']")
    if hf.get("mlp_bias") or hf.get("attention_bias"):
        raise ConfigError("attention_bias/mlp_bias=True is not supported; allowed values: [False]")
    values: dict[str, Any] = {k: hf[k] for k in _SAME_NAME if k in hf}
    if isinstance(values.get("eos_token_id"), list):
        values["eos_token_id"] = values["eos_token_id"][0]
    rope = dict(hf.get("rope_parameters") or {})
    if "rope_theta" in hf and "rope_theta" not in rope:
        rope["rope_theta"] = hf["rope_theta"]
    values["rope_theta"] = float(rope.get("rope_theta", 10000.0))
    values["rope_type"] = rope.get("rope_type", "default")
    for ours, theirs in (("rope_factor", "factor"), ("rope_beta_fast", "beta_fast"),
                         ("rope_beta_slow", "beta_slow"), ("rope_mscale", "mscale"),
                         ("rope_mscale_all_dim", "mscale_all_dim"),
                         ("rope_original_max_position_embeddings", "original_max_position_embeddings")):
        if rope.get(theirs) is not None:
            values[ours] = rope[theirs]
    if hf.get("mlp_layer_types") is not None:
        values["mlp_layer_types"] = tuple(hf["mlp_layer_types"])
    if hf.get("indexer_types") is not None:
        values["indexer_types"] = tuple(hf["indexer_types"])
    values["num_mtp_layers"] = int(hf.get("num_nextn_predict_layers", 0))
    values["mtp_num_steps"] = int(hf.get("mtp_num_steps", max(values["num_mtp_layers"], 1)))
    values["mtp_share_parameters"] = bool(hf.get("mtp_share_parameters", values["num_mtp_layers"] <= 1))
    values.update(overrides)
    return ModelConfig.from_dict(values)


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    out: dict[str, Any] = {k: getattr(config, k) for k in _SAME_NAME}
    rope: dict[str, Any] = {"rope_type": config.rope_type, "rope_theta": config.rope_theta}
    if config.rope_type == "yarn":
        rope.update(factor=config.rope_factor, beta_fast=config.rope_beta_fast,
                    beta_slow=config.rope_beta_slow, mscale=config.rope_mscale,
                    mscale_all_dim=config.rope_mscale_all_dim,
                    original_max_position_embeddings=config.rope_original_max_position_embeddings)
    out.update(
        architectures=["GlmMoeDsaForCausalLM"], model_type="glm_moe_dsa", rope_parameters=rope,
        mlp_layer_types=list(config.mlp_layer_types), indexer_types=list(config.indexer_types),
        num_nextn_predict_layers=config.num_mtp_layers, mtp_num_steps=config.mtp_num_steps,
        mtp_share_parameters=config.mtp_share_parameters,
    )
    return out
