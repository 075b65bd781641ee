"""Code environments: single-turn, multi-turn debugging, and test-driven.

An environment holds one episode on one task. It speaks text; the rollout worker turns that
text into tokens once and keeps the policy's own tokens exactly as sampled. Programs run in
the sandbox of ``glm5_jax.eval``; the rollout batches the runs of many environments, so an
environment only says *what* to run (``job``) and reads the verdict (``step``).

* ``single_turn``: the task's prompt; one attempt; rewarded by its tests.
* ``debug``: after a failed attempt the environment shows the first failing test and its
  error (``#fail ...``), and the policy writes a revised function, up to ``max_turns``.
* ``test_driven``: the prompt lists the tests before the policy writes anything; combined
  with ``max_turns > 1`` it is also a debugging loop.

Credit is delayed: every turn but the last gets reward 0 and the final outcome is credited
back by ``credit_assignment.discounted_turn_returns`` when the episode is trained on.
"""

from __future__ import annotations

import dataclasses

from glm5_jax.eval.pool import SandboxJob
from glm5_jax.eval.results import ExecutionResult, Status
from glm5_jax.rl.feedback import FeedbackScorer
from glm5_jax.rl.rewards import RewardWeights, hierarchical_reward
from glm5_jax.rl.tasks import CodeTask

ENVIRONMENT_KINDS = ("single_turn", "debug", "test_driven")


@dataclasses.dataclass(frozen=True)
class StepOutcome:
    done: bool
    observation: str  # shown before the next attempt ("" when done)
    reward: float  # immediate reward of this turn
    terms: dict[str, float]  # reward terms of this attempt, unweighted
    passed: bool
    crashed: bool  # the sandbox failed, not the program


class CodeEnvironment:
    def __init__(self, task: CodeTask, kind: str, max_turns: int, weights: RewardWeights,
                 feedback: FeedbackScorer, shown_tests: int = 2, feedback_chars: int = 60) -> None:
        if kind not in ENVIRONMENT_KINDS:
            raise ValueError(f"environment kind {kind!r} is unknown; allowed: {list(ENVIRONMENT_KINDS)}")
        if max_turns < 1:
            raise ValueError(f"max_turns={max_turns} must be >= 1")
        self.task = task
        self.kind = kind
        self.max_turns = 1 if kind == "single_turn" else max_turns
        self.weights = weights
        self.feedback = feedback
        self.shown_tests = shown_tests
        self.feedback_chars = feedback_chars
        self.turn = 0

    def reset(self) -> str:
        self.turn = 0
        if self.kind == "test_driven":
            shown = "".join(f"{test}\n" for test in self.task.tests[:self.shown_tests])
            return f"{self.task.prompt}{shown}"
        return self.task.prompt

    def job(self, completion: str) -> SandboxJob:
        return SandboxJob(self.task.program(completion), self.task.tests)

    def step(self, completion: str, result: ExecutionResult) -> StepOutcome:
        self.turn += 1
        if result.status is Status.ERROR:
            return StepOutcome(True, "", 0.0, {}, False, crashed=True)
        reward, terms = hierarchical_reward(self.task, completion, result, self.weights,
                                            self.feedback)
        if result.passed or self.turn >= self.max_turns:
            return StepOutcome(True, "", reward, terms, result.passed, crashed=False)
        return StepOutcome(False, self.failure_report(result), 0.0, terms, False, crashed=False)

    def failure_report(self, result: ExecutionResult) -> str:
        """``#fail <first failing test>: <error>`` on one line, at most ``feedback_chars``."""
        message = result.reason
        for test, error in zip(self.task.tests, result.test_errors):
            if error is not None and error != "not run":
                message = f"{test}: {error}"
                break
        message = " ".join(message.split())[:self.feedback_chars]
        return f"\n#fail {message}\n"
