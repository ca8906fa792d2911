"""Persona consistency checks for the reranker: does a reply deny a persona fact it was asked about?

Measured on the hand-labelled set (``bench/consistency_eval.py``; bench/README.md, "Persona consistency"): the
language model's own contrast (a reply's likelihood under the persona with its facts negated against under the
persona) finds few of the contradictions the model itself writes with the true persona, which it finds likely by
construction. What catches them is reading the exchange: the user asked a yes/no question about one of the
persona's facts (matched by all-MiniLM-L6-v2, or by shared words without it), the fact implies the answer
(:func:`personagpt.personas.facts.question`), and the reply's opening words give another (:func:`~personagpt.personas.facts.answer_polarity`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from personagpt.personas.facts import answer_polarity, normalize, question

_YES_NO = re.compile(r"^(do|does|did|are|is|was|were|have|has|had|can|could|will|would|am)\b")
_STOP = {"i", "you", "a", "an", "the", "do", "does", "did", "are", "is", "am", "was", "were", "have", "has", "to",
         "my", "your", "of", "in", "on", "and", "any", "not", "it", "at", "for", "with", "be", "?"}
MATCH_THRESHOLD = 0.6  # cosine of question and fact; set on hand-made pairs before the labelled set existed


@dataclass(frozen=True)
class AskedFact:
    fact: str
    expected: bool  # the answer the fact implies: True (yes) or False (no)
    similarity: float


def last_yes_no_question(turn: str) -> str | None:
    """The last yes/no question of a turn ("... do you have a dog ?"), if it ends with one."""
    parts = [p.strip() for p in re.findall(r"[^.!?]+[.!?]*", turn.lower()) if p.strip(" .!?")]
    if not parts or not parts[-1].endswith("?"):
        return None
    words = parts[-1].lstrip(", ").split()
    while words and words[0] in ("so", "and", "but", "well", "oh", "ok", "okay", "hi", "hey", "also", ","):
        words = words[1:]
    text = " ".join(words)
    return text if _YES_NO.match(text) else None


def expected_answer(fact: str) -> bool | None:
    """The answer ``fact`` implies to the yes/no question about it (True: yes), or None."""
    asked = question(fact)
    if asked is not None:
        return asked[1]
    return not re.search(r"\b(not|never|no)\b", normalize(fact))


class ConsistencyChecker:
    """Finds the persona fact a yes/no question is about and says whether a reply denies it.

    ``embedder`` (a :class:`~personagpt.control.goals.SentenceEmbedder`) matches questions to facts by meaning; without
    it, a fact matches when it shares at least two content words with the question (fewer matches, fewer errors).
    """

    def __init__(self, embedder=None, threshold: float = MATCH_THRESHOLD) -> None:
        self.embedder, self.threshold = embedder, threshold
        self._facts: dict[tuple[str, ...], object] = {}

    def asked_fact(self, turn: str, facts: Sequence[str]) -> AskedFact | None:
        """The fact of ``facts`` that ``turn``'s closing yes/no question asks about, or None."""
        asked = last_yes_no_question(turn)
        if asked is None or not facts:
            return None
        if self.embedder is not None:
            key = tuple(facts)
            if key not in self._facts:
                self._facts = {key: self.embedder.encode(list(facts))}
            similarity = (self._facts[key] @ self.embedder.encode([asked])[0]).tolist()
        else:
            words = set(asked.split()) - _STOP
            similarity = [len(words & (set(normalize(f).split()) - _STOP)) / 2 for f in facts]
        best = max(range(len(facts)), key=lambda i: similarity[i])
        expected = expected_answer(facts[best])
        if similarity[best] < self.threshold or expected is None:
            return None
        return AskedFact(facts[best], expected, float(similarity[best]))

    def denies(self, reply: str, asked: AskedFact | None) -> bool:
        """Whether ``reply`` answers the asked fact's question against the fact."""
        if asked is None:
            return False
        polarity = answer_polarity(reply)
        return polarity is not None and polarity != asked.expected
