"""From assembled groups to the learner's fixed-shape arrays, with per-token advantages.

Each sample's sequence is every token of the episode (prompt, actions, feedback). The model
reads tokens[:-1] and is scored on tokens[1:]; a target counts in the loss only if the policy
sampled it (``loss_mask``), so feedback and prompt tokens never do. Each action token carries
its turn's advantage (delayed credit, ``credit_assignment``), its rollout log-prob and the
policy version that sampled it (``Turn.token_versions`` where the sampler records one per
token, else the turn's version; -1 on tokens the policy did not sample). Rows are padded or
truncated to ``seq_len`` so the train step compiles once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from glm5_jax.rl.buffer import AssembledGroup
from glm5_jax.rl.credit_assignment import turn_advantages, turn_returns
from glm5_jax.rl.trajectory import Trajectory

BATCH_KEYS = ("input_ids", "targets", "loss_mask", "rollout_logprobs", "advantages",
              "token_versions")
INTEGER_KEYS = ("input_ids", "targets", "token_versions")


def sampled_token_versions(sample: Trajectory) -> np.ndarray:
    """[length] policy version that sampled each token of ``sample.flatten()``; -1 elsewhere."""
    versions: list[int] = []
    for turn in sample.turns:
        versions += [-1] * len(turn.observation_tokens) + turn.versions_per_token
    return np.asarray(versions, np.int32)


@dataclasses.dataclass(frozen=True)
class BatchInfo:
    samples: int
    policy_tokens: int  # action tokens that entered the loss
    total_tokens: int  # every non-padding target position
    truncated_samples: int
    mean_reward: float
    pass_rate: float
    reward_terms: dict[str, float]
    mean_turns: float


def build_batch(groups: Sequence[AssembledGroup], seq_len: int, gamma: float,
                normalize_by_std: bool, pad_id: int) -> tuple[dict[str, np.ndarray], BatchInfo]:
    rows = sum(len(g.samples) for g in groups)
    arrays = {"input_ids": np.full((rows, seq_len), pad_id, np.int32),
              "targets": np.full((rows, seq_len), pad_id, np.int32),
              "loss_mask": np.zeros((rows, seq_len), np.float32),
              "rollout_logprobs": np.zeros((rows, seq_len), np.float32),
              "advantages": np.zeros((rows, seq_len), np.float32),
              "token_versions": np.full((rows, seq_len), -1, np.int32)}
    row, truncated, total_tokens = 0, 0, 0
    rewards, passes, turns = [], [], []
    terms: dict[str, list[float]] = {}
    for group in groups:
        returns = [turn_returns([t.reward for t in s.turns], gamma) for s in group.samples]
        advantages = turn_advantages(returns, normalize_by_std)
        for sample, sample_advantages in zip(group.samples, advantages):
            tokens, is_action, logprobs, turn_index = sample.flatten()
            length = min(len(tokens) - 1, seq_len)
            truncated += len(tokens) - 1 > seq_len
            total_tokens += length
            arrays["input_ids"][row, :length] = tokens[:length]
            arrays["targets"][row, :length] = tokens[1:length + 1]
            arrays["loss_mask"][row, :length] = is_action[1:length + 1]
            arrays["rollout_logprobs"][row, :length] = logprobs[1:length + 1]
            arrays["advantages"][row, :length] = sample_advantages[turn_index[1:length + 1]]
            arrays["token_versions"][row, :length] = sampled_token_versions(sample)[1:length + 1]
            row += 1
        for sample in group.samples[:len(group.samples) - group.num_padded]:
            rewards.append(sample.reward)
            passes.append(float(sample.passed))
            turns.append(len(sample.turns))
            for name, value in sample.reward_terms.items():
                terms.setdefault(name, []).append(value)
    arrays["advantages"] *= arrays["loss_mask"]
    info = BatchInfo(samples=len(rewards), policy_tokens=int(arrays["loss_mask"].sum()),
                     total_tokens=total_tokens, truncated_samples=int(truncated),
                     mean_reward=float(np.mean(rewards)) if rewards else 0.0,
                     pass_rate=float(np.mean(passes)) if passes else 0.0,
                     reward_terms={k: float(np.mean(v)) for k, v in terms.items()},
                     mean_turns=float(np.mean(turns)) if turns else 0.0)
    return arrays, info
