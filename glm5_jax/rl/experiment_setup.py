"""The pieces that learner, workers and the evaluator must build identically from one config."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence

import ml_collections

from glm5_jax.rl.char_tokenizer import CharTokenizer
from glm5_jax.rl.environments import CodeEnvironment
from glm5_jax.rl.feedback import get_feedback_scorer
from glm5_jax.rl.rewards import RewardWeights
from glm5_jax.rl.tasks import CodeTask, tiny_task_suite

SPLITS = ("train", "held_out")
TOKENIZERS = ("char", "checkpoint")


def make_tokenizer(config: ml_collections.ConfigDict):
    """``char``: one token per character (the tiny suite from scratch); ``checkpoint``: the
    ``tokenizer.json`` beside ``config.init_from`` (RL from a pretrained model)."""
    if config.tokenizer == "char":
        return CharTokenizer()
    if config.tokenizer == "checkpoint":
        if not config.get("init_from"):
            raise ValueError("tokenizer='checkpoint' needs init_from (a training workdir or HF "
                             "directory with a tokenizer.json)")
        from glm5_jax.rl.bpe_tokenizer import BpeTokenizer

        special = config.special_tokens
        return BpeTokenizer(os.path.join(config.init_from, "tokenizer.json"), special.bos,
                            special.eos, special.pad)
    raise ValueError(f"tokenizer={config.tokenizer!r}; allowed: {list(TOKENIZERS)}")


def _suite(config: ml_collections.ConfigDict) -> list[CodeTask]:
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


def split_held_out(tasks: Sequence[CodeTask], fraction: float) -> tuple[list[CodeTask], list[CodeTask]]:
    """(train, held_out): ``round(fraction * n)`` tasks of every difficulty level are held out,
    chosen by a hash of their ids, so the split depends on nothing but the ids (not on the
    seed, the order or the other tasks) and every level is represented on both sides."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"tasks.held_out_fraction={fraction} must be in [0, 1)")
    held: set[str] = set()
    for level in sorted({task.difficulty for task in tasks}):
        ids = sorted((t.task_id for t in tasks if t.difficulty == level),
                     key=lambda task_id: hashlib.sha256(task_id.encode()).hexdigest())
        held.update(ids[:round(fraction * len(ids))])
    return ([t for t in tasks if t.task_id not in held], [t for t in tasks if t.task_id in held])


def make_task_splits(config: ml_collections.ConfigDict) -> dict[str, list[CodeTask]]:
    """{"train": what RL and the warm start see, "held_out": only evaluation sees these}."""
    train, held_out = split_held_out(_suite(config), float(config.tasks.get("held_out_fraction", 0.0)))
    return {"train": train, "held_out": held_out}


def make_tasks(config: ml_collections.ConfigDict) -> list[CodeTask]:
    """The training tasks: the suite minus its held-out share."""
    return make_task_splits(config)["train"]


def environment_factory(config: ml_collections.ConfigDict) -> Callable[[CodeTask], CodeEnvironment]:
    """task -> a fresh episode of ``config.environment``, rewarded by ``config.reward``."""
    weights = RewardWeights.from_config(config.reward)
    feedback = get_feedback_scorer(config.reward.feedback_scorer)
    env = config.environment

    def make_env(task: CodeTask) -> CodeEnvironment:
        return CodeEnvironment(task, env.kind, env.max_turns, weights, feedback, env.shown_tests,
                               env.feedback_chars)

    return make_env
