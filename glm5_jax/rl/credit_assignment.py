"""Delayed credit assignment across the turns of one episode.

A multi-turn debugging episode is rewarded once, when it ends. Two discounts, one ``gamma``:

* **A repair costs.** A reward earned on turn j (1-based), after j - 1 failed attempts, is
  worth gamma^(j - 1) of the same reward earned at once: a pass on turn 2 after a failed turn 1
  earns gamma R, a first-try pass R. Without it the turn that repaired a bug would earn exactly
  what a first-try pass earns, and the policy would have no reason to get it right at once.
* **Credit flows back.** Turn k receives G_k = sum_{j >= k} gamma^(j - k) r'_j of the
  repair-discounted rewards r'_j = gamma^(j - 1) r_j. With only a final reward R on turn K:
  G_k = gamma^(K - k) gamma^(K - 1) R, so the failed first attempt of a repaired episode earns
  less than its repair (gamma^2 R against gamma R), which earns less than a first-try pass (R).

Advantages of turns use the group's baseline computed on whole-episode returns (G_1), so
all turns of all samples in a group are compared against one reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check_gamma(gamma: float) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma} must be in [0, 1]")


def discounted_turn_returns(turn_rewards: Sequence[float], gamma: float) -> np.ndarray:
    """[turns] rewards -> [turns] returns G_k = r_k + gamma * G_{k+1}."""
    _check_gamma(gamma)
    returns = np.zeros(len(turn_rewards), dtype=np.float64)
    running = 0.0
    for k in range(len(turn_rewards) - 1, -1, -1):
        running = float(turn_rewards[k]) + gamma * running
        returns[k] = running
    return returns


def repair_discounted_rewards(turn_rewards: Sequence[float], gamma: float) -> np.ndarray:
    """[turns] rewards -> r_j * gamma^(j - 1): what a reward is worth after j - 1 failed turns."""
    _check_gamma(gamma)
    return np.asarray(turn_rewards, np.float64) * gamma ** np.arange(len(turn_rewards))


def turn_returns(turn_rewards: Sequence[float], gamma: float) -> np.ndarray:
    """The credit of each turn: repair-discounted rewards, credited back with ``gamma``."""
    return discounted_turn_returns(repair_discounted_rewards(turn_rewards, gamma), gamma)


def turn_advantages(group_turn_returns: Sequence[np.ndarray], normalize_by_std: bool = True,
                    eps: float = 1e-6) -> list[np.ndarray]:
    """Per sample, per turn: (G_k - mean_group(G_1)) / std_group(G_1).

    ``group_turn_returns``: one [turns_i] array per sample of a group (turn counts differ).
    """
    episode_returns = np.asarray([returns[0] for returns in group_turn_returns], np.float64)
    baseline = episode_returns.mean()
    scale = episode_returns.std() if normalize_by_std else 1.0
    if normalize_by_std and scale <= eps:
        # Every episode got the same outcome: only the discounting differs between turns,
        # which says nothing about which actions were better. No signal.
        return [np.zeros_like(returns, dtype=np.float32) for returns in group_turn_returns]
    return [((np.asarray(returns) - baseline) / scale).astype(np.float32)
            for returns in group_turn_returns]
