"""Lightning-indexer scoring kernel vs. the reference, interpret mode, forward and gradients.

Fresh inputs per run (hypothesis), poisoned outputs, tolerances from the dtype. Masked
(-inf) entries must match exactly; the reference is checked against a numpy loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_hypothesis import slow
from seeds import kernel_test_seed

from pallas_kernels.indexer_scores import (
    indexer_scores,
    indexer_scores_reference,
    select_topk,
)
from pallas_kernels.poison import poisoned_outputs
from pallas_kernels.testing import assert_close, scaled_error, tolerance


def numpy_indexer_scores(q, k, w, causal, q_offset):
    q, k, w = (np.asarray(x, np.float64) for x in (q, k, w))
    batch, q_len, heads, _ = q.shape
    out = np.full((batch, q_len, k.shape[1]), -np.inf)
    for b in range(batch):
        for t in range(q_len):
            for s in range(k.shape[1]):
                if causal and s > t + q_offset:
                    continue
                out[b, t, s] = sum(w[b, t, h] * max(q[b, t, h] @ k[b, s], 0.0)
                                   for h in range(heads))
    return out


def make_case(seed, batch, q_len, kv_len, heads, d, causal, q_offset, dtype):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((batch, q_len, heads, d)), dtype)
    k = jnp.asarray(rng.standard_normal((batch, kv_len, d)), dtype)
    w = jnp.asarray(rng.standard_normal((batch, q_len, heads)), dtype)
    cotangent = jnp.asarray(rng.standard_normal((batch, q_len, kv_len)), jnp.float32)
    return (q, k, w), cotangent


@st.composite
def cases(draw):
    kv_len = draw(st.integers(1, 70))
    causal = draw(st.booleans())
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "batch": draw(st.integers(1, 2)),
        "q_len": draw(st.integers(1, 40)),
        "kv_len": kv_len,
        "heads": draw(st.integers(1, 5)),
        "d": draw(st.integers(1, 40)),
        "causal": causal,
        "q_offset": draw(st.integers(0, kv_len)) if causal else 0,
        "dtype": draw(st.sampled_from([jnp.float32, jnp.bfloat16])),
    }


def check_kernel(case, backend, block_q, block_k):
    args, cotangent = make_case(**case)
    causal, offset = case["causal"], case["q_offset"]

    def run(fn):
        @jax.jit
        def go(q, k, w, offset, ct):
            scores, vjp = jax.vjp(lambda q, k, w: fn(q, k, w, offset), q, k, w)
            # Masked scores are constant -inf: their cotangent is irrelevant.
            return scores, vjp(jnp.where(jnp.isinf(scores), 0.0, ct))
        return go(*args, jnp.int32(offset), cotangent)

    kernel = lambda q, k, w, off: indexer_scores(
        q, k, w, causal=causal, q_offset=off, block_q=block_q, block_k=block_k,
        backend=backend, bwd_query_chunk=16)
    reference = lambda q, k, w, off: indexer_scores_reference(q, k, w, causal=causal, q_offset=off)
    with poisoned_outputs():
        scores, grads = run(kernel)
    ref_scores, ref_grads = run(reference)
    what = f"{case} blocks=({block_q}, {block_k})"
    assert scores.dtype == jnp.float32
    assert_close(scores, ref_scores, "scores " + what)
    for name, grad, ref in zip(("dq", "dk", "dw"), grads, ref_grads):
        assert_close(grad, ref, f"{name} {what}")


@slow(15)
@given(case=cases())
def test_reference_matches_numpy_loop(case):
    case = {**case, "dtype": jnp.float32, "q_len": min(case["q_len"], 12)}
    (q, k, w), _ = make_case(**case)
    scores = jax.jit(indexer_scores_reference, static_argnames="causal")(
        q, k, w, causal=case["causal"], q_offset=case["q_offset"])
    expected = numpy_indexer_scores(q, k, w, case["causal"], case["q_offset"])
    assert scaled_error(scores, expected) <= tolerance(jnp.float32), case


@slow(5)
@given(case=cases(), block_q=st.sampled_from([8, 16]), block_k=st.sampled_from([8, 16, 32]))
def test_tpu_formulation_matches_reference(case, block_q, block_k):
    check_kernel(case, "cpu", block_q, block_k)


@slow(3)
@given(case=cases(), block_q=st.sampled_from([16, 32]), block_k=st.sampled_from([16, 32]))
def test_gpu_formulation_matches_reference(case, block_q, block_k):
    check_kernel(case, "gpu", block_q, block_k)


def test_select_topk_marks_masked_slots_invalid():
    seed = kernel_test_seed()
    (q, k, w), _ = make_case(seed, 1, 6, 6, 2, 8, True, 0, jnp.float32)
    scores = indexer_scores_reference(q, k, w)
    idx = np.asarray(select_topk(scores, topk=4))
    assert idx.shape == (1, 6, 4)
    for t in range(6):
        valid = idx[0, t][idx[0, t] >= 0]
        assert len(valid) == min(t + 1, 4), (seed, t, idx[0, t])
        assert np.all(valid <= t), (seed, t, idx[0, t])
        expected = np.argsort(-np.asarray(scores[0, t, : t + 1]), kind="stable")[: len(valid)]
        assert set(valid) == set(expected), (seed, t)
    assert np.all(np.asarray(select_topk(scores, topk=9))[..., 6:] == -1)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_traced_offset_chunked_prefill(backend):
    """Scoring query chunks with a traced q_offset equals scoring all queries at once."""
    seed = kernel_test_seed()
    (q, k, w), _ = make_case(seed, 1, 32, 32, 3, 16, True, 0, jnp.float32)
    whole = indexer_scores_reference(q, k, w)

    @jax.jit
    def chunk_scores(q_chunk, w_chunk, offset):
        return indexer_scores(q_chunk, k, w_chunk, q_offset=offset, block_q=16, block_k=16,
                              backend=backend)

    with poisoned_outputs():
        parts = [chunk_scores(q[:, i:i + 16], w[:, i:i + 16], jnp.int32(i)) for i in (0, 16)]
    assert_close(jnp.concatenate(parts, axis=1), whole, f"seed={seed}")
    chunked_reference = jax.jit(lambda q, k, w: indexer_scores_reference(q, k, w, query_chunk=12))
    assert_close(chunked_reference(q, k, w), whole, f"seed={seed}")
