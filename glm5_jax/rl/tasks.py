"""Code tasks: a prompt, the unit tests that judge an answer, and a reference solution.

``tiny_task_suite`` builds, with no downloads, short function-writing problems at four
difficulty levels that a tiny character-level policy can learn on a CPU in minutes:

  level 0  return a constant              "#const 4"      -> def f():return 4
  level 1  one arithmetic step            "#add 3"        -> def f(x):return x+3
  level 2  strings and two arguments      "#rev"          -> def f(s):return s[::-1]
  level 3  two composed steps, remainders "#add 2 mul 3"  -> def f(x):return (x+2)*3

Every task carries user-feedback labels (``max_chars=N``: the user asked for a short
answer) that the default feedback scorer of the hierarchical reward reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

LEVELS = (0, 1, 2, 3)


@dataclasses.dataclass(frozen=True)
class CodeTask:
    task_id: str
    prompt: str  # what the policy is shown
    tests: tuple[str, ...]  # each an assert snippet, run in the program's namespace
    reference: str  # a correct completion (the warm start imitates these)
    difficulty: int = 0
    code_prefix: str = ""  # given code the completion continues (HumanEval's signature)
    feedback_labels: tuple[str, ...] = ()  # e.g. "max_chars=24"; read by feedback scorers

    def program(self, completion: str) -> str:
        """The program the sandbox runs for a completion."""
        return f"{self.code_prefix}{completion}\n"


def _unary(task_id: str, spec: str, expression: str, difficulty: int,
           inputs: Sequence[int] = (0, 1, 5, -2)) -> CodeTask:
    reference = f"def f(x):return {expression}"
    namespace: dict = {}
    exec(reference, namespace)  # noqa: S102 - our own template, to compute expected outputs
    tests = tuple(f"assert f({x})=={namespace['f'](x)!r}" for x in inputs)
    return CodeTask(task_id, f"#{spec}\n", tests, reference, difficulty)


def _with_reference(task_id: str, spec: str, reference: str, calls: Sequence[str],
                    difficulty: int) -> CodeTask:
    namespace: dict = {}
    exec(reference, namespace)  # noqa: S102
    tests = tuple(f"assert f({call})=={eval(f'f({call})', namespace)!r}" for call in calls)  # noqa: S307
    return CodeTask(task_id, f"#{spec}\n", tests, reference, difficulty)


_OPS = {"add": "x+{k}", "sub": "x-{k}", "mul": "x*{k}"}
_STRING_AND_BINARY = {
    "rev": ("def f(s):return s[::-1]", ("'abc'", "'xy'", "''")),
    "upper": ("def f(s):return s.upper()", ("'abc'", "'Hi'")),
    "len": ("def f(s):return len(s)", ("'abc'", "''", "'hello'")),
    "first": ("def f(s):return s[0]", ("'abc'", "'z'")),
    "last": ("def f(s):return s[-1]", ("'abc'", "'z'")),
    "sum": ("def f(a,b):return a+b", ("1,2", "0,0", "-3,5")),
    "prod": ("def f(a,b):return a*b", ("2,3", "0,7", "-1,4")),
    "max": ("def f(a,b):return max(a,b)", ("1,2", "5,3", "-1,-4")),
    "min": ("def f(a,b):return min(a,b)", ("1,2", "5,3", "-1,-4")),
}


def tiny_task_suite(levels: Sequence[int] = LEVELS, short_answer_slack: int = 2) -> list[CodeTask]:
    """All tasks of the given levels, in a fixed order (sampling is the caller's business)."""
    unknown = sorted(set(levels) - set(LEVELS))
    if unknown:
        raise ValueError(f"unknown difficulty levels {unknown}; allowed: {list(LEVELS)}")
    tasks: list[CodeTask] = []
    if 0 in levels:
        for k in range(10):
            tasks.append(CodeTask(f"const{k}", f"#const {k}\n", (f"assert f()=={k}",),
                                  f"def f():return {k}", 0))
    if 1 in levels:
        for op, template in _OPS.items():
            for k in range(1, 10):
                tasks.append(_unary(f"{op}{k}", f"{op} {k}", template.format(k=k), 1))
        tasks.append(_unary("neg", "neg", "-x", 1))
        tasks.append(_unary("sq", "sq", "x*x", 1))
    if 2 in levels:
        for name, (reference, calls) in _STRING_AND_BINARY.items():
            tasks.append(_with_reference(name, name, reference, calls, 2))
    if 3 in levels:
        for first in ("add", "mul"):
            for second in ("add", "mul"):
                for a in range(1, 5):
                    for b in range(1, 5):
                        inner = _OPS[first].format(k=a)
                        expression = f"({inner}){_OPS[second].format(k=b)[1:]}"
                        tasks.append(_unary(f"{first}{a}{second}{b}", f"{first} {a} {second} {b}",
                                            expression, 3))
        tasks.append(_unary("abs", "abs", "abs(x)", 3))
        tasks.append(_unary("even", "even", "x%2==0", 3))
        for k in range(2, 6):
            tasks.append(_unary(f"mod{k}", f"mod {k}", f"x%{k}", 3))
    return [dataclasses.replace(task, feedback_labels=(
        f"max_chars={len(task.reference) + short_answer_slack}",)) for task in tasks]
