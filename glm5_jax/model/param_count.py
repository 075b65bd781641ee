"""Parameter counts from abstract shapes: total, and active per token (what one token touches).

A token uses every parameter except the routed experts it was not sent to: per MoE layer it
touches k of n_routed_experts experts. MTP modules are counted in the total but not in the
active count of the main forward pass (they only run for training losses and drafting).
"""

from __future__ import annotations

import numpy as np
from flax import traverse_util

from glm5_jax.config import ModelConfig
from glm5_jax.model.transformer import GLM5Model
from glm5_jax.model.variables import abstract_variables


def abstract_params(config: ModelConfig) -> dict:
    return abstract_variables(GLM5Model(config))["params"]


def count_parameters(config: ModelConfig) -> dict[str, int]:
    flat = traverse_util.flatten_dict(abstract_params(config))
    total = mtp = routed = embedding = 0
    for path, leaf in flat.items():
        size = int(np.prod(leaf.shape))
        total += size
        if path[0].startswith("mtp_"):
            mtp += size
        elif "experts" in path and path[-1] in ("wi_gate", "wi_up", "wo"):
            routed += size
        if path[0] in ("embed_tokens", "lm_head"):
            embedding += size
    main = total - mtp
    k = config.max_experts_per_tok if config.n_routed_experts else 0
    unused_routed = routed * (1 - k / config.n_routed_experts) if config.n_routed_experts else 0
    active = int(round(main - unused_routed))
    return {
        "total": total,
        "total_without_mtp": main,
        "mtp": mtp,
        "routed_experts": routed,
        "embedding_and_head": embedding,
        "active_per_token": active,
        "active_per_token_without_embedding": active - embedding,
    }
