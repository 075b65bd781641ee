"""Muon's update with every batch axis kept as its own axis, so sharded stacks stay sharded.

optax's ``scale_by_muon`` flattens a weight's batch axes into one before Newton-Schulz. Our
routed experts are [layers, expert, d, f] with ``expert`` sharded over the mesh; merging
layers (major) with a sharded expert axis (minor) gives a dim no tiled sharding describes,
so XLA replicates it: every chip orthogonalised every expert of every layer (150 GiB of
temporaries per chip for GLM-5). Here the maths is optax's (Nesterov momentum with bias
correction, Frobenius preconditioning, the quintic Newton-Schulz iteration, the same
``MuonState``), but the matrices are batched with einsums over the original batch axes.
``tests/test_train_muon.py`` checks it against optax's own orthogonalisation.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from optax.contrib import MuonDimensionNumbers, MuonState

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # optax's (and Keller Jordan's) quintic


def _axes(spec) -> tuple[int, ...]:
    return spec if isinstance(spec, tuple) else (spec,)


def orthogonalize(x: jax.Array, dims: MuonDimensionNumbers, ns_coeffs: jax.Array,
                  ns_steps: int, eps: float) -> jax.Array:
    """Newton-Schulz on each [reduction, output] matrix of ``x``; other axes are batch axes,
    kept separate (never merged), in their original order."""
    reduction, output = _axes(dims.reduction_axis), _axes(dims.output_axis)
    reduction = tuple(a % x.ndim for a in reduction)
    output = tuple(a % x.ndim for a in output)
    batch = tuple(a for a in range(x.ndim) if a not in reduction + output)
    order = batch + reduction + output
    moved = jnp.transpose(x, order)
    batch_shape = moved.shape[:len(batch)]
    rows = 1
    for a in reduction:
        rows *= x.shape[a]
    m = moved.reshape(batch_shape + (rows, -1))
    wide = m.shape[-2] <= m.shape[-1]
    if not wide:
        m = jnp.swapaxes(m, -1, -2)
    m = m / (jnp.sqrt(jnp.sum(jnp.square(m), axis=(-2, -1), keepdims=True)) + eps)
    a_c, b_c, c_c = (ns_coeffs[i].astype(m.dtype) for i in range(3))
    for _ in range(ns_steps):
        gram = jnp.einsum("...ij,...kj->...ik", m, m)
        poly = b_c * gram + c_c * jnp.einsum("...ij,...jk->...ik", gram, gram)
        m = a_c * m + jnp.einsum("...ij,...jk->...ik", poly, m)
    if not wide:
        m = jnp.swapaxes(m, -1, -2)
    inverse = tuple(sorted(range(x.ndim), key=lambda i: order[i]))
    return jnp.transpose(m.reshape(moved.shape), inverse)


def scale_by_muon(beta: float = 0.95, ns_steps: int = 5, eps: float = 1e-8, *,
                  weight_dimension_numbers: Callable[[Any], Any]) -> optax.GradientTransformation:
    """optax.contrib.scale_by_muon (nesterov, frobenius) with batch axes kept apart."""

    def is_dims(x):
        return isinstance(x, MuonDimensionNumbers) or x is None or isinstance(x, optax.MaskedNode)

    def init_fn(params):
        return MuonState(count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params),
                         ns_coeffs=jnp.asarray(NS_COEFFS))

    def update_fn(updates, state, params=None):
        del params
        dims = weight_dimension_numbers(updates)
        mu = optax.tree.update_moment(updates, state.mu, beta, 1)
        count = optax.safe_increment(state.count)
        mu_hat = jax.tree.map(
            lambda m, g: beta * m + (1 - beta) * g,
            optax.tree.bias_correction(mu, beta, optax.safe_increment(count)),
            optax.tree.bias_correction(updates, beta, count))

        def one(x, d):
            if isinstance(x, optax.MaskedNode) or x is None:
                return x
            if d is None:
                d = MuonDimensionNumbers(reduction_axis=0, output_axis=1)
            return orthogonalize(x, d, state.ns_coeffs, ns_steps, eps)

        out = jax.tree.map(one, mu_hat, dims, is_leaf=is_dims)
        return out, MuonState(count=count, mu=mu, ns_coeffs=state.ns_coeffs)

    return optax.GradientTransformation(init_fn, update_fn)
