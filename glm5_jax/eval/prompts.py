"""Prompt builders for HumanEval and MBPP in their usual formats.

HumanEval: the function signature and docstring, which the model continues.
MBPP: the paper's format (Austin et al. 2021): the task text and its three asserts, then
``[BEGIN]``; the few-shot variant prefixes tasks 2, 3 and 4 with their reference code
closed by ``[DONE]``, and a generation is cut at its first ``[DONE]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from glm5_jax.eval.humaneval import HumanEvalProblem
from glm5_jax.eval.mbpp import MbppProblem, load_mbpp

MBPP_FEW_SHOT_TASK_IDS = (2, 3, 4)
_MBPP_TASK = ("You are an expert Python programmer, and here is your task: {text} "
              "Your code should pass these tests:\n\n{tests}\n")


def humaneval_prompt(problem: HumanEvalProblem) -> str:
    return problem.prompt


def mbpp_zero_shot_prompt(problem: MbppProblem) -> str:
    return _mbpp_task(problem) + "[BEGIN]\n"


def mbpp_few_shot_prompt(problem: MbppProblem,
                         examples: Sequence[MbppProblem] | None = None) -> str:
    """The 3-shot prompt; ``examples`` defaults to the paper's tasks 2, 3 and 4."""
    if examples is None:
        examples = _default_examples()
    shots = "".join(f"{_mbpp_task(example)}[BEGIN]\n{_normalize(example.code)}\n[DONE]\n"
                    for example in examples)
    return shots + mbpp_zero_shot_prompt(problem)


def mbpp_completion_from_generation(generation: str) -> str:
    """The program a model wrote after ``[BEGIN]``: everything before its ``[DONE]``."""
    return generation.split("[DONE]", 1)[0]


def _mbpp_task(problem: MbppProblem) -> str:
    return _MBPP_TASK.format(text=problem.text.strip(), tests="\n".join(problem.test_list))


def _normalize(code: str) -> str:
    return code.replace("\r\n", "\n").strip("\n")


def _default_examples(problems: Mapping[int, MbppProblem] | None = None) -> list[MbppProblem]:
    problems = problems if problems is not None else load_mbpp("prompt")
    return [problems[task_id] for task_id in MBPP_FEW_SHOT_TASK_IDS]
