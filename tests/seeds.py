"""One replayable seed for the randomized kernel tests (tests/test_kernel_*.py).

Every randomized test draws a fresh seed per run (inputs are never the same twice on CI)
and prints it as ``KERNEL_TEST_SEED=<seed>``; pytest shows the printed line with a
failure. Setting that variable replays the run:

    KERNEL_TEST_SEED=<seed> python -m pytest -q tests/test_kernel_grouped_matmul.py -k edge

The hypothesis property tests (``kernel_hypothesis.slow``) take the same seed through
``hypothesis.seed`` and attach ``KERNEL_TEST_SEED=<seed>`` to the falsifying example.
"""

from __future__ import annotations

import os

import numpy as np

ENV = "KERNEL_TEST_SEED"


def fresh_seed() -> int:
    """``$KERNEL_TEST_SEED`` if set, else a fresh seed in [0, 2**31); not printed."""
    value = os.environ.get(ENV, "").strip()
    if value:
        return int(value)
    return int(np.random.SeedSequence().entropy % 2**31)


def kernel_test_seed() -> int:
    """The seed for one randomized test, printed so that a failure can be replayed."""
    seed = fresh_seed()
    print(f"{ENV}={seed}")
    return seed


def kernel_test_rng() -> np.random.Generator:
    """A numpy generator from ``kernel_test_seed()``."""
    return np.random.default_rng(kernel_test_seed())
