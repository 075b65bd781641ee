"""Hypothesis settings shared by the kernel property tests (tests/test_kernel_*.py)."""

from __future__ import annotations

from hypothesis import HealthCheck, Phase, settings


def slow(max_examples: int) -> settings:
    """Few examples, no deadline: each new shape compiles an interpreted kernel. Fresh inputs
    every run (no example database). No shrinking: it recompiles a kernel per attempt (over 5
    minutes on CI); the failing case is printed whole, with the blob to reproduce it, and a
    case worth keeping is pinned with ``@example`` in the test."""
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True,
                    phases=[Phase.explicit, Phase.generate])
