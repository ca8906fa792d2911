"""Identification measured per turn: Hits@1 with 95% confidence intervals, as a table and a plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from personagpt.auth.env import Episode
from personagpt.plots import line_plot


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound at 0 and 1, unlike the normal approximation)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def hits_by_turn(episodes: Sequence[Episode]) -> list[dict]:
    """Per turn: Hits@1 (the true persona ranked first, ties counted as misses), its interval, mean rank."""
    turns = min(len(e.ranks) for e in episodes) if episodes else 0
    rows = []
    for t in range(turns):
        hits = sum(e.ranks[t] == 0 for e in episodes)
        low, high = wilson(hits, len(episodes))
        rows.append({"turn": t + 1, "hits1": hits / len(episodes), "low": low, "high": high,
                     "mean_rank": sum(e.ranks[t] for e in episodes) / len(episodes)})
    return rows


def turns_to(rows: Sequence[dict], level: float = 0.5) -> int | None:
    """The first turn whose Hits@1 reaches ``level``, or None."""
    return next((r["turn"] for r in rows if r["hits1"] >= level), None)


def markdown_table(results: dict[str, list[dict]]) -> str:
    """One row per policy: Hits@1 (%) [95% interval] after each turn, and the turns needed to reach 50%."""
    turns = max(len(rows) for rows in results.values())
    lines = ["| policy | " + " | ".join(f"turn {t}" for t in range(1, turns + 1)) + " | turns to 50% |",
             "|---|" + "---:|" * (turns + 1)]
    for name, rows in results.items():
        cells = [f"{100 * r['hits1']:.1f} [{100 * r['low']:.0f}-{100 * r['high']:.0f}]" for r in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {turns_to(rows) or '-'} |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], path: str | Path, chance: float) -> Path:
    """Hits@1 against turn for every policy, with its 95% interval as a band."""

    def draw(ax) -> None:
        for name, rows in results.items():
            turns = [r["turn"] for r in rows]
            ax.plot(turns, [100 * r["hits1"] for r in rows], marker="o", label=name)
            ax.fill_between(turns, [100 * r["low"] for r in rows], [100 * r["high"] for r in rows], alpha=0.2)
        ax.axhline(100 * chance, color="grey", linestyle=":", label="chance")

    return line_plot(path, "turn", "Hits@1 (%)", draw)
