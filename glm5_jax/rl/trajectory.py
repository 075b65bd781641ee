"""One episode as the learner sees it: token ids exactly as sampled, their rollout log-probs,
the policy version of every turn (and of every token, where weights changed mid-turn), and the
reward terms.

Token in, token out: the policy's tokens are stored as the sampler emitted them and are never
re-tokenised from text (re-tokenising can merge or split tokens and silently change what the
importance ratio compares). Environment text (prompts, test failures) is tokenised once by
the rollout worker and stored beside them, marked as not trainable.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class Turn:
    """What the environment showed (``observation_tokens``) and what the policy answered."""

    observation_tokens: list[int]  # prompt or feedback; excluded from the loss
    action_tokens: list[int]  # sampled by the policy, EOS included when it ended that way
    action_logprobs: list[float]  # log pi_rollout of each action token, as sampled
    policy_version: int  # weights that sampled this turn (the oldest, if they changed mid-turn)
    reward: float = 0.0  # immediate reward of this turn (the final turn carries the outcome)
    # The version that sampled each action token, when new weights took over mid-generation
    # (interruptible generation); None: every token was sampled by ``policy_version``.
    token_versions: list[int] | None = None

    @property
    def versions_per_token(self) -> list[int]:
        if self.token_versions is None:
            return [self.policy_version] * len(self.action_tokens)
        return list(self.token_versions)

    @classmethod
    def sampled(cls, observation_tokens: list[int], action_tokens: list[int], action_logprobs: list[float],
                token_versions: list[int], reward: float = 0.0) -> Turn:
        """A turn from per-token versions: ``policy_version`` is the oldest (staleness is
        conservative), ``token_versions`` is kept only if they differ."""
        versions = [int(v) for v in token_versions]
        if len(versions) != len(action_tokens) or not versions:
            raise ValueError(f"{len(versions)} token versions for {len(action_tokens)} action tokens")
        mixed = len(set(versions)) > 1
        return cls(observation_tokens, action_tokens, action_logprobs, min(versions), reward,
                   versions if mixed else None)


@dataclasses.dataclass
class Trajectory:
    episode_id: str  # unique over the whole run: "<order id>:<index>"
    group_id: str  # samples of one prompt share it
    task_id: str
    turns: list[Turn]
    reward_terms: dict[str, float]  # every term of the hierarchical reward, logged separately
    passed: bool = False  # all tests passed at the end
    env_crashed: bool = False  # the sandbox itself failed: the sample says nothing about the policy
    worker_id: int = -1
    generate_s: float = 0.0
    environment_s: float = 0.0

    @property
    def policy_versions(self) -> list[int]:
        return [turn.policy_version for turn in self.turns]

    @property
    def oldest_version(self) -> int:
        return min(self.policy_versions)

    @property
    def reward(self) -> float:
        return float(sum(turn.reward for turn in self.turns))

    @property
    def num_action_tokens(self) -> int:
        return sum(len(turn.action_tokens) for turn in self.turns)

    def staleness(self, current_version: int) -> int:
        """How many weight pushes ago the oldest turn was sampled."""
        return current_version - self.oldest_version

    def flatten(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(tokens, is_action, rollout_logprobs, turn_index) over the whole episode, [length]."""
        tokens, is_action, logprobs, turn_index = [], [], [], []
        for k, turn in enumerate(self.turns):
            tokens += turn.observation_tokens + turn.action_tokens
            is_action += [False] * len(turn.observation_tokens) + [True] * len(turn.action_tokens)
            logprobs += [0.0] * len(turn.observation_tokens) + list(turn.action_logprobs)
            turn_index += [k] * (len(turn.observation_tokens) + len(turn.action_tokens))
        return (np.asarray(tokens, np.int32), np.asarray(is_action, bool),
                np.asarray(logprobs, np.float32), np.asarray(turn_index, np.int32))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "Trajectory":
        fields = dict(fields)
        fields["turns"] = [Turn(**turn) for turn in fields["turns"]]
        return cls(**fields)
