"""Prompt formats for HumanEval and MBPP."""

from __future__ import annotations

from glm5_jax.eval.humaneval import load_humaneval
from glm5_jax.eval.mbpp import load_mbpp
from glm5_jax.eval.prompts import (
    MBPP_FEW_SHOT_TASK_IDS, humaneval_prompt, mbpp_completion_from_generation,
    mbpp_few_shot_prompt, mbpp_zero_shot_prompt)


def test_humaneval_prompt_is_the_function_prompt():
    problem = load_humaneval()["HumanEval/0"]
    assert humaneval_prompt(problem) == problem.prompt
    assert humaneval_prompt(problem).rstrip().endswith('"""')


def test_mbpp_zero_shot_has_the_task_and_its_three_asserts():
    problem = load_mbpp()[11]
    prompt = mbpp_zero_shot_prompt(problem)
    assert prompt.startswith("You are an expert Python programmer, and here is your task: "
                             + problem.text.strip())
    assert "Your code should pass these tests:\n\n" + "\n".join(problem.test_list) + "\n" in prompt
    assert prompt.endswith("[BEGIN]\n")


def test_mbpp_few_shot_uses_tasks_2_3_4_then_the_target():
    problems = load_mbpp()
    prompt = mbpp_few_shot_prompt(problems[11])
    assert MBPP_FEW_SHOT_TASK_IDS == (2, 3, 4)
    positions = [prompt.index(problems[i].text.strip()) for i in (2, 3, 4, 11)]
    assert positions == sorted(positions)
    assert prompt.count("[BEGIN]") == 4 and prompt.count("[DONE]") == 3
    assert "\r" not in prompt
    assert prompt.endswith(mbpp_zero_shot_prompt(problems[11]))
    assert "def similar_elements(test_tup1, test_tup2):" in prompt


def test_generation_is_cut_at_done():
    assert mbpp_completion_from_generation("def f():\n    return 1\n[DONE]\nchatter") == \
        "def f():\n    return 1\n"
    assert mbpp_completion_from_generation("x = 1") == "x = 1"
