"""Persona facts as text: the yes/no question that checks a fact, the fact negated, and the polarity of an answer.

Persona-Chat facts are short first-person sentences ("i have a dog.", "my favorite color is blue.", "i do not
drink."). Small rules cover most of them; a fact they cannot turn into a question or a negation gives ``None``,
and callers skip it. Uses: the consistency scorer contrasts a reply under the persona and under its negation
(:mod:`personagpt.generate.consistency`); probes and the persona-authentication planner ask the questions.
"""

from __future__ import annotations

import re

# first-person words of the fact's remainder, said to the person instead
_SECOND_PERSON = {"i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself", "am": "are",
                  "i'm": "you're", "i've": "you've", "i'll": "you'll", "i'd": "you'd", "we": "you", "our": "your"}
_EXPAND = [(r"\bi'm\b", "i am"), (r"\bi've\b", "i have"), (r"\bdon't\b", "do not"), (r"\bdoesn't\b", "does not"),
           (r"\bcan't\b", "can not"), (r"\bcannot\b", "can not"), (r"\bdidn't\b", "did not"), (r"\bwon't\b", "will not"),
           (r"\bisn't\b", "is not"), (r"\baren't\b", "are not"), (r"\bwasn't\b", "was not"), (r"\bi'll\b", "i will"),
           (r"\bfavourite\b", "favorite")]
_BE = {"am": "are", "is": "is", "was": "were", "are": "are", "were": "were"}
_MODALS = {"can", "will", "would", "could", "should", "have", "had", "has"}
_IRREGULAR_PAST = {"went": "go", "grew": "grow", "got": "get", "drove": "drive", "lost": "lose", "had": "have",
                   "made": "make", "met": "meet", "won": "win", "left": "leave", "spent": "spend", "broke": "break",
                   "took": "take", "became": "become", "began": "begin", "ran": "run", "wrote": "write", "saw": "see",
                   "fell": "fall", "found": "find", "bought": "buy", "taught": "teach", "sold": "sell", "swam": "swim"}
_NOT_PAST = {"need", "feed", "bleed", "breed", "speed", "seed", "weed", "heed", "proceed", "succeed"}


def normalize(fact: str) -> str:
    """Lower-cased, contractions expanded, final punctuation dropped."""
    text = fact.strip().lower().rstrip(" .!?")
    for pattern, replacement in _EXPAND:
        text = re.sub(pattern, replacement, text)
    return re.sub(r"\s+", " ", text)


def _to_you(words: list[str]) -> str:
    return " ".join(_SECOND_PERSON.get(w, w) for w in words)


def _base_form(verb: str) -> str | None:
    """The infinitive of a past-tense verb, or None if ``verb`` does not look past tense."""
    if verb in _IRREGULAR_PAST:
        return _IRREGULAR_PAST[verb]
    if not verb.endswith("ed") or verb in _NOT_PAST or len(verb) <= 3:
        return None
    if verb.endswith("ied"):
        return verb[:-3] + "y"  # studied -> study
    stem = verb[:-2]
    if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "ls":
        return stem[:-1]  # stopped -> stop
    if re.search(r"([^aeiou][aeiou][vcz]|[aeiou][cgsvz]|[^aeiou]at|ur|ar|iv|ov|us|os)$", stem):
        return stem + "e"  # moved -> move, lived -> live, used -> use, raced -> race
    return stem


def question(fact: str) -> tuple[str, bool] | None:
    """The yes/no question that checks ``fact`` and the answer the fact implies (True: yes), e.g.
    "i have a dog." -> ("do you have a dog ?", True); "i do not drink." -> ("do you drink ?", False)."""
    words = normalize(fact).split()
    if len(words) < 2:
        return None
    if words[0] == "my" and len(words) >= 3:  # my favorite color is blue -> is your favorite color blue ?
        for i, w in enumerate(words[1:], 1):
            if w in _BE:
                rest, answer = words[i + 1:], True
                if rest[:1] == ["not"]:
                    rest, answer = rest[1:], False
                return f"{_BE[w] if w != 'am' else 'are'} your {_to_you(words[1:i])} {_to_you(rest)} ?".replace("  ", " "), answer
        return None
    if words[0] != "i":
        return None
    verb, rest = words[1], words[2:]
    answer = True
    if verb in ("do", "did") and rest[:1] == ["not"]:
        verb, rest, answer = (verb, rest[1:], False)
        if not rest:
            return None
        return f"{verb} you {_to_you(rest)} ?", answer
    if verb == "never" and rest:
        base = _base_form(rest[0])
        lead = "did" if base else "do"
        return f"{lead} you ever {base or rest[0]} {_to_you(rest[1:])} ?".replace("  ", " ").replace(" ?", " ?"), False
    if verb in _BE:
        if rest[:1] == ["not"]:
            rest, answer = rest[1:], False
        if not rest:
            return None
        return f"{_BE[verb]} you {_to_you(rest)} ?", answer
    if verb in _MODALS:
        if rest[:1] == ["not"]:
            rest, answer = rest[1:], False
        if not rest:
            return None
        if verb in ("have", "has") and rest[0] not in ("been", "never") and not rest[0].endswith(("ed", "en")):
            return f"do you have {_to_you(rest)} ?", answer  # i have a dog (possession)
        return f"{verb} you {_to_you(rest)} ?", answer
    base = _base_form(verb)
    if base is not None:
        return f"did you {base} {_to_you(rest)} ?".replace("  ", " "), answer
    if verb.endswith("s") and not verb.endswith("ss"):
        return None  # "i thinks" and the like: not a plain present tense
    return f"do you {verb} {_to_you(rest)} ?".replace("  ", " "), answer


def negate(fact: str) -> str | None:
    """``fact`` negated ("i have a dog." -> "i do not have a dog."; "i do not drink." -> "i drink."), or None."""
    words = normalize(fact).split()
    if len(words) < 2:
        return None
    for i, w in enumerate(words):
        if w == "not" and i > 0 and words[i - 1] in ("do", "did", "does") and i >= 2:
            return " ".join(words[:i - 1] + words[i + 1:]) + "."  # i do not drink -> i drink
        if w == "not" and i > 0:
            return " ".join(words[:i] + words[i + 1:]) + "."  # i am not shy -> i am shy
        if w == "never":
            return " ".join(words[:i] + ["often"] + words[i + 1:]) + "."
    if words[0] == "my":
        for i, w in enumerate(words[1:], 1):
            if w in _BE:
                return " ".join(words[:i + 1] + ["not"] + words[i + 1:]) + "."
        return None
    if words[0] != "i":
        return None
    verb = words[1]
    if verb in _BE or verb in _MODALS and verb not in ("have", "has", "had"):
        return " ".join(words[:2] + ["not"] + words[2:]) + "."
    if verb in ("have", "has") and len(words) > 2 and (words[2] == "been" or words[2].endswith(("ed", "en"))):
        return " ".join(words[:2] + ["not"] + words[2:]) + "."
    base = _base_form(verb)
    if base is not None:
        return " ".join(["i", "did", "not", base] + words[2:]) + "."
    return " ".join(["i", "do", "not"] + words[1:]) + "."


_YES = re.compile(r"^(yes|yeah|yep|yup|sure|of course|absolutely|definitely|i do\b(?! not)|i am\b(?! not)|i have\b(?! not| never)|i did\b(?! not)|i can\b(?! not)|i love|i like)")
_NO = re.compile(r"^(no\b|nope|nah|not\b|never|i do not|i don't|i am not|i'm not|i have not|i have never|i haven't|i did not|i didn't|i can not|i cannot|i can't|i never)")


def answer_polarity(reply: str) -> bool | None:
    """How a reply answers a yes/no question: True (yes), False (no), None (neither, by its opening words)."""
    text = reply.strip().lower().lstrip("!,. ")
    if _NO.match(text):
        return False
    if _YES.match(text):
        return True
    return None
