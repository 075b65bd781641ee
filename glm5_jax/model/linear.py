"""Bias-free projections whose kernels carry logical axis names.

Kernels are stored [in..., out...] (the transpose of torch's Linear) so that head and expert
axes are explicit dimensions the sharding rules can name. The kernel is created in ``setup`` so
a parent can read it directly (the absorbed MLA form multiplies by slices of ``kv_b_proj``).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn


def dtype_of(name: str) -> jnp.dtype:
    return jnp.dtype(name)


class Projection(nn.Module):
    """y = x @ kernel, contracting the last ``len(in_features)`` dims of x."""

    in_features: Sequence[int]
    features: Sequence[int]
    in_axes: Sequence[str]
    out_axes: Sequence[str]
    init_std: float = 0.02
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self) -> None:
        self.kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(
                nn.initializers.normal(self.init_std), tuple(self.in_axes) + tuple(self.out_axes)
            ),
            tuple(self.in_features) + tuple(self.features),
            self.param_dtype,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = len(self.in_features)
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        return jax.lax.dot_general(
            x.astype(self.dtype), jnp.asarray(self.kernel, self.dtype), (contract, ((), ()))
        )
