"""Grouped matmul kernel vs. its reference, forward and both gradients, interpret mode.

Inputs are fresh per run (hypothesis draws shapes, group-size distributions, offsets,
block sizes, dtype and a numpy seed; a failure prints the example and the
KERNEL_TEST_SEED that replays the run, tests/seeds.py). Every kernel call
runs inside ``poisoned_outputs()`` so an unwritten output block is NaN and fails.
The reference itself is checked against a float64 numpy loop over groups.
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

from pallas_kernels.grouped_matmul import grouped_matmul, grouped_matmul_reference
from pallas_kernels.poison import poisoned_outputs
from pallas_kernels.testing import (
    GROUP_SIZE_DISTRIBUTIONS,
    assert_close,
    random_group_sizes,
    scaled_error,
    tolerance,
)


def numpy_grouped_matmul(lhs, rhs, group_sizes, group_offset):
    """float64 oracle: an explicit loop over groups."""
    lhs, rhs = np.asarray(lhs, np.float64), np.asarray(rhs, np.float64)
    out = np.zeros((lhs.shape[0], rhs.shape[2]))
    start = 0
    for group, size in enumerate(np.asarray(group_sizes)):
        local = group - group_offset
        if 0 <= local < rhs.shape[0]:
            out[start:start + size] = lhs[start:start + size] @ rhs[local]
        start += size
    return out


def forward_and_vjp(fn, lhs, rhs, cotangent):
    """(fn(lhs, rhs), its vjp at ``cotangent``), compiled as one program (interpreted
    kernels dispatch far faster inside one jit than op by op)."""

    @jax.jit
    def run(a, b, ct):
        out, vjp = jax.vjp(fn, a, b)
        return out, vjp(ct)

    return run(lhs, rhs, cotangent)


def make_case(seed, m, k, n, num_groups, num_local, group_offset, distribution, slack, dtype):
    rng = np.random.default_rng(seed)
    sizes = random_group_sizes(rng, num_groups, max(m - slack, 0), distribution)
    lhs = jnp.asarray(rng.standard_normal((m, k)), dtype)
    rhs = jnp.asarray(rng.standard_normal((num_local, k, n)), dtype)
    cotangent = jnp.asarray(rng.standard_normal((m, n)), jnp.float32)
    return lhs, rhs, jnp.asarray(sizes), cotangent


@st.composite
def cases(draw):
    num_groups = draw(st.integers(1, 9))
    num_local = draw(st.integers(1, num_groups))
    return {
        "seed": draw(st.integers(0, 2**31 - 1)),
        "m": draw(st.integers(1, 96)),
        "k": draw(st.integers(1, 40)),
        "n": draw(st.integers(1, 40)),
        "num_groups": num_groups,
        "num_local": num_local,
        "group_offset": draw(st.integers(0, num_groups - num_local)),
        "distribution": draw(st.sampled_from(GROUP_SIZE_DISTRIBUTIONS)),
        "slack": draw(st.sampled_from([0, 0, 1, 7])),
        "dtype": draw(st.sampled_from([jnp.float32, jnp.bfloat16])),
    }


def check_kernel(case, backend, blocks):
    lhs, rhs, sizes, cotangent = make_case(**case)
    offset = case["group_offset"]
    kernel = lambda a, b: grouped_matmul(a, b, sizes, group_offset=offset, backend=backend,
                                         interpret=True, **blocks)
    reference = lambda a, b: grouped_matmul_reference(a, b, sizes, group_offset=offset)
    with poisoned_outputs():
        out, (dlhs, drhs) = forward_and_vjp(kernel, lhs, rhs, cotangent)
    ref_out, (ref_dlhs, ref_drhs) = forward_and_vjp(reference, lhs, rhs, cotangent)
    assert out.dtype == jnp.float32 and dlhs.dtype == lhs.dtype and drhs.dtype == rhs.dtype
    assert_close(out, ref_out, f"out {case} {blocks}")
    assert_close(dlhs, ref_dlhs, f"d_lhs {case} {blocks}")
    assert_close(drhs, ref_drhs, f"d_rhs {case} {blocks}")


@slow(15)
@given(case=cases())
def test_reference_matches_numpy_loop(case):
    lhs, rhs, sizes, _ = make_case(**{**case, "dtype": jnp.float32})
    expected = numpy_grouped_matmul(lhs, rhs, sizes, case["group_offset"])
    actual = grouped_matmul_reference(lhs, rhs, sizes, group_offset=case["group_offset"])
    assert scaled_error(actual, expected) <= tolerance(jnp.float32), case


@slow(5)
@given(case=cases(), block_m=st.sampled_from([8, 16, 32]), block_k=st.sampled_from([8, 16, 128]),
       block_n=st.sampled_from([8, 16, 128]))
def test_tpu_formulation_matches_reference(case, block_m, block_k, block_n):
    check_kernel(case, "cpu", {"block_m": block_m, "block_k": block_k, "block_n": block_n})


@slow(5)
@given(case=cases(), block_m=st.sampled_from([16, 32]), block_k=st.sampled_from([16, 32]),
       block_n=st.sampled_from([16, 64]))
def test_gpu_formulation_matches_reference(case, block_m, block_k, block_n):
    check_kernel(case, "gpu", {"block_m": block_m, "block_k": block_k, "block_n": block_n})


# Same shapes for every case (m=64 rows, 6 groups, rhs holds 3 of them), so one
# compiled program per formulation serves them all: sizes and offset are traced.
EDGE_CASES = {
    "all_empty": ([0, 0, 0, 0, 0, 0], 0),
    "one_local_group_takes_all_rows": ([0, 0, 64, 0, 0, 0], 1),
    "all_rows_in_a_remote_group": ([64, 0, 0, 0, 0, 0], 3),
    "rows_past_the_sum": ([5, 0, 9, 0, 3, 0], 0),
    "sizes_not_multiple_of_block": ([13, 17, 1, 30, 2, 1], 1),
    "offset_last_groups": ([10, 0, 8, 3, 20, 7], 3),
    "local_groups_empty_rows_before": ([32, 32, 0, 0, 0, 0], 2),
    "single_row": ([0, 1, 0, 0, 0, 0], 0),
}


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_edge_cases(backend):
    seed = kernel_test_seed()
    rng = np.random.default_rng(seed)
    lhs = jnp.asarray(rng.standard_normal((64, 24)), jnp.float32)
    rhs = jnp.asarray(rng.standard_normal((3, 24, 20)), jnp.float32)
    cotangent = jnp.asarray(rng.standard_normal((64, 20)), jnp.float32)

    def run(fn):
        @jax.jit
        def go(sizes, offset):
            out, vjp = jax.vjp(lambda a, b: fn(a, b, sizes, offset), lhs, rhs)
            return out, vjp(cotangent)
        return go

    kernel = run(lambda a, b, sizes, offset: grouped_matmul(
        a, b, sizes, group_offset=offset, block_m=16, block_k=16, block_n=16, backend=backend))
    reference = run(lambda a, b, sizes, offset: grouped_matmul_reference(
        a, b, sizes, group_offset=offset))
    for name, (sizes, offset) in EDGE_CASES.items():
        sizes = jnp.asarray(sizes, jnp.int32)
        with poisoned_outputs():
            out, (dlhs, drhs) = kernel(sizes, jnp.int32(offset))
        _, (ref_dlhs, ref_drhs) = reference(sizes, jnp.int32(offset))
        what = f"{name} seed={seed}"
        assert_close(out, numpy_grouped_matmul(lhs, rhs, sizes, offset), what)
        assert_close(dlhs, ref_dlhs, what)
        assert_close(drhs, ref_drhs, what)


def test_bf16_output_and_jit():
    """preferred_element_type=bf16 and a jitted call with a traced group offset."""
    seed = kernel_test_seed()
    rng = np.random.default_rng(seed)
    sizes = jnp.asarray(random_group_sizes(rng, 8, 90, "skewed"))
    lhs = jnp.asarray(rng.standard_normal((96, 32)), jnp.bfloat16)
    rhs = jnp.asarray(rng.standard_normal((4, 32, 48)), jnp.bfloat16)

    @jax.jit
    def run(offset):
        return grouped_matmul(lhs, rhs, sizes, group_offset=offset, block_m=16, block_k=16,
                              block_n=16, preferred_element_type=jnp.bfloat16)

    for offset in (0, 4):
        with poisoned_outputs():
            out = run(jnp.int32(offset))
        assert out.dtype == jnp.bfloat16
        expected = grouped_matmul_reference(lhs, rhs, sizes, group_offset=offset)
        assert_close(out, expected, f"offset={offset} seed={seed}")
