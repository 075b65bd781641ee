"""Auxiliary-loss-free load balancing (DeepSeek-V3): the rule that moves the routing bias.

After every applied step, each MoE layer's e_score_correction_bias moves by a fixed amount
toward balance: b_i += rate * sign(mean_load - load_i). An overloaded expert becomes less
attractive to the top-k *choice* (the bias never enters the combine weights), so load
evens out without a gradient fighting the language-model loss. The bias lives in the
``routing`` collection, outside the optimizer's reach; this is the only code that writes it.

Loads come from what the MoE layers sow as ``intermediates/.../mlp/expert_load`` (token
counts per expert); the bias of ``.../mlp/gate/e_score_correction_bias`` pairs with the
load of ``.../mlp/expert_load``. A module called several times (a shared MTP module) sums its
calls' loads.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

BIAS_PATH_SUFFIX = ("gate", "e_score_correction_bias")
LOAD_NAME = "expert_load"


def _load_key(path: tuple[str, ...]) -> str:
    return "/".join(path)


def collect_expert_loads(intermediates: Any) -> dict[str, jax.Array]:
    """{".../mlp/expert_load": float32 token counts [..., experts]} summed over calls."""
    loads = {}
    for path, calls in traverse_util.flatten_dict(intermediates).items():
        if path[-1] == LOAD_NAME:
            loads[_load_key(path)] = sum(jnp.asarray(call, jnp.float32) for call in calls)
    return loads


def bias_load_key(bias_path: tuple[str, ...]) -> str:
    """The expert_load key that pairs with a routing-bias path."""
    if bias_path[-2:] != BIAS_PATH_SUFFIX:
        raise ValueError(f"{'/'.join(bias_path)} is not a router's e_score_correction_bias")
    return _load_key(bias_path[:-2] + (LOAD_NAME,))


def update_routing_biases(routing: Any, loads: dict[str, jax.Array], rate: float) -> Any:
    """b_i += rate * sign(mean_load - load_i), per layer (the last axis is the expert axis)."""
    flat = traverse_util.flatten_dict(routing)
    updated = {}
    for path, bias in flat.items():
        load = loads[bias_load_key(path)]
        mean = jnp.mean(load, axis=-1, keepdims=True)
        updated[path] = bias + jnp.asarray(rate, bias.dtype) * jnp.sign(mean - load).astype(bias.dtype)
    return traverse_util.unflatten_dict(updated)


def load_imbalance(loads: dict[str, jax.Array]) -> jax.Array:
    """Mean over MoE layers of max_load / mean_load (1.0 is perfect balance)."""
    ratios = []
    for load in loads.values():
        mean = jnp.maximum(jnp.mean(load, axis=-1), 1e-9)
        ratios.append(jnp.reshape(jnp.max(load, axis=-1) / mean, (-1,)))
    if not ratios:
        return jnp.ones((), jnp.float32)
    return jnp.mean(jnp.concatenate(ratios))
