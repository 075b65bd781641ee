"""The hierarchical reward: correctness first, then code quality and user feedback.

    reward = w_correct * all_tests_passed + w_fraction * fraction_of_tests_passed
           + gate * (w_complexity * simplicity + w_style * cleanliness + w_feedback * feedback)

Why hierarchical: a policy must never trade a passing test for prettier code. The lower terms
are each in [0, 1] with small weights (config fields), and by default they only count once
every test passes (``gate``), so no amount of style can outweigh correctness. Every term is
returned separately so each can be logged.

simplicity  = 1 / max cyclomatic complexity (1 for straight-line code, 0 if it does not parse)
cleanliness = 1 / (1 + ruff findings)
feedback    = the configured feedback scorer's value (``glm5_jax.rl.feedback``)
"""

from __future__ import annotations

import dataclasses
import functools
import math

from glm5_jax.eval.results import ExecutionResult
from glm5_jax.rl.feedback import FeedbackScorer
from glm5_jax.rl.tasks import CodeTask

TERMS = ("correct", "fraction_passed", "simplicity", "cleanliness", "feedback")


@dataclasses.dataclass(frozen=True)
class RewardWeights:
    correct: float = 1.0
    fraction_passed: float = 0.5
    simplicity: float = 0.05
    cleanliness: float = 0.05
    feedback: float = 0.05
    gate_lower_terms_on_pass: bool = True

    @classmethod
    def from_config(cls, config) -> "RewardWeights":
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config})


@functools.lru_cache(maxsize=65536)
def code_quality(program: str, with_style: bool = True) -> tuple[float, float]:
    """(simplicity, cleanliness) of a program; pure in its text, so cached (policies repeat
    themselves a lot once they have learned a task)."""
    from glm5_jax.eval.code_quality import max_cyclomatic_complexity, style_findings

    complexity = max_cyclomatic_complexity(program)
    simplicity = 0.0 if math.isinf(complexity) else 1.0 / max(complexity, 1.0)
    cleanliness = 1.0 / (1.0 + style_findings(program)) if with_style else 1.0
    return simplicity, cleanliness


def hierarchical_reward(task: CodeTask, completion: str, result: ExecutionResult,
                        weights: RewardWeights, feedback: FeedbackScorer) -> tuple[float, dict[str, float]]:
    """(total reward, every term unweighted)."""
    correct = 1.0 if result.passed else 0.0
    fraction = result.fraction_passed if result.tests_total else correct
    need_quality = weights.simplicity or weights.cleanliness
    simplicity, cleanliness = (code_quality(task.program(completion), bool(weights.cleanliness))
                               if need_quality else (0.0, 0.0))
    terms = {"correct": correct, "fraction_passed": fraction, "simplicity": simplicity,
             "cleanliness": cleanliness, "feedback": float(feedback(task, completion))}
    gate = correct if weights.gate_lower_terms_on_pass else 1.0
    total = (weights.correct * correct + weights.fraction_passed * fraction
             + gate * (weights.simplicity * simplicity + weights.cleanliness * cleanliness
                       + weights.feedback * terms["feedback"]))
    return float(total), terms
