"""Figures: one matplotlib figure per call, written as PNG (Agg backend, no display)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def figure(path: Path, size: tuple[float, float] = (7.0, 4.5), columns: int = 1) -> Iterator:
    """``with figure(DIR / "x.png") as axes:`` draws on ``axes`` (a list when columns > 1) and
    saves the PNG on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=size)
    try:
        yield axes
        for ax in (axes if columns > 1 else [axes]):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=110)
    finally:
        plt.close(fig)
