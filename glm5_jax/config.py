"""Typed, frozen GLM-5 model configuration and named presets.

Field names and meanings follow the Hugging Face ``GlmMoeDsaConfig`` (``glm_moe_dsa``) so a
checkpoint's ``config.json`` maps onto this class one to one; fields that transformers does not
have (multi-token prediction, dynamic routing, kernel choice, dtypes) are ours and documented.
Every rule is checked in ``__post_init__`` and a violation names the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence
from glm5_jax.errors import UserError

ROPE_TYPES = ("default", "yarn")
MLP_LAYER_TYPES = ("dense", "sparse")
INDEXER_TYPES = ("full", "shared")
ROUTER_MODES = ("static", "dynamic")
ATTENTION_IMPLS = ("masked_dense", "gather", "pallas")
MOE_IMPLS = ("ragged_dot", "pallas", "blocked", "dense")
# What a scanned block keeps for the backward pass (glm5_jax/model/remat.py says each).
REMAT_POLICIES = ("none", "full", "save_dots", "save_dots_offload")
# How tokens reach their experts' devices under a mesh (glm5_jax/model/expert_parallel.py).
EXPERT_DISPATCHES = ("padded", "ragged")
DTYPES = ("float32", "bfloat16", "float16")
ACTIVATIONS = ("silu",)


class ConfigError(UserError):
    """A config field has a value outside what the model supports."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """GLM-5 (``glm_moe_dsa``) architecture hyper-parameters.

    Per-layer pattern fields (``mlp_layer_types``, ``indexer_types``) default from the scalar
    fields exactly as transformers derives them; they are stored as tuples so the config hashes
    and can be a static argument of ``jax.jit``.
    """

    vocab_size: int = 154880
    hidden_size: int = 6144
    intermediate_size: int = 12288
    moe_intermediate_size: int = 2048
    num_hidden_layers: int = 78
    num_attention_heads: int = 64
    num_key_value_heads: int = 64
    # Multi-head latent attention.
    q_lora_rank: int = 2048
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 192
    qk_rope_head_dim: int = 64
    v_head_dim: int = 256
    # Rotary embedding (interleaved pairs on the rope slice only).
    rope_theta: float = 1_000_000.0
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_original_max_position_embeddings: int = 4096
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_mscale: float = 1.0
    rope_mscale_all_dim: float = 0.0
    max_position_embeddings: int = 202752
    # Mixture of experts.
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    first_k_dense_replace: int = 3
    mlp_layer_types: tuple[str, ...] | None = None
    # DeepSeek Sparse Attention: the lightning indexer.
    index_topk: int = 2048
    index_n_heads: int = 32
    index_head_dim: int = 128
    indexer_types: tuple[str, ...] | None = None
    # Multi-token prediction (not in transformers; GLM-5 shares one module over 3 steps).
    num_mtp_layers: int = 1
    mtp_share_parameters: bool = True
    mtp_num_steps: int = 3
    # Dynamic per-token capacity ("dynamic sparse activation"): ours, off by default.
    router_mode: str = "static"
    router_k_min: int = 1
    router_k_max: int = 8
    router_score_threshold: float = 0.9
    # Ablation: replace every MoE layer by a dense MLP with the MoE's active width.
    moe_as_dense: bool = False
    # Numerics and implementation choices.
    rms_norm_eps: float = 1e-5
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    initializer_range: float = 0.02
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention_impl: str = "masked_dense"
    moe_impl: str = "ragged_dot"
    remat_policy: str = "none"  # per scanned block; see REMAT_POLICIES
    # Expert parallelism: "padded" all-to-all (runs everywhere) or "ragged" (TPU/GPU only);
    # capacity factor 0 = dropless, c > 0 = receive buffers of c x a device's own rows.
    expert_dispatch: str = "padded"
    expert_capacity_factor: float = 0.0
    bos_token_id: int | None = 0
    eos_token_id: int | None = 1
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.mlp_layer_types is None:
            n_dense = min(self.first_k_dense_replace, self.num_hidden_layers)
            object.__setattr__(
                self,
                "mlp_layer_types",
                ("dense",) * n_dense + ("sparse",) * (self.num_hidden_layers - n_dense),
            )
        else:
            object.__setattr__(self, "mlp_layer_types", tuple(self.mlp_layer_types))
        if self.indexer_types is None:
            object.__setattr__(self, "indexer_types", ("full",) * self.num_hidden_layers)
        else:
            object.__setattr__(self, "indexer_types", tuple(self.indexer_types))
        _validate(self)

    # Derived quantities -------------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def attention_scale(self) -> float:
        """Softmax scale: qk_head_dim^-0.5, times yarn's mscale^2 when yarn scaling is on."""
        scale = self.qk_head_dim**-0.5
        if self.rope_type == "yarn" and self.rope_mscale_all_dim:
            mscale = _yarn_mscale(self.rope_factor, self.rope_mscale_all_dim)
            scale = scale * mscale * mscale
        return scale

    @property
    def num_dense_layers(self) -> int:
        return sum(t == "dense" for t in self.mlp_layer_types)

    @property
    def num_moe_layers(self) -> int:
        return sum(t == "sparse" for t in self.mlp_layer_types)

    @property
    def dense_equivalent_width(self) -> int:
        """Width of the dense MLP that replaces an MoE layer when ``moe_as_dense`` is set."""
        return self.moe_intermediate_size * (self.n_shared_experts + self.num_experts_per_tok)

    @property
    def max_experts_per_tok(self) -> int:
        """Routed slots computed per token: k, or k_max in dynamic mode."""
        return self.router_k_max if self.router_mode == "dynamic" else self.num_experts_per_tok

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with ``changes``; pattern fields are re-derived unless given explicitly."""
        if "num_hidden_layers" in changes or "first_k_dense_replace" in changes:
            changes.setdefault("mlp_layer_types", None)
            changes.setdefault("indexer_types", None)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        """Build from a plain mapping; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; allowed keys are {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["mlp_layer_types"] = list(self.mlp_layer_types)
        out["indexer_types"] = list(self.indexer_types)
        return out


def _yarn_mscale(scale: float, mscale: float) -> float:
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _one_of(config: ModelConfig, name: str, allowed: Sequence[Any]) -> None:
    value = getattr(config, name)
    _require(value in allowed, f"{name}={value!r} is not supported; allowed values: {list(allowed)}")


def _positive(config: ModelConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        _require(isinstance(value, int) and value > 0, f"{name}={value!r} must be a positive integer")


def _validate(c: ModelConfig) -> None:
    _positive(
        c, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "q_lora_rank", "kv_lora_rank",
        "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "index_topk", "index_n_heads",
        "index_head_dim", "n_group", "topk_group",
    )
    for name in ("rope_type", "router_mode", "attention_impl", "moe_impl", "hidden_act",
                 "remat_policy", "expert_dispatch"):
        allowed = {"expert_dispatch": EXPERT_DISPATCHES, "rope_type": ROPE_TYPES, "router_mode": ROUTER_MODES,
                   "attention_impl": ATTENTION_IMPLS, "moe_impl": MOE_IMPLS,
                   "hidden_act": ACTIVATIONS, "remat_policy": REMAT_POLICIES}[name]
        _one_of(c, name, allowed)
    _one_of(c, "dtype", DTYPES)
    _require(c.expert_capacity_factor >= 0,
             f"expert_capacity_factor={c.expert_capacity_factor} must be >= 0 (0 = dropless)")
    _one_of(c, "param_dtype", DTYPES)
    _require(c.num_attention_heads % c.num_key_value_heads == 0,
             f"num_attention_heads={c.num_attention_heads} must be divisible by "
             f"num_key_value_heads={c.num_key_value_heads}")
    _require(c.qk_rope_head_dim % 2 == 0,
             f"qk_rope_head_dim={c.qk_rope_head_dim} must be even (rope rotates pairs)")
    _require(c.index_head_dim >= c.qk_rope_head_dim,
             f"index_head_dim={c.index_head_dim} must be >= qk_rope_head_dim={c.qk_rope_head_dim} "
             "(the indexer applies rope to its first qk_rope_head_dim dimensions)")
    _require(c.rope_theta > 0, f"rope_theta={c.rope_theta} must be positive")
    _require(len(c.mlp_layer_types) == c.num_hidden_layers,
             f"mlp_layer_types has {len(c.mlp_layer_types)} entries; num_hidden_layers="
             f"{c.num_hidden_layers} requires exactly that many")
    for i, kind in enumerate(c.mlp_layer_types):
        _require(kind in MLP_LAYER_TYPES,
                 f"mlp_layer_types[{i}]={kind!r} is not supported; allowed values: {list(MLP_LAYER_TYPES)}")
    dense_prefix = c.num_dense_layers
    _require(tuple(c.mlp_layer_types) == ("dense",) * dense_prefix + ("sparse",) * c.num_moe_layers,
             "mlp_layer_types must be a dense prefix followed by sparse layers "
             f"(got {list(c.mlp_layer_types)}); the model scans them as two stacks")
    _require(len(c.indexer_types) == c.num_hidden_layers,
             f"indexer_types has {len(c.indexer_types)} entries; num_hidden_layers="
             f"{c.num_hidden_layers} requires exactly that many")
    for i, kind in enumerate(c.indexer_types):
        _require(kind in INDEXER_TYPES,
                 f"indexer_types[{i}]={kind!r} is not supported; allowed values: {list(INDEXER_TYPES)}")
    _require(c.indexer_types[0] == "full",
             "indexer_types[0] must be 'full': a 'shared' layer reuses the previous full layer's top-k")
    if c.num_moe_layers:
        _positive(c, "n_routed_experts", "moe_intermediate_size", "num_experts_per_tok")
        _require(c.n_shared_experts >= 0, f"n_shared_experts={c.n_shared_experts} must be >= 0")
        _require(c.num_experts_per_tok <= c.n_routed_experts,
                 f"num_experts_per_tok={c.num_experts_per_tok} must be <= n_routed_experts="
                 f"{c.n_routed_experts}")
        _require(c.n_routed_experts % c.n_group == 0,
                 f"n_routed_experts={c.n_routed_experts} must be divisible by n_group={c.n_group}")
        _require(c.topk_group <= c.n_group,
                 f"topk_group={c.topk_group} must be <= n_group={c.n_group}")
        per_group = c.n_routed_experts // c.n_group
        _require(per_group >= 2 or c.n_group == 1,
                 f"n_routed_experts/n_group={per_group}: group scoring sums each group's top-2, "
                 "so every group needs at least 2 experts")
        _require(c.num_experts_per_tok <= c.topk_group * per_group,
                 f"num_experts_per_tok={c.num_experts_per_tok} must be <= topk_group * experts per "
                 f"group = {c.topk_group * per_group}")
        if c.router_mode == "dynamic":
            _require(1 <= c.router_k_min <= c.router_k_max,
                     f"router_k_min={c.router_k_min} and router_k_max={c.router_k_max} must satisfy "
                     "1 <= router_k_min <= router_k_max")
            _require(c.router_k_max <= c.topk_group * per_group,
                     f"router_k_max={c.router_k_max} must be <= topk_group * experts per group = "
                     f"{c.topk_group * per_group}")
            _require(0.0 < c.router_score_threshold <= 1.0,
                     f"router_score_threshold={c.router_score_threshold} must be in (0, 1]")
    _require(c.num_mtp_layers >= 0, f"num_mtp_layers={c.num_mtp_layers} must be >= 0")
    if c.num_mtp_layers:
        _require(c.mtp_num_steps >= 1, f"mtp_num_steps={c.mtp_num_steps} must be >= 1")
        _require(c.mtp_share_parameters or c.mtp_num_steps == c.num_mtp_layers,
                 f"with mtp_share_parameters=False, mtp_num_steps={c.mtp_num_steps} must equal "
                 f"num_mtp_layers={c.num_mtp_layers} (one module per step)")
    if c.rope_type == "yarn":
        _require(c.rope_factor >= 1.0, f"rope_factor={c.rope_factor} must be >= 1 for yarn")


# Presets -----------------------------------------------------------------------------------

def glm5_full() -> ModelConfig:
    """The released GLM-5 (744B total parameters, ~40B active per token)."""
    return ModelConfig()


def tiny() -> ModelConfig:
    """Same structure as GLM-5 at CPU size: dense prefix, grouped MoE, shared indexer layers, MTP."""
    return ModelConfig(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=32,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        rope_theta=10_000.0,
        max_position_embeddings=4096,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        routed_scaling_factor=2.5,
        first_k_dense_replace=1,
        index_topk=16,
        index_n_heads=8,
        index_head_dim=16,
        indexer_types=("full", "full", "shared", "full", "shared"),
        num_mtp_layers=1,
        mtp_share_parameters=True,
        mtp_num_steps=2,
        router_k_max=4,
    )


def dense_baseline(base: ModelConfig | None = None) -> ModelConfig:
    """Dense counterpart of ``base`` (default: tiny) with the same active parameters per token.

    Each MoE layer activates (n_shared + k) experts of width moe_intermediate_size; with
    ``moe_as_dense`` every MoE layer becomes one dense MLP of width
    moe_intermediate_size * (n_shared + k), so the active parameter count matches (the router,
    hidden_size * n_routed_experts weights per layer, is the only difference).
    """
    return (base or tiny()).replace(moe_as_dense=True)


PRESETS = {"glm5_full": glm5_full, "tiny": tiny, "dense_baseline": dense_baseline}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"preset={name!r} is unknown; allowed values: {sorted(PRESETS)}")
    return PRESETS[name]()
