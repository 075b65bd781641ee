"""Everything a run carries from step to step, created directly in its named shardings.

``TrainState`` is the whole resumable state apart from the data iterator: parameters (float32
master weights), optimizer state, MoE routing biases (their own collection; the optimizer
never sees them), the RNG key and two counters. Parameters shard by their logical axis
names; optimizer moments shard like the parameter they belong to; everything else is small
and replicated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from glm5_jax.model.transformer import GLM5Model
from glm5_jax.sharding import logical_shardings

INIT_SEQ_LEN = 8  # parameter shapes do not depend on it


@struct.dataclass
class TrainState:
    step: jax.Array  # int32: updates applied so far (skipped steps included)
    params: Any
    opt_state: Any
    routing: Any  # {"...": {"e_score_correction_bias": [layers, experts]}}
    rng: jax.Array  # uint32[2]; advanced every step, fed to the model's "dropout" stream
    skipped_steps: jax.Array  # int32: steps whose loss or gradients were not finite

    def as_dict(self) -> dict[str, Any]:
        """A plain dict for checkpointing (orbax stores dicts of arrays most portably)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        return cls(**values)


def init_train_state(model: GLM5Model, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    """The step-0 state (pure: jit it with out_shardings)."""
    init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
    variables = nn.meta.unbox(model.init(init_key, jnp.zeros((1, INIT_SEQ_LEN), jnp.int32)))
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), routing=variables.get("routing", {}),  # none in a dense model
                      rng=train_key, skipped_steps=jnp.zeros((), jnp.int32))


def _dict_keys(keypath) -> tuple[str, ...]:
    return tuple(k.key for k in keypath if isinstance(k, jax.tree_util.DictKey))


def state_shardings(mesh: Mesh, abstract_state: TrainState, param_specs: Any) -> TrainState:
    """NamedShardings for every leaf of the state.

    An optimizer-state leaf whose dict-key path ends with a parameter's path and has that
    parameter's shape (Adam's mu/nu, Muon's momentum) shards like the parameter.
    """
    param_shardings = logical_shardings(mesh, param_specs, abstract_state.params)
    by_path = {}
    for keypath, sharding in jax.tree_util.tree_flatten_with_path(
            param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))[0]:
        by_path[_dict_keys(keypath)] = sharding
    shapes = {_dict_keys(kp): leaf.shape
              for kp, leaf in jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]}
    replicated = NamedSharding(mesh, PartitionSpec())

    def like_param(keypath, leaf):
        keys = _dict_keys(keypath)
        for start in range(len(keys)):
            suffix = keys[start:]
            if suffix in by_path and shapes[suffix] == leaf.shape:
                return by_path[suffix]
        return replicated

    opt_shardings = jax.tree_util.tree_map_with_path(like_param, abstract_state.opt_state)
    return TrainState(
        step=replicated, params=param_shardings, opt_state=opt_shardings,
        routing=jax.tree.map(lambda _: replicated, abstract_state.routing),
        rng=replicated, skipped_steps=replicated)
