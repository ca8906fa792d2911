"""Same-kind questions: the bot asked about a thing of the same kind as one of its facts that it does not have.

"do you have a cat ?" to a persona with "i have two dogs.", "are you a doctor ?" to a nurse: the honest answer
denies or states the persona's own thing, never yes. The set is built from validation personas (facts of a known
kind, :mod:`personagpt.personas.kinds`) and word lists of other things of each kind, in several phrasings, some of
which the kind rules do not parse (so the set also measures what the runtime check misses). Labels hold by
construction: the persona has no such thing. :func:`same_kind_verdict` reads a reply.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from personagpt.data.dialogues import Dialogue
from personagpt.personas.facts import answer_polarity
from personagpt.personas.kinds import fact_kinds

OTHER_THINGS = {
    "pet": ["dog", "cat", "fish", "bird", "parrot", "hamster", "snake", "horse", "rabbit", "turtle", "lizard"],
    "job": ["nurse", "doctor", "teacher", "lawyer", "chef", "engineer", "mechanic", "pilot", "farmer", "writer",
            "musician", "student", "cashier", "plumber", "librarian", "accountant", "firefighter", "dentist"],
    "place": ["texas", "california", "new york", "florida", "canada", "london", "paris", "alaska", "ohio", "chicago",
              "japan", "mexico", "the city", "a small town"],
    "instrument": ["piano", "guitar", "violin", "drums", "flute", "cello", "trumpet", "saxophone"],
    "food": ["meat", "steak", "bacon", "pizza", "sushi", "tacos", "burgers", "pasta"],
    "relationship": ["married", "single", "divorced", "engaged"],
}
PHRASINGS = {
    "pet": ["do you have a {} ?", "do you own a {} ?", "have you got a {} ?", "is your pet a {} ?"],
    "job": ["are you a {} ?", "do you work as a {} ?", "is your job {} ?"],
    "place": ["do you live in {} ?", "are you from {} ?"],
    "instrument": ["do you play the {} ?", "can you play the {} ?"],
    "food": ["do you eat {} ?", "is your favorite food {} ?", "do you like eating {} ?"],
    "relationship": ["are you {} ?"],
    "family": ["do you have {} {} ?"],
    "age": ["are you {} years old ?", "are you {} ?"],
}
COUNT_WORDS = ["", "one", "two", "three", "four", "five", "six"]
MEMBER_WORDS = {"child": "kids", "son": "sons", "daughter": "daughters", "sister": "sisters", "brother": "brothers",
                "sibling": "siblings", "grandchild": "grandkids", "twin": "twins"}


@dataclass(frozen=True)
class SameKindProbe:
    index: int  # the dialogue's index
    turns: list[str]  # the gold history up to a random point, then the question
    persona: list[str]  # the bot's facts
    kind: str
    fact: str  # the persona's fact of that kind
    own_words: tuple[str, ...]  # words that name the persona's own thing (a reply naming it answers by the fact)
    asked: str  # the other thing asked about


def _own_words(kind: str, things) -> tuple[str, ...]:
    if kind == "family":
        return tuple(w for member, _ in things for w in (member, MEMBER_WORDS.get(member, member)))
    return tuple(str(t) for t in things)


def _question(kind: str, things, rng: random.Random, known: str) -> tuple[str, str] | None:
    if kind == "family":
        member, count = sorted(things, key=str)[0]
        if count is None or count > 6:
            return None
        other = rng.choice([n for n in range(2, 7) if n != count])
        return PHRASINGS[kind][0].format(COUNT_WORDS[other], MEMBER_WORDS.get(member, member + "s")), str(other)
    if kind == "age":
        age = next(iter(things))
        other = rng.choice([a for a in range(13, 80) if abs(a - age) >= 5])
        return rng.choice(PHRASINGS[kind]).format(other), str(other)
    if kind == "food" and things & {"vegetarian", "vegan"}:
        choices = ["meat", "steak", "bacon", "burgers"]
    else:
        choices = OTHER_THINGS[kind]
    choices = [c for c in choices if not any(re.search(rf"\b{re.escape(w)}s?\b", known) for w in c.split()
                                             if w not in ("the", "a", "small", "new"))
               and c not in things]
    if kind == "relationship":  # a status that excludes the persona's
        choices = [c for c in choices if not ({c} | set(things)) <= {"engaged", "dating", "single"}]
    if not choices:
        return None
    thing = rng.choice(choices)
    phrasing = rng.choice(PHRASINGS[kind])
    if " a {}" in phrasing and thing[0] in "aeiou":
        phrasing = phrasing.replace(" a {}", " an {}")
    return phrasing.format(thing), thing


def same_kind_probes(dialogues: Sequence[Dialogue], count: int, seed: int = 2) -> list[SameKindProbe]:
    """Up to ``count`` probes: for each dialogue in order whose bot (p2) has a fact of a known kind, a question
    about another thing of one such kind (kind, thing and phrasing drawn with ``seed``), asked after the gold
    history up to a random even turn."""
    rng = random.Random(seed)
    probes = []
    for i, d in enumerate(dialogues):
        if len(probes) >= count:
            break
        facts = list(d.p2_facts)
        known = " ".join(f.lower() for f in facts)
        kinds = [(kind, fact, things) for fact in facts for kind, things in fact_kinds(fact).items()
                 if not (kind == "pet" and things <= {"pet"})]
        if not kinds:
            continue
        kind, fact, things = rng.choice(kinds)
        made = _question(kind, things, rng, known)
        if made is None:
            continue
        cut = rng.randrange(0, min(len(d.turns), 6) // 2 + 1) * 2
        probes.append(SameKindProbe(i, list(d.turns[:cut]) + [made[0]], facts, kind, fact,
                                    _own_words(kind, things), made[1]))
    return probes


_EXPLICIT_YES = re.compile(r"^(yes|yeah|yep|yup|yea|sure|of course|absolutely|definitely|i (do|am|did|have|can)\s*([.,!]|$))")


def same_kind_verdict(reply: str, probe: SameKindProbe) -> str:
    """"consistent" (denies, or names the persona's own thing without saying yes), "against" (says yes, or
    affirms the other thing: "i love bacon !" to a vegan) or "neither" (does not answer: "i am sorry to hear that")."""
    text = reply.strip().lower().lstrip("!,. ")

    def names(words) -> bool:
        return any(re.search(rf"\b{re.escape(w)}(s|es)?\b", text) for w in words)

    polarity = answer_polarity(text)
    if polarity is False:
        return "consistent"
    if _EXPLICIT_YES.match(text):
        return "against"
    names_own = names(probe.own_words)
    if polarity is True and names(probe.asked.split()[-1:]) and not names_own:
        return "against"
    return "consistent" if names_own else "neither"
