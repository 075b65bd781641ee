"""MBPP (train split) and HumanEval problems as ``CodeTask``s, for policies larger than tiny.

Both read the data that ``glm5_jax.eval`` already ships or depends on (no downloads). MBPP's
prompt is its description plus the first test, as in the paper's evaluation; every assert is
its own test so the fraction of tests passed is a reward term. HumanEval's completion
continues the signature and docstring (``code_prefix``), and its single test is ``check``.
"""

from __future__ import annotations

from glm5_jax.rl.tasks import CodeTask


def mbpp_tasks(split: str = "train") -> list[CodeTask]:
    from glm5_jax.eval.mbpp import load_mbpp

    tasks = []
    for task_id, problem in sorted(load_mbpp(split).items()):
        prompt = f'"""{problem.text}\n{problem.test_list[0]}\n"""\n'
        setup = (problem.test_setup_code,) if problem.test_setup_code else ()
        # Setup code (tasks 367, 927) runs as the first "test" so it shares the namespace.
        tasks.append(CodeTask(f"mbpp/{task_id}", prompt, setup + problem.test_list,
                              problem.code, difficulty=2))
    return tasks


def humaneval_tasks() -> list[CodeTask]:
    from glm5_jax.eval.humaneval import load_humaneval

    return [CodeTask(task_id, problem.prompt, (problem.test_program(),),
                     problem.canonical_solution, difficulty=3, code_prefix=problem.prompt)
            for task_id, problem in load_humaneval().items()]
