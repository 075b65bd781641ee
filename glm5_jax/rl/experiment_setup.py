"""The pieces that learner and workers must build identically from one config."""

from __future__ import annotations

import ml_collections

from glm5_jax.rl.char_tokenizer import CharTokenizer
from glm5_jax.rl.tasks import CodeTask, tiny_task_suite


def make_tokenizer(config: ml_collections.ConfigDict):
    if config.tokenizer != "char":
        raise ValueError(f"tokenizer={config.tokenizer!r}; only 'char' is wired up for RL so far "
                         "(BPE models need the data package's tokenizer with the same interface)")
    return CharTokenizer()


def make_tasks(config: ml_collections.ConfigDict) -> list[CodeTask]:
    suite = config.tasks.suite
    if suite == "tiny":
        return tiny_task_suite(tuple(config.tasks.levels))
    if suite == "mbpp":
        from glm5_jax.rl.task_adapters import mbpp_tasks

        return mbpp_tasks("train")
    if suite == "humaneval":
        from glm5_jax.rl.task_adapters import humaneval_tasks

        return humaneval_tasks()
    raise ValueError(f"tasks.suite={suite!r}; allowed: 'tiny', 'mbpp', 'humaneval'")
