"""Hypothesis settings shared by the kernel property tests (tests/test_kernel_*.py)."""

from __future__ import annotations

import functools

import hypothesis
from hypothesis import HealthCheck, Phase, settings
from seeds import ENV, fresh_seed


def slow(max_examples: int):
    """Few examples, no deadline: each new shape compiles an interpreted kernel. Fresh inputs
    every run (no example database). No shrinking: it recompiles a kernel per attempt (over 5
    minutes on CI); the failing case is printed whole, with the blob to reproduce it, and a
    case worth keeping is pinned with ``@example`` in the test.

    Replay: hypothesis draws every example from one seed, ``$KERNEL_TEST_SEED`` or a fresh
    one (tests/seeds.py), given through ``hypothesis.seed``; the falsifying example carries
    the note ``KERNEL_TEST_SEED=<seed>``, and running with that variable set draws the same
    examples again (same code, same hypothesis version). Apply above ``@given``.
    """
    profile = settings(max_examples=max_examples, deadline=None, database=None,
                       suppress_health_check=list(HealthCheck), print_blob=True,
                       phases=[Phase.explicit, Phase.generate])

    def decorate(test):
        seed = fresh_seed()
        test = hypothesis.seed(seed)(profile(test))
        inner = test.hypothesis.inner_test

        @functools.wraps(inner)
        def noted(*args, **kwargs):
            hypothesis.note(f"{ENV}={seed}")
            return inner(*args, **kwargs)

        test.hypothesis.inner_test = noted  # hypothesis' documented hook for wrapping the body
        return test

    return decorate
