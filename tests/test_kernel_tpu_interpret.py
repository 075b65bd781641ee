"""The TPU formulations under Pallas' TPU interpret mode: DMAs, semaphores, races.

The generic interpreter (the other kernel tests) runs a DMA the moment it starts, so a
kernel that reads a buffer before waiting on its copy, or waits on the wrong slot,
would still pass there. TPU interpret mode with ``dma_execution_mode="on_wait"`` delays
every copy to its wait, simulates TPU output write-back (a block is flushed when its
index changes, which the grouped matmul's revisits rely on) and reports data races.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from seeds import kernel_test_rng

from pallas_kernels.grouped_matmul import grouped_matmul, grouped_matmul_reference
from pallas_kernels.indexer_scores import indexer_scores, indexer_scores_reference
from pallas_kernels.poison import poisoned_outputs
from pallas_kernels.sparse_attention import (
    sparse_topk_attention,
    sparse_topk_attention_reference,
)
from pallas_kernels.testing import assert_close, random_group_sizes

TPU_INTERPRET = pltpu.InterpretParams(dma_execution_mode="on_wait", detect_races=True)


def _interpret_module():
    """jax's TPU interpret-mode module, whose race detector these tests read (private API)."""
    where = "jax._src.pallas.mosaic.interpret.interpret_pallas_call"
    try:
        from jax._src.pallas.mosaic.interpret import interpret_pallas_call as module
    except ImportError as error:
        raise RuntimeError(f"{where} is gone in jax {jax.__version__}: update the race check in "
                           "tests/test_kernel_tpu_interpret.py") from error
    if not hasattr(module, "RaceDetectionState"):
        raise RuntimeError(f"{where}.RaceDetectionState is gone in jax {jax.__version__}: update "
                           "the race check in tests/test_kernel_tpu_interpret.py")
    return module


@contextlib.contextmanager
def recorded_races():
    """Yields the list of race-detector states of every kernel interpreted inside the block.

    jax keeps one state per interpreted kernel call in a module global and replaces it at
    the next call, so reading the global afterwards would judge only the last kernel (of a
    forward + backward program, the last backward kernel).
    """
    module = _interpret_module()
    original = module.RaceDetectionState
    states = []

    def record(*args, **kwargs):
        state = original(*args, **kwargs)
        states.append(state)
        return state

    module.RaceDetectionState = record
    try:
        yield states
    finally:
        module.RaceDetectionState = original


def raced_kernels(states) -> list[int]:
    """Positions (in call order) of the recorded kernels in which the detector found a race.

    Raises if no kernel ran (the check would be vacuous) or if jax's flag moved.
    """
    if not states:
        raise AssertionError("no kernel ran under TPU interpret mode: the race check is vacuous")
    for state in states:
        if not hasattr(state, "races_found"):
            raise RuntimeError(f"RaceDetectionState.races_found is gone in jax {jax.__version__}: "
                               "update the race check in tests/test_kernel_tpu_interpret.py")
    return [i for i, state in enumerate(states) if state.races_found]


@pytest.fixture
def rng():
    """A fresh seed per test, printed; KERNEL_TEST_SEED=<seed> replays a failure."""
    return kernel_test_rng()


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
    with poisoned_outputs(), recorded_races() as races:
        out, grads = value_and_grads(kernel, (lhs, rhs), cotangent)
    ref_out, ref_grads = value_and_grads(reference, (lhs, rhs), cotangent)
    assert len(races) == 3  # forward, d_lhs and d_rhs kernels
    assert raced_kernels(races) == []
    for got, want in zip((out, *grads), (ref_out, *ref_grads)):
        assert_close(got, want, f"sizes={sizes}")


def test_sparse_attention(rng):
    """Three queries in blocks of two (one padded): one selects scattered rows (one DMA
    each), one a window of consecutive rows (one DMA per run of 8), one a window that runs
    past the last key (rows past the end are invalid; that run falls back to row DMAs)."""
    q = jnp.asarray(rng.standard_normal((1, 3, 2, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 40, 1, 16)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((1, 40, 1, 8)), jnp.float32)
    idx = jnp.asarray(np.stack([rng.integers(-1, 40, 16), rng.permutation(np.arange(5, 21)),
                                np.arange(28, 44)])[None], jnp.int32)
    cotangent = jnp.asarray(rng.standard_normal((1, 3, 2, 8)), jnp.float32)
    kernel = lambda q, k, v: sparse_topk_attention(
        q, k, v, idx, scale=0.3, block_k=8, block_q=2, backend="cpu", interpret=TPU_INTERPRET)[0]
    reference = lambda q, k, v: sparse_topk_attention_reference(q, k, v, idx, scale=0.3)[0]
    with poisoned_outputs(), recorded_races() as races:
        out, grads = value_and_grads(kernel, (q, k, v), cotangent)
    ref_out, ref_grads = value_and_grads(reference, (q, k, v), cotangent)
    assert len(races) >= 2  # forward and backward kernels
    assert raced_kernels(races) == []
    for got, want in zip((out, *grads), (ref_out, *ref_grads)):
        assert_close(got, want, f"idx={idx}")


def test_indexer_scores(rng):
    q = jnp.asarray(rng.standard_normal((1, 20, 2, 8)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 30, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((1, 20, 2)), jnp.float32)
    with poisoned_outputs(), recorded_races() as races:
        scores = jax.jit(lambda q, k, w: indexer_scores(
            q, k, w, q_offset=3, block_q=8, block_k=8, backend="cpu",
            interpret=TPU_INTERPRET))(q, k, w)
    assert raced_kernels(races) == []
    assert_close(scores, indexer_scores_reference(q, k, w, q_offset=3), "scores")


def test_race_check_fails_loudly(monkeypatch):
    """A moved private API or a check that saw no kernel is an error, never 'no races'."""
    with pytest.raises(AssertionError, match="vacuous"):
        raced_kernels([])
    with pytest.raises(RuntimeError, match="races_found is gone"):
        raced_kernels([object()])
    monkeypatch.delattr(_interpret_module(), "RaceDetectionState")
    with pytest.raises(RuntimeError, match="RaceDetectionState is gone"), recorded_races():
        pass
