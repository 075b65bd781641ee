"""The iso-loss compute ratio: how much compute a row needs against the dense baseline at the
same loss, with the dense baseline's compute interpolated between its sizes.

Every row of the cost table trains on the same tokens, so compute is FLOPs per token. The
dense baseline's sizes give points (FLOPs per token, loss); between two neighbouring sizes
log(FLOPs) is taken as linear in the loss. A row's ratio is its FLOPs per token over the
dense baseline's at the row's loss; 0.62 would mean the row reaches the loss with 62% of the
dense compute. A loss outside the dense sizes' range has no ratio (None): extrapolating a
two- or three-point fit would be a guess.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence


def dense_flops_at_loss(dense: Sequence[tuple[float, float]], loss: float) -> float | None:
    """Interpolated FLOPs per token at which the dense baseline reaches ``loss``.

    ``dense``: (FLOPs per token, loss) per dense size. None outside their loss range, or when
    the bracketing sizes' losses do not fall with compute."""
    points = sorted(dense)
    for (f0, l0), (f1, l1) in itertools.pairwise(points):
        low, high = min(l0, l1), max(l0, l1)
        if low <= loss <= high:
            if l1 >= l0:  # more compute, no lower loss: no curve to read
                return None
            t = (l0 - loss) / (l0 - l1)
            return math.exp(math.log(f0) + t * (math.log(f1) - math.log(f0)))
    return None


def iso_loss_ratio(flops: float, loss: float, dense: Sequence[tuple[float, float]]) -> float | None:
    at_loss = dense_flops_at_loss(dense, loss)
    return None if at_loss is None else flops / at_loss
