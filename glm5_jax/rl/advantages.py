"""Group-normalised advantages (GRPO): the critic-free baseline.

Each prompt is sampled ``group_size`` times; a sample's advantage is its return minus the
group's mean return, divided by the group's standard deviation. A group whose samples all
got the same return teaches nothing and gets zero advantage (never a division by ~0).
"""

from __future__ import annotations

import numpy as np


def group_advantages(returns: np.ndarray, normalize_by_std: bool = True,
                     eps: float = 1e-6) -> np.ndarray:
    """returns [groups, group_size] -> advantages of the same shape.

    ``normalize_by_std=False`` keeps only the mean baseline (Dr. GRPO's fix for the bias
    toward low-variance groups).
    """
    returns = np.asarray(returns, dtype=np.float64)
    if returns.ndim != 2:
        raise ValueError(f"returns must be [groups, group_size], got shape {returns.shape}")
    centred = returns - returns.mean(axis=1, keepdims=True)
    if not normalize_by_std:
        return centred.astype(np.float32)
    std = returns.std(axis=1, keepdims=True)
    return np.where(std > eps, centred / np.maximum(std, eps), 0.0).astype(np.float32)
