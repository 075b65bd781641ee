"""The async-vs-sync figure: fixed-evaluation reward against wall-clock time and against
samples; per mode the median over seeds and a shaded band from the lowest to the highest seed.

Rows: the reward on the training tasks; the same as a gain over each seed's warm start (the
seeds' warm starts differ far more than RL moves them, so the first row's band mostly shows
the warm starts; both modes of a seed share one); the gain on the held-out tasks."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from rl_bench_curves import end_wall, on_grid

COLOURS = {"async": "#d62728", "sync": "#1f77b4"}
POINTS = 100


ROWS = (("train", False, "eval reward, training tasks"),
        ("train", True, "gain over warm start, training tasks"),
        ("held_out", True, "gain over warm start, held-out tasks"))


def _band(runs: list[dict[str, Any]], split: str, x: str, grid: list[float], relative: bool):
    values = on_grid(runs, split, x, grid)
    if relative:
        values = [[v - run[split][0]["reward"] for v in row] for run, row in zip(runs, values)]
    columns = list(zip(*values))
    return ([statistics.median(c) for c in columns], [min(c) for c in columns], [max(c) for c in columns])


def write_figure(path: Path, runs: dict[str, list[dict[str, Any]]], labels: dict[str, str], title: str) -> None:
    """``runs``: mode -> that mode's runs (one per seed). Each mode's wall-clock axis ends at
    its shortest run (the median needs every seed); the samples axis at its fewest samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(ROWS), 2, figsize=(11, 10), sharey="row")
    for row, (split, relative, y_label) in enumerate(ROWS):
        for column, (x, x_label) in enumerate((("wall_time", "wall-clock seconds (after compilation)"),
                                               ("samples", "samples trained on"))):
            ax = axes[row][column]
            for mode, mode_runs in runs.items():
                if x == "wall_time":
                    end = min(end_wall(run) for run in mode_runs)
                else:
                    end = min(run[split][-1]["samples"] for run in mode_runs)
                grid = [end * i / (POINTS - 1) for i in range(POINTS)]
                median, low, high = _band(mode_runs, split, x, grid, relative)
                ax.fill_between(grid, low, high, color=COLOURS[mode], alpha=0.18, linewidth=0)
                ax.plot(grid, median, color=COLOURS[mode], linewidth=2,
                        label=f"{labels[mode]} (median of {len(mode_runs)} seeds; band: min-max)")
            ax.set_xlabel(x_label)
            ax.set_ylabel(y_label)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower right")
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format=path.suffix.lstrip(".") or "svg")
    plt.close(figure)
