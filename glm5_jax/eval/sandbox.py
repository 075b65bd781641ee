"""One-call entry point: run a program (and its tests) in a fresh sandbox.

For many samples use ``SandboxPool``, which keeps warm helpers; this function starts
and stops one helper per call (~50 ms extra), which is fine for one-off checks.
"""

from __future__ import annotations

from collections.abc import Sequence

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.policy import IsolationPolicy
from glm5_jax.eval.pool import SandboxPool
from glm5_jax.eval.results import ExecutionResult


def run_program(program: str, tests: Sequence[str] = (), timeout_s: float | None = None,
                limits: SandboxLimits | None = None,
                policy: IsolationPolicy | None = None) -> ExecutionResult:
    """Run ``program`` then each test snippet in its namespace; see ``ExecutionResult``.

    ``timeout_s`` overrides ``limits.timeout_s`` (the wall clock for everything).
    """
    limits = limits or SandboxLimits()
    if timeout_s is not None:
        limits = SandboxLimits(**{**limits.to_dict(), "timeout_s": timeout_s})
    with SandboxPool(workers=1, limits=limits, policy=policy) as pool:
        return pool.run(program, tests)
