"""Identification measured per turn: Hits@1 with 95% confidence intervals, as a table and a plot."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import torch

from personagpt.auth.interview import Episode
from personagpt.data.dialogues import persona_fact
from personagpt.errors import SettingsError
from personagpt.plots import line_plot


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound at 0 and 1, unlike the normal approximation)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def hits_by_turn(episodes: Sequence[Episode], identifier: str) -> list[dict]:
    """Per turn: Hits@1 (the true persona ranked first, ties counted as misses), its interval, mean rank."""
    ranks = [e.ranks(identifier) for e in episodes]
    turns = min(len(r) for r in ranks) if ranks else 0
    rows = []
    for t in range(turns):
        hits = sum(r[t] == 0 for r in ranks)
        low, high = wilson(hits, len(ranks))
        rows.append({"turn": t + 1, "hits1": hits / len(ranks), "low": low, "high": high,
                     "mean_rank": sum(r[t] for r in ranks) / len(ranks)})
    return rows


def paired_difference(better: Sequence[Episode], baseline: Sequence[Episode], identifier: str,
                      resamples: int = 4000, seed: int = 0) -> list[dict]:
    """Per turn: Hits@1 of ``better`` minus ``baseline`` (points), with a 95% paired-bootstrap interval. Both
    interviewed the same personas against the same distractors (``auth eval`` pairs them by index), so
    resampling the pairs removes the persona-to-persona spread that separate Wilson intervals carry twice."""
    if len(better) != len(baseline) or not better:
        raise ValueError("paired_difference needs two equally long, non-empty lists of interviews")
    a = torch.tensor([[r == 0 for r in e.ranks(identifier)] for e in better], dtype=torch.float)
    b = torch.tensor([[r == 0 for r in e.ranks(identifier)] for e in baseline], dtype=torch.float)
    turns = min(a.shape[1], b.shape[1])
    gap = (a[:, :turns] - b[:, :turns]) * 100
    rows = torch.randint(len(gap), (resamples, len(gap)), generator=torch.Generator().manual_seed(seed))
    means = gap[rows].mean(1)  # [resamples, turns]
    low, high = means.quantile(0.025, dim=0), means.quantile(0.975, dim=0)
    return [{"turn": t + 1, "points": float(gap[:, t].mean()), "low": float(low[t]), "high": float(high[t])}
            for t in range(turns)]


def paired_with(played: dict[str, Sequence[Episode]], baseline: str) -> dict[str, list[dict]]:
    """{"policy - baseline, identifier": :func:`paired_difference` per turn} for every other policy, over the
    interviews both scored with that identifier (e.g. the likelihood identifier ranks only the first N)."""
    if baseline not in played:
        return {}
    out = {}
    for name, episodes in played.items():
        if name == baseline:
            continue
        for ident in dict.fromkeys(i for e in episodes for i in e.scores):
            pairs = [(a, b) for a, b in zip(episodes, played[baseline]) if a.scores.get(ident) and b.scores.get(ident)]
            if pairs:
                out[f"{name} - {baseline}, {ident}"] = paired_difference(*zip(*pairs), ident)
    return out


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


# ---- verification: is the partner who they claim to be? -------------------------------------------------------------

def claims(episodes: Sequence[Episode], identifier: str, turn: int, seed: int = 0) -> tuple[list[float], list[bool]]:
    """Half the episodes claim their true persona, half a wrong one (a random distractor of the same candidate
    set); the score of a claim is its probability among the K candidates after ``turn`` exchanges."""
    rng = random.Random(seed)
    scores, genuine = [], []
    for i, e in enumerate(episodes):
        true_claim = i % 2 == 0
        claim = e.truth if true_claim else rng.choice([c for c in range(len(e.candidates)) if c != e.truth])
        scores.append(e.probabilities(identifier, of=claim)[turn - 1])
        genuine.append(true_claim)
    return scores, genuine


def roc_auc(scores: Sequence[float], genuine: Sequence[bool]) -> float:
    """Probability that a genuine claim outscores a false one (ties: half), i.e. the area under the ROC curve."""
    pos = [s for s, g in zip(scores, genuine) if g]
    neg = [s for s, g in zip(scores, genuine) if not g]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def threshold_for(scores: Sequence[float], genuine: Sequence[bool], false_accept: float = 0.05) -> float:
    """The lowest threshold (accept when score >= it) whose false-accept rate on these claims is at most
    ``false_accept``."""
    negatives = sorted((s for s, g in zip(scores, genuine) if not g), reverse=True)
    allowed = int(false_accept * len(negatives))  # false claims that may score at or above the threshold
    if allowed >= len(negatives):
        return 0.0
    return math.nextafter(negatives[allowed], math.inf)


def error_rates(scores: Sequence[float], genuine: Sequence[bool], threshold: float) -> dict[str, float]:
    pos = [s for s, g in zip(scores, genuine) if g]
    neg = [s for s, g in zip(scores, genuine) if not g]
    return {"false_accept": sum(s >= threshold for s in neg) / max(1, len(neg)),
            "false_reject": sum(s < threshold for s in pos) / max(1, len(pos))}


def report(results: dict, paired: dict, candidates: int, interviews: dict[str, int]) -> list[str]:
    """``auth eval``'s printed report: per identifier a Hits@1 table, the paired differences with random, and
    verification. ``interviews``: how many interviews each identifier scored per policy."""
    lines = []
    for ident in dict.fromkeys(i for r in results.values() for i in r["by_turn"]):
        table = {name: r["by_turn"][ident] for name, r in results.items() if ident in r["by_turn"]}
        lines += [f"\n{ident} identifier: Hits@1 of {candidates} (%) after each turn, {interviews.get(ident, 0)} "
                  "interviews per policy, 95% intervals:", markdown_table(table)]
    if paired:
        lines.append("\npaired with random (the same personas and distractors): Hits@1 difference in points "
                     "[95% paired bootstrap]")
        for key, rows in paired.items():
            lines.append(f"| {key} | " + " | ".join(f"turn {r['turn']}: {r['points']:+.1f} [{r['low']:+.1f}, "
                                                    f"{r['high']:+.1f}]" for r in rows) + " |")
    lines += ["\nverification (half true claims, half false): ROC AUC; FAR / FRR at the calibrated threshold",
              "| policy | identifier@turn | AUC | FAR | FRR |\n|---|---|---:|---:|---:|"]
    for name, r in results.items():
        for key, v in r["verification"].items():
            rates = (f"{100 * v['false_accept']:.1f}% | {100 * v['false_reject']:.1f}%" if "false_accept" in v
                     else "- | -")
            lines.append(f"| {name} | {key} | {v['auc']:.3f} | {rates} |")
    return lines


def ranking_lines(probabilities, people: Sequence[Sequence[str]], truth: Sequence[str], mark: str,
                  top: int = 3) -> list[str]:
    """The ``top`` likeliest candidates with their probabilities, the true (or claimed) one marked."""
    out = []
    for rank, index in enumerate(probabilities.argsort(descending=True)[:top].tolist(), 1):
        marked = f" ({mark})" if people[index] is truth else ""
        out.append(f"  {rank}. {100 * float(probabilities[index]):5.1f}%  {' '.join(people[index])}{marked}")
    return out


def verdict(probabilities, people: list[list[str]], truth: list[str], claimed: bool, answered: int,
            calibrated: dict, candidates: int) -> str:
    """An interview's last words: where the true (or claimed) persona ranks and, for a claim, ACCEPT or REJECT
    with the probability against the calibrated threshold."""
    if not answered:
        return "\nNo answers, so no ranking and no verdict."
    p = float(probabilities[people.index(truth)])
    rank = 1 + int((probabilities > probabilities[people.index(truth)]).sum())
    who = "the claimed persona" if claimed else "your persona"
    lines = [f"\nFinal ranking after {answered} answer{'s' * (answered != 1)}: {who} is {rank} of {len(people)} "
             f"with probability {100 * p:.1f}%."]
    if claimed:
        threshold = calibrated.get(str(answered))
        if threshold is None:
            lines.append(f"No verdict: no accept threshold is calibrated for K = {candidates} after {answered} "
                         "answers (auth train calibrates them).")
        else:
            accept = p >= threshold
            margin = p / threshold if accept else threshold / max(p, 1e-9)
            lines.append(f"{'ACCEPT' if accept else 'REJECT'}: {100 * p:.1f}% against an accept threshold of "
                         f"{100 * threshold:.1f}% (calibrated on held-out self-play), {margin:.1f}x "
                         f"{'above' if accept else 'below'} it.")
    return "\n".join(lines)


def read_claim(path) -> list[str]:
    """A persona as JSON: a list of fact strings, or an object with such a list under "persona"."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"{path}: no such claim file")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SettingsError(f"{path}: not valid JSON ({e})") from None
    facts = value.get("persona") if isinstance(value, dict) else value
    if not isinstance(facts, list) or not facts or not all(isinstance(f, str) and f.strip() for f in facts):
        raise SettingsError(f'{path}: a claim is a JSON list of persona facts (strings), or {{"persona": [...]}}')
    return [persona_fact(f) for f in facts]
