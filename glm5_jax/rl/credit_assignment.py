"""Delayed credit assignment across the turns of one episode.

A multi-turn debugging episode is rewarded once, when it ends; the turns that led there
earn that outcome discounted by how far they were from it: turn k of K receives
G_k = sum_{j >= k} gamma^(j - k) r_j. With only a final reward R this is gamma^(K - k) R,
so a first attempt that needed two repairs earns less than one that passed at once.

Advantages of turns use the group's baseline computed on whole-episode returns (G_1), so
all turns of all samples in a group are compared against one reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def discounted_turn_returns(turn_rewards: Sequence[float], gamma: float) -> np.ndarray:
    """[turns] rewards -> [turns] returns G_k = r_k + gamma * G_{k+1}."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma} must be in [0, 1]")
    returns = np.zeros(len(turn_rewards), dtype=np.float64)
    running = 0.0
    for k in range(len(turn_rewards) - 1, -1, -1):
        running = float(turn_rewards[k]) + gamma * running
        returns[k] = running
    return returns


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
