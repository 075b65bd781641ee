"""Sandboxed code execution and code benchmarks (HumanEval, MBPP, pass@k).

The sandbox API used by rewards and benchmarks; see SANDBOX.md for the design and the
threat model. Benchmark loaders live in ``humaneval``/``mbpp``/``prompts``, the command
line in ``cli`` (``glm5-eval``).
"""

from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.pass_at_k import mean_pass_at_k, pass_at_k
from glm5_jax.eval.policy import IsolationPolicy
from glm5_jax.eval.pool import SandboxJob, SandboxPool
from glm5_jax.eval.results import ExecutionResult, Status
from glm5_jax.eval.sandbox import run_program

__all__ = [
    "ExecutionResult", "IsolationPolicy", "SandboxJob", "SandboxLimits", "SandboxPool",
    "Status", "mean_pass_at_k", "pass_at_k", "run_program",
]
