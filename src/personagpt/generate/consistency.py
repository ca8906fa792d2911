"""Persona consistency checks for the reranker: does a reply deny a persona fact it was asked about?

Measured on the hand-labelled set (``bench/consistency_eval.py``; bench/README.md, "Persona consistency"): the
language model's own contrast (a reply's likelihood under the persona with its facts negated against under the
persona) finds few of the contradictions the model itself writes with the true persona, which it finds likely by
construction. What catches them is reading the exchange: the user asked a yes/no question about one of the
persona's facts (matched by all-MiniLM-L6-v2, or by shared words without it), the fact implies the answer
(:func:`personagpt.personas.facts.question`), and the reply's opening words give another (:func:`~personagpt.personas.facts.answer_polarity`).
A question about a thing of the same kind as a fact that the persona does not have ("do you have cats ?" with "i have
two dogs.", :mod:`personagpt.personas.kinds`) implies no. The same reading steers decoding: :func:`opening_ban`
lists the first tokens that would answer against the persona, and a turn bans them
(``SamplingConfig.consistent_answers``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from personagpt.personas.facts import answer_polarity, normalize, question
from personagpt.personas.kinds import match_kind

_YES_NO = re.compile(r"^(do|does|did|are|is|was|were|have|has|had|can|could|will|would|am)\b")
_STOP = {"i", "you", "a", "an", "the", "do", "does", "did", "are", "is", "am", "was", "were", "have", "has", "to",
         "my", "your", "of", "in", "on", "and", "any", "not", "it", "at", "for", "with", "be", "?"}
MATCH_THRESHOLD = 0.6  # cosine of question and fact; set on hand-made pairs before the labelled set existed


@dataclass(frozen=True)
class AskedFact:
    fact: str
    expected: bool  # the answer the fact implies: True (yes) or False (no)
    similarity: float
    kind: str | None = None  # set when matched by kind (pet, job, ...): the question names the fact's thing or another


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
        by_kind = match_kind(asked, facts)
        if by_kind is not None:  # the persona's own thing (the fact's answer), or another of its kind (no)
            expected = expected_answer(by_kind.fact) if by_kind.own else False
            if expected is not None:
                return AskedFact(by_kind.fact, expected, 1.0, by_kind.kind)
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


AFFIRMING = ("yes", "yeah", "yep", "yup", "yea", "ya", "sure", "absolutely", "definitely", "certainly", "indeed",
             "correct", "totally", "of")  # "of" opens "of course"
AFFIRMING_PHRASES = ("i do", "i am", "i did", "i have", "i can", "i will")  # affirm when the turn or sentence ends
_COMMON_STARTS = {"in", "to", "so", "an", "it", "is", "as", "at", "on", "de", "co", "ab", "ce", "tot", "corr", "ind",
                  "def", "cer", "abs", "ne", "na", "nev", "su"}  # word starts too common to ban as openings
DENYING = ("no", "nope", "nah", "not", "never", "nay")
DENYING_PHRASES = ("i do not", "i don't", "i am not", "i'm not", "i have not", "i haven't", "i have never", "i did not",
                   "i didn't", "i never", "i can not", "i can't", "i cannot")


def _forms(text: str) -> set[str]:
    """``text`` as it may open a reply: lower or capitalised, after a space or not."""
    return {text, " " + text, text.capitalize(), " " + text.capitalize()}


def spellings(tokenizer, text: str, limit: int = 4) -> list[tuple[int, ...]]:
    """Every way to write ``text`` in at most ``limit`` tokens of the vocabulary: the model does not always use the
    tokenizer's own split (it writes "yeah" as "ye" + "ah" as often as in one token)."""
    single: dict[str, int | None] = {}

    def token(piece: str) -> int | None:
        if piece not in single:
            ids = tokenizer.encode(piece, add_special_tokens=False)
            single[piece] = ids[0] if len(ids) == 1 and tokenizer.decode(ids) == piece else None
        return single[piece]

    def split(start: int, left: int) -> list[tuple[int, ...]]:
        if start == len(text):
            return [()]
        if left == 0:
            return []
        out = []
        for end in range(start + 1, len(text) + 1):
            first = token(text[start:end])
            if first is not None:
                out += [(first, *rest) for rest in split(end, left - 1)]
        return out

    return split(0, limit)


@functools.lru_cache(maxsize=16)
def opening_ban(tokenizer, expected: bool, eos_id: int) -> tuple[tuple[int, ...], ...]:
    """Token sequences that would open an answer against ``expected`` (the true answer: True for yes): a reply
    may not begin with any of them (its last token is banned once the reply holds the rest). When the answer is no:
    "yes", " Yeah", ... in every spelling the vocabulary allows, whose first piece is banned as an opening too unless
    it starts many other words ("ye" of "ye" + "ah", not "in" of "in" + "deed"), and "i do ." / "i am but" / "i do" +
    end of turn; when it is yes: "no", "i do not", "i'm not", ... Every casing and leading space is listed."""
    banned: set[tuple[int, ...]] = set()
    if expected:
        words, phrases = DENYING, [p for text in DENYING_PHRASES for p in _forms(text)]
        endings: list[list[int]] = [[]]
    else:
        words, phrases = AFFIRMING, [p for text in AFFIRMING_PHRASES for p in _forms(text)]
        endings = [tokenizer.encode(e, add_special_tokens=False) for e in (" ,", " .", " !", ",", ".", "!", " but",
                                                                            " and", " too")] + [[eos_id]]
    for word in words:
        for form in _forms(word):
            for spelled in spellings(tokenizer, form):
                banned.add(spelled)
                start = tokenizer.decode(spelled[:1]).strip().lower()
                if len(start) >= 2 and start not in _COMMON_STARTS:  # "ye" of "ye" + "ah": the opening itself
                    banned.add(spelled[:1])
    for phrase in phrases:
        encoded = tokenizer.encode(phrase, add_special_tokens=False)
        banned.update(tuple(encoded + ending) for ending in endings if len(ending) <= 1)
    return tuple(sorted(banned))


def yes_no_openers(tokenizer, expected: bool) -> tuple[int, ...]:
    """The single tokens that open an answer with ``expected``'s word: "yes", " Yeah", ... or "no", " Nope", ..."""
    words = ("yes", "yeah") if expected else ("no", "nope", "nah")
    ids = {tuple(tokenizer.encode(form, add_special_tokens=False)) for word in words for form in _forms(word)}
    return tuple(sorted(i[0] for i in ids if len(i) == 1))
