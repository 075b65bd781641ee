"""The per-block math of top-k sparse attention, shared by both kernel formulations.

Why a separate file: the TPU and GPU kernels differ only in how a block of selected
keys reaches fast memory (DMA row gathers vs. Triton pointer gathers) and in how they
loop; the flash-attention arithmetic below must be identical in both, and in one place.

Shapes, for one query token (all its heads share the selected keys):
  q [heads, d_qk], kb [block_k, d_qk], vb [block_k, d_v], valid [1, block_k],
  row statistics m, l, lse, delta as [heads, 1] columns (the layout a lane reduction
  of [heads, block_k] produces on TPU).
``kb`` and ``q`` may arrive as lists of column chunks (Triton needs power-of-two
widths, so d_qk = 576 is split as 512 + 64); the dot products are summed over chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

_NT = (((1,), (1,)), ((), ()))  # contract the last dims: a @ b.T
_TN = (((0,), (0,)), ((), ()))  # contract the first dims: a.T @ b
_NN = (((1,), (0,)), ((), ()))  # a @ b


def _f32_dot(a: jax.Array, b: jax.Array, dims) -> jax.Array:
    """A gradient matmul in float32: operands upcast (exact), IEEE/fp32 precision on GPU/TPU.

    p and ds are never rounded to the input dtype here, unlike the forward's p @ v: dk and dv
    sum, per key, terms over heads and over every slot that selected the key, and those
    terms cancel, so a bf16-rounded ds gave errors above 1% of the gradient's scale (found
    by the property test with 36 slots over 10 keys).
    """
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    return jax.lax.dot_general(a.astype(jnp.float32), b.astype(jnp.float32), dims,
                               precision=highest, preferred_element_type=jnp.float32)


def _chunks(x: jax.Array | Sequence[jax.Array]) -> Sequence[jax.Array]:
    return x if isinstance(x, (list, tuple)) else (x,)


def scores(q, kb, valid: jax.Array, scale: float) -> jax.Array:
    """scale * q @ kb.T with invalid slots at -inf -> f32 [heads, block_k]."""
    s = None
    for q_part, k_part in zip(_chunks(q), _chunks(kb)):
        part = jax.lax.dot_general(q_part, k_part, _NT, preferred_element_type=jnp.float32)
        s = part if s is None else s + part
    return jnp.where(valid, s * scale, -jnp.inf)


def online_softmax_step(
    s: jax.Array,  # f32 [heads, block_k], -inf where invalid
    vb: jax.Array,  # [block_k, d_v]
    m: jax.Array,  # f32 [heads, 1] running max (-inf before any valid key)
    l: jax.Array,  # f32 [heads, 1] running sum of exp(s - m)
    acc: jax.Array,  # f32 [heads, d_v] running sum of exp(s - m) v
) -> tuple[jax.Array, jax.Array, jax.Array]:
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    # While every key so far is invalid m_new is -inf; shift by 0 instead to avoid nan.
    shift = jnp.where(m_new == -jnp.inf, 0.0, m_new)
    alpha = jnp.exp(m - shift)
    p = jnp.exp(s - shift)
    l_new = alpha * l + jnp.sum(p, axis=1, keepdims=True)
    acc_new = alpha * acc + jnp.dot(p.astype(vb.dtype), vb, preferred_element_type=jnp.float32)
    return m_new, l_new, acc_new


def finalize(m: jax.Array, l: jax.Array, acc: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(out [heads, d_v], lse [heads, 1]); a query with no valid slot gets 0 and -inf."""
    has_keys = l > 0.0
    out = jnp.where(has_keys, acc / jnp.where(has_keys, l, 1.0), 0.0)
    lse = jnp.where(has_keys, m + jnp.log(jnp.where(has_keys, l, 1.0)), -jnp.inf)
    return out, lse


def block_grads(
    q,  # [heads, d_qk] (or chunks)
    kb,  # [block_k, d_qk] (or chunks)
    vb: jax.Array,  # [block_k, d_v]
    dout: jax.Array,  # [heads, d_v] cotangent of the output
    valid: jax.Array,  # bool [1, block_k]
    lse: jax.Array,  # f32 [heads, 1]
    delta: jax.Array,  # f32 [heads, 1] = sum(dout * out) - dlse
    scale: float,
):
    """Gradients of one block of selected keys.

    Returns (dq [heads, d_qk] f32 (chunks like q), dk [block_k, d_qk] f32 (chunks like kb),
    dv [block_k, d_v] f32): dq is summed over blocks, dk/dv are per-slot contributions
    that the caller scatter-adds into the key/value positions.
    """
    s = scores(q, kb, valid, scale)
    p = jnp.exp(s - jnp.where(lse == -jnp.inf, 0.0, lse))  # [heads, block_k]
    dp = jax.lax.dot_general(dout, vb, _NT, preferred_element_type=jnp.float32)
    ds = p * (dp - delta)
    dv = _f32_dot(p, dout, _TN)
    q_parts, k_parts = _chunks(q), _chunks(kb)
    dq = [scale * _f32_dot(ds, k, _NN) for k in k_parts]
    dk = [scale * _f32_dot(ds, qp, _TN) for qp in q_parts]
    if not isinstance(q, (list, tuple)):
        dq, dk = dq[0], dk[0]
    return dq, dk, dv
