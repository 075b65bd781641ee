"""Creating variables and reading their logical partitioning, compiled once per config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import Mesh

from glm5_jax.model.transformer import GLM5Model


def _boxed_init(model: GLM5Model, rng: jax.Array, seq_len: int):
    return model.init(rng, jnp.zeros((1, seq_len), jnp.int32))


def init_variables(model: GLM5Model, rng: jax.Array, seq_len: int = 8,
                   mesh: Mesh | None = None) -> dict:
    """Plain (unboxed) variables: ``params`` and the ``routing`` biases. Jitted: eager init of a
    scanned model is slow. With ``mesh``, every variable is created directly in its sharding
    (logical axes through ``sharding.LOGICAL_AXIS_RULES``): no device ever holds a whole
    tensor, so the 744B preset initialises on a pod."""
    init = lambda key: nn.meta.unbox(_boxed_init(model, key, seq_len))  # noqa: E731
    if mesh is None:
        return jax.jit(init)(rng)
    from glm5_jax.sharding import logical_shardings

    shardings = logical_shardings(mesh, logical_partition_specs(model, seq_len),
                                  abstract_variables(model, seq_len))
    return jax.jit(init, out_shardings=shardings)(rng)


def abstract_variables(model: GLM5Model, seq_len: int = 8) -> dict:
    """Shapes and dtypes only: builds the full 744B preset without allocating it."""
    return nn.meta.unbox(jax.eval_shape(lambda: _boxed_init(model, jax.random.PRNGKey(0), seq_len)))


def logical_partition_specs(model: GLM5Model, seq_len: int = 8) -> dict:
    """PartitionSpecs of logical axis names, matching the tree of ``init_variables``."""
    boxed = jax.eval_shape(lambda: _boxed_init(model, jax.random.PRNGKey(0), seq_len))
    return nn.get_partition_spec(boxed)
