"""Weights whose MTP head drafts well, for speculative-decoding tests and benchmarks.

A random MTP head almost never agrees with the main model (accepted length ~1.0), which leaves
multi-token acceptance untested and its speedup unmeasured. Here a large token embedding
dominates the residual stream, so the main model's next token depends mostly on the current
one, and the MTP module is set to apply that same map to the token it is given (eh_proj keeps
the token embedding, its layer adds nothing, its head norm is the final norm). Acceptance is
high but not total: attention still moves some argmaxes. Nothing else changes, so every
exactness check still compares a real cached forward against plain decoding.
"""

import jax
import jax.numpy as jnp


def drafter_friendly(variables: dict, config, embedding_scale: float = 100.0) -> dict:
    params = jax.tree_util.tree_map(jnp.asarray, dict(variables["params"]))
    d = config.hidden_size
    params["embed_tokens"] = params["embed_tokens"] * embedding_scale
    mtp = params["mtp_0"]
    mtp["eh_proj"] = {"kernel": jnp.concatenate([jnp.eye(d), jnp.zeros((d, d))], axis=0)}
    layer = mtp["layer"]
    layer["self_attn"]["o_proj"]["kernel"] = jnp.zeros_like(layer["self_attn"]["o_proj"]["kernel"])
    mlp = layer["mlp"]
    if "experts" in mlp:
        mlp["experts"]["wo"] = jnp.zeros_like(mlp["experts"]["wo"])
        if "shared_experts" in mlp:
            mlp["shared_experts"]["down_proj"]["kernel"] = jnp.zeros_like(mlp["shared_experts"]["down_proj"]["kernel"])
    else:
        mlp["down_proj"]["kernel"] = jnp.zeros_like(mlp["down_proj"]["kernel"])
    mtp["head_norm"] = params["norm"]
    return {**variables, "params": params}
