"""MBPP: the full 974 problems (vendored, CC BY 4.0) with the standard splits.

A sample's completion is a full program. The problem's ``test_setup_code`` (needed by
tasks 367 and 927) runs after it, and each of the three asserts is its own test, so the
fraction of asserts passed is available for rewards.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import json
import os
import sys
from collections.abc import Mapping

from glm5_jax.eval.pool import SandboxJob

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mbpp.jsonl")
SPLITS = {
    "prompt": range(1, 11),  # few-shot examples
    "test": range(11, 511),
    "validation": range(511, 601),
    "train": range(601, 975),
}


@dataclasses.dataclass(frozen=True)
class MbppProblem:
    task_id: int
    text: str  # the task description
    code: str  # reference solution
    test_setup_code: str
    test_list: tuple[str, ...]  # three asserts
    challenge_test_list: tuple[str, ...]

    def names_from_program(self) -> tuple[str, ...]:
        """Builtin or stdlib-module names the reference defines at top level (task 126's
        ``sum``): the tests call the program's, as they would in one interpreter."""
        tree = ast.parse(self.code)
        defined = {node.name for node in tree.body
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        return tuple(sorted(name for name in defined
                            if hasattr(builtins, name) or name in sys.stdlib_module_names))

    def program(self, completion: str) -> str:
        return f"{completion}\n{self.test_setup_code}" if self.test_setup_code else completion


def load_mbpp(split: str | None = None, path: str = DEFAULT_PATH) -> dict[int, MbppProblem]:
    """Problems by task id, all 974 or one split's."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; choose from {sorted(SPLITS)}")
    problems = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if split is None or record["task_id"] in SPLITS[split]:
                problems[record["task_id"]] = MbppProblem(
                    task_id=record["task_id"], text=record["text"], code=record["code"],
                    test_setup_code=record["test_setup_code"],
                    test_list=tuple(record["test_list"]),
                    challenge_test_list=tuple(record["challenge_test_list"]))
    return problems


class Mbpp:
    """The ``CodeBenchmark`` for MBPP samples files; task ids are ints (digit strings ok)."""

    name = "mbpp"

    def __init__(self, split: str | None = "test",
                 problems: Mapping[int, MbppProblem] | None = None) -> None:
        self.split = split
        self.problems = dict(problems) if problems is not None else load_mbpp(split)

    def parse_task_id(self, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"MBPP task_id must be an integer, got {value!r}")
        try:
            task_id = int(value)
        except ValueError:
            raise ValueError(f"MBPP task_id must be an integer, got {value!r}") from None
        if task_id not in self.problems:
            where = f"the {self.split} split" if self.split else "MBPP"
            raise ValueError(f"task_id {task_id} is not in {where}")
        return task_id

    def job(self, task_id: object, completion: str) -> SandboxJob:
        problem = self.problems[int(task_id)]  # type: ignore[arg-type]
        return SandboxJob(problem.program(completion), problem.test_list,
                          names_from_program=problem.names_from_program())
