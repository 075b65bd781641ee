"""The TPU formulations under Pallas' TPU interpret mode: DMAs, semaphores, races.

The generic interpreter (the other kernel tests) runs a DMA the moment it starts, so a
kernel that reads a buffer before waiting on its copy, or waits on the wrong slot,
would still pass there. TPU interpret mode with ``dma_execution_mode="on_wait"`` delays
every copy to its wait, simulates TPU output write-back (a block is flushed when its
index changes, which the grouped matmul's revisits rely on) and reports data races.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.grouped_matmul import grouped_matmul, grouped_matmul_reference
from pallas_kernels.indexer_scores import indexer_scores, indexer_scores_reference
from pallas_kernels.poison import poisoned_outputs
from pallas_kernels.sparse_attention import (
    sparse_topk_attention,
    sparse_topk_attention_reference,
)
from pallas_kernels.testing import assert_close, random_group_sizes

TPU_INTERPRET = pltpu.InterpretParams(dma_execution_mode="on_wait", detect_races=True)


def races_found() -> bool:
    """The race detector's verdict (a private flag; False if this jax does not expose it)."""
    try:
        from jax._src.pallas.mosaic.interpret import interpret_pallas_call
    except ImportError:
        return False
    races = getattr(interpret_pallas_call, "races", None)
    return bool(getattr(races, "races_found", False))


@pytest.fixture
def rng():
    seed = np.random.SeedSequence().entropy % 2**31
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def value_and_grads(fn, args, cotangent):
    @jax.jit
    def run(*args):
        out, vjp = jax.vjp(fn, *args)
        return out, vjp(cotangent)
    return run(*args)


def test_grouped_matmul(rng):
    sizes = jnp.asarray(random_group_sizes(rng, 6, 44, "skewed"))
    lhs = jnp.asarray(rng.standard_normal((48, 24)), jnp.float32)
    rhs = jnp.asarray(rng.standard_normal((3, 24, 20)), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((48, 20)), jnp.float32)
    kernel = lambda a, b: grouped_matmul(a, b, sizes, group_offset=2, block_m=16, block_k=16,
                                         block_n=16, backend="cpu", interpret=TPU_INTERPRET)
    reference = lambda a, b: grouped_matmul_reference(a, b, sizes, group_offset=2)
    with poisoned_outputs():
        out, grads = value_and_grads(kernel, (lhs, rhs), cotangent)
    ref_out, ref_grads = value_and_grads(reference, (lhs, rhs), cotangent)
    assert not races_found()
    for got, want in zip((out, *grads), (ref_out, *ref_grads)):
        assert_close(got, want, jnp.float32, f"sizes={sizes}")


def test_sparse_attention(rng):
    q = jnp.asarray(rng.standard_normal((1, 2, 2, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 40, 1, 16)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((1, 40, 1, 8)), jnp.float32)
    idx = jnp.asarray(rng.integers(-1, 40, (1, 2, 16)), jnp.int32)
    cotangent = jnp.asarray(rng.standard_normal((1, 2, 2, 8)), jnp.float32)
    kernel = lambda q, k, v: sparse_topk_attention(
        q, k, v, idx, scale=0.3, block_k=8, backend="cpu", interpret=TPU_INTERPRET)[0]
    reference = lambda q, k, v: sparse_topk_attention_reference(q, k, v, idx, scale=0.3)[0]
    with poisoned_outputs():
        out, grads = value_and_grads(kernel, (q, k, v), cotangent)
    ref_out, ref_grads = value_and_grads(reference, (q, k, v), cotangent)
    assert not races_found()
    for got, want in zip((out, *grads), (ref_out, *ref_grads)):
        assert_close(got, want, jnp.float32, f"idx={idx}")


def test_indexer_scores(rng):
    q = jnp.asarray(rng.standard_normal((1, 20, 2, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 30, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((1, 20, 2)), jnp.float32)
    with poisoned_outputs():
        scores = jax.jit(lambda q, k, w: indexer_scores(
            q, k, w, q_offset=3, block_q=8, block_k=8, backend="cpu",
            interpret=TPU_INTERPRET))(q, k, w)
    assert not races_found()
    assert_close(scores, indexer_scores_reference(q, k, w, q_offset=3), jnp.float32, "scores")
