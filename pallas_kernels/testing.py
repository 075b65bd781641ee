"""Helpers for testing kernels against their references (used by tests/test_kernel_*).

Why here and not in tests/: the model's own kernel-vs-xla tests and the benchmark script
need the same tolerances and the same ragged group-size generators, and tolerances
must come from one table keyed by dtype (never loosened per test).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# Error allowed relative to the largest reference magnitude. f32: accumulation-order
# noise of f32 sums; bf16: one bf16 rounding (2^-8) of an operand or result, with room
# for a few of them adding up.
TOLERANCE = {
    jnp.dtype(jnp.float32): 1e-5,
    jnp.dtype(jnp.bfloat16): 1e-2,
    jnp.dtype(jnp.float16): 2e-3,
}

GROUP_SIZE_DISTRIBUTIONS = ("uniform", "skewed", "mostly_empty", "single", "all_empty")


def tolerance(dtype) -> float:
    return TOLERANCE[jnp.dtype(dtype)]


def compared_dtype(actual, expected) -> jnp.dtype:
    """The dtype a comparison of ``actual`` with ``expected`` is judged at: ``actual``'s.

    The tolerance follows what is compared, never the inputs: a float32 output computed
    from bf16 inputs (products of bf16 values are exact in float32, and the sums run in
    float32) is judged at float32's tolerance, so a kernel that rounds its float32
    accumulator to bf16 fails. ``expected`` must be at least as precise as ``actual``
    (a float64 oracle or a reference in the same or a wider type); a less precise
    reference could not judge ``actual`` at its own tolerance, so it is an error.
    """
    actual_dtype, expected_dtype = (jnp.dtype(np.asarray(x).dtype) for x in (actual, expected))
    if actual_dtype not in TOLERANCE:
        raise TypeError(f"no tolerance for {actual_dtype} (known: {sorted(map(str, TOLERANCE))})")
    if jnp.finfo(expected_dtype).eps > jnp.finfo(actual_dtype).eps:
        raise TypeError(f"reference in {expected_dtype} is less precise than the {actual_dtype} "
                        "it judges")
    return actual_dtype


def scaled_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| over finite reference entries.

    Entries where the reference is +-inf must match exactly (e.g. -inf masks and lse of
    a query with no keys); NaN anywhere in ``actual`` (a poisoned, unwritten block)
    counts as an infinite error.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {actual.shape} != {expected.shape}")
    if np.isnan(actual).any():
        return float("inf")
    finite = np.isfinite(expected)
    if not np.array_equal(actual[~finite], expected[~finite]):
        return float("inf")
    if not finite.any():
        return 0.0
    scale = max(np.max(np.abs(expected[finite])), 1e-30)
    return float(np.max(np.abs(actual[finite] - expected[finite])) / scale)


def assert_close(actual, expected, what: str = "") -> None:
    """Scale-relative comparison at the tolerance of ``actual``'s dtype (``compared_dtype``)."""
    dtype = compared_dtype(actual, expected)
    error = scaled_error(actual, expected)
    tol = tolerance(dtype)
    if not error <= tol:
        raise AssertionError(f"{what}: scaled error {error:.3g} > {tol:g} ({dtype})")


def random_group_sizes(rng: np.random.Generator, num_groups: int, total: int,
                       distribution: str) -> np.ndarray:
    """int32 [num_groups] summing to ``total`` (0 for "all_empty"), shaped by ``distribution``."""
    if distribution == "all_empty" or total == 0:
        return np.zeros(num_groups, np.int32)
    if distribution == "uniform":
        probs = np.full(num_groups, 1.0 / num_groups)
    elif distribution == "skewed":  # Zipf-like: a few experts take most tokens
        probs = 1.0 / np.arange(1, num_groups + 1) ** 1.5
        rng.shuffle(probs)
    elif distribution == "mostly_empty":
        probs = np.zeros(num_groups)
        live = rng.choice(num_groups, size=max(1, num_groups // 4), replace=False)
        probs[live] = rng.random(live.size) + 0.1
    elif distribution == "single":
        probs = np.zeros(num_groups)
        probs[rng.integers(num_groups)] = 1.0
    else:
        raise ValueError(distribution)
    probs = probs / probs.sum()
    return rng.multinomial(total, probs).astype(np.int32)
