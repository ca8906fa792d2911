"""Line plots written as PNG files (loss curves, Hits@1 by turn), with no display needed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def line_plot(path: str | Path, xlabel: str, ylabel: str, draw: Callable) -> Path:
    """A 7x4 inch figure; ``draw(ax)`` adds the lines; axis labels, grid and legend are added, then it is saved."""
    import matplotlib  # start-up: ~0.5 s to import, and only a plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    draw(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
