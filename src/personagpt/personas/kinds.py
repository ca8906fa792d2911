"""Kinds of persona facts (pet, job, place, instrument, food, family, age, relationship) and the thing each names.

Why: asked "do you have cats ?" with "i have two dogs." in its persona, the model tends to say yes: it matches the
kind (a pet) and agrees. Knowing that the question names a thing of the same kind as one of the persona's facts,
but not the persona's own thing, says the honest answer is no (or the persona's own thing), never yes. Small word
lists and patterns; a text they do not cover has no kind and callers fall back to other checks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from personagpt.personas.facts import normalize

PETS = {"dog": "dog", "puppy": "dog", "pup": "dog", "cat": "cat", "kitten": "cat", "kitty": "cat", "fish": "fish",
        "goldfish": "fish", "bird": "bird", "parrot": "parrot", "hamster": "hamster", "snake": "snake",
        "horse": "horse", "pony": "horse", "rabbit": "rabbit", "bunny": "rabbit", "turtle": "turtle",
        "tortoise": "turtle", "lizard": "lizard", "iguana": "lizard", "pig": "pig", "goat": "goat",
        "ferret": "ferret", "gerbil": "gerbil", "mouse": "mouse", "rat": "rat", "frog": "frog", "chicken": "chicken",
        "cow": "cow", "spider": "spider", "guinea": "guinea pig"}
JOBS = {"nurse", "doctor", "teacher", "lawyer", "police", "cop", "firefighter", "fireman", "chef", "cook", "waiter",
        "waitress", "engineer", "accountant", "mechanic", "pilot", "dentist", "farmer", "writer", "author", "artist",
        "painter", "musician", "singer", "dancer", "actor", "actress", "student", "programmer", "developer",
        "cashier", "barista", "plumber", "electrician", "carpenter", "janitor", "custodian", "librarian", "scientist",
        "vet", "veterinarian", "soldier", "secretary", "banker", "realtor", "photographer", "professor", "pharmacist",
        "architect", "designer", "manager", "salesman", "bartender", "baker", "coach", "lifeguard", "surgeon",
        "therapist", "psychologist", "journalist", "reporter", "trucker", "driver", "model", "streamer", "blogger",
        "miner", "fisherman", "butcher", "clerk", "receptionist", "tutor", "judge", "priest", "pastor",
        "principal", "mailman", "hairdresser", "stylist", "tailor", "welder", "zookeeper", "astronaut", "athlete",
        "comedian", "economist", "editor", "gardener", "housekeeper", "paramedic", "sailor", "veteran"}
INSTRUMENTS = {"piano", "guitar", "violin", "drums", "drum", "flute", "cello", "trumpet", "saxophone", "sax", "bass",
               "ukulele", "harp", "clarinet", "banjo", "harmonica", "keyboard", "trombone", "viola", "oboe", "tuba",
               "accordion", "mandolin", "bagpipes"}
FOODS = {"meat", "steak", "bacon", "beef", "pork", "chicken", "burgers", "burger", "cheeseburgers", "hamburgers",
         "pizza", "sushi", "tacos", "pasta", "spaghetti", "salad", "fish", "seafood", "hummus", "papaya", "chocolate",
         "ice cream", "fries", "sandwiches", "soup", "curry", "noodles", "eggs", "cheese", "vegetables", "fruit",
         "mexican", "italian", "chinese", "thai", "indian", "japanese"}
DIETS = {"vegetarian", "vegan", "pescatarian"}
FAMILY = {"sister": "sister", "brother": "brother", "sibling": "sibling", "kid": "child", "child": "child",
          "children": "child", "son": "son", "daughter": "daughter", "grandchild": "grandchild",
          "grandchildren": "grandchild", "twin": "twin"}
GENERIC_FAMILY = {"child": {"son", "daughter", "child", "twin"}, "sibling": {"sister", "brother", "sibling", "twin"}}
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
           "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
           "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
           "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
RELATIONSHIPS = [("engaged", r"\b(engaged|fiance|fiancee|getting married)\b"), ("divorced", r"\b(divorced|divorce)\b"),
                 ("widowed", r"\b(widow|widowed|widower)\b"), ("married", r"\b(married|wife|husband|spouse)\b"),
                 ("dating", r"\b(girlfriend|boyfriend|dating)\b"),
                 ("single", r"\bsingle\b(?! (parent|mom|dad|mother|father))")]
_PLACE_STOP = {"the", "a", "an", "of", "and", "but", "now", "with", "near", "my", "in", "on"}
_GENERIC_PETS = {"pet", "pets", "animal", "animals"}


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    return word[:-1] if word.endswith("s") and not word.endswith("ss") and len(word) > 3 else word


def _number(word: str) -> int | None:
    word = re.sub(r"years?$", "", word)
    return int(word) if word.isdigit() else NUMBERS.get(word)


def fact_kinds(text: str) -> dict[str, frozenset]:
    """The kinds a first-person sentence speaks of, each with the things it names: "i have two dogs." ->
    {"pet": {"dog"}}; "i am a nurse." -> {"job": {"nurse"}}; "i am 24 years old." -> {"age": {24}}."""
    t = normalize(text)
    words = t.split()
    kinds: dict[str, set] = {}
    owned = re.search(r"\b(i have|i own|i got|i adopted|i rescued|i take care of)\b", t)
    pets = {PETS.get(w.removesuffix("'s"), PETS.get(_singular(w.removesuffix("'s")))) for i, w in enumerate(words)
            if (owned and owned.start() < t.find(w)) or {"my", "pet"} & set(words[max(0, i - 2):i])}
    pets.discard(None)
    if pets:
        kinds["pet"] = pets
    elif re.search(r"\b(i have|i own)\b.*\b(pets?|animals?)\b", t):
        kinds["pet"] = {"pet"}  # any pet: a question about one is about this fact
    job = re.search(r"\b(?:i am|i work as|i became|i want to be|my job is|i am working as) (?:\w+ ?, )?(?:an? )?"
                    r"((?:\w+ ){0,3}\w+)", t)  # "i am sam , a friendly nurse": a name first
    if job:
        jobs = {_singular(w) if _singular(w) in JOBS else w for w in job.group(1).split()} & JOBS
        if jobs and not re.search(r"\b(wants? to be|would like to be|dream|married to|engaged to|dating)\b", t):
            kinds["job"] = jobs
    place = re.search(r"\b(?:i live in|i am from|i grew up in|i was born in|i moved to|i live on|i reside in) "
                      r"((?:\w+ ){0,3}\w+)", t)
    if place:
        named = re.split(r"\b(?:but|and|with|where|since|for|because|so|when|now)\b", place.group(1))[0]
        kinds["place"] = set(named.split()) - _PLACE_STOP
    if re.search(r"\bplay", t):
        instruments = {w.rstrip("s") if w.rstrip("s") in INSTRUMENTS else w for w in words} & INSTRUMENTS
        if instruments:
            kinds["instrument"] = {"drums" if w == "drum" else "sax" if w == "saxophone" else w for w in instruments}
    food = set(words) & DIETS
    favorite = re.search(r"\bfavorite food(?:s)? (?:is|are) ((?:\w+ ){0,3}\w+)|(\w+) (?:is|are) my favorite food", t)
    if favorite:
        food |= {w for w in (favorite.group(1) or favorite.group(2)).split() if w not in _PLACE_STOP} - {"food"}
    elif re.search(r"\b(i eat|i love|i like|i enjoy|i do not eat|i hate|i cook)\b", t):
        food |= {w for w in words if w in FOODS} | ({"ice cream"} if "ice cream" in t else set())
    if food:
        kinds["food"] = food
    family = set()
    for i, w in enumerate(words):
        member = FAMILY.get(w, FAMILY.get(_singular(w)))
        if member and re.search(r"\b(i have|my|with|of)\b", t):
            count = _number(words[i - 1]) if i else None
            count = count if count is not None else _number(words[i - 2]) if i > 1 else None
            family.add((member, count))
    if family:
        kinds["family"] = family
    age = re.search(r"\bi am (\w+) ?(?:years?|yrs?|year) ?old\b|\bi am a (\w+) year old\b|\bi am (\d+)\b", t)
    if age:
        number = _number(next(g for g in age.groups() if g))
        if number is not None:
            kinds["age"] = {number}
    for status, pattern in RELATIONSHIPS:
        if re.search(pattern, t) and not re.search(r"\b(parents?|mom|dad|mother|father)\b", t):  # theirs, not mine
            kinds["relationship"] = {status}
            break
    return {k: frozenset(v) for k, v in kinds.items()}


_STATEMENT = [(r"^(?:do|did) you (.+)$", r"i \1"), (r"^are you (.+)$", r"i am \1"),
              (r"^have you (.+)$", r"i have \1"), (r"^is your favorite (\w+) (.+)$", r"my favorite \1 is \2"),
              (r"^is your (.+)$", r"my \1"), (r"^were you (.+)$", r"i was \1"), (r"^can you (.+)$", r"i can \1")]


def statement(question: str) -> str | None:
    """A yes/no question about the person turned into their first-person statement ("do you have cats ?" ->
    "i have cats"; "are you a doctor ?" -> "i am a doctor"), or None."""
    text = re.sub(r"\s*\?+$", "", question.strip().lower())
    for pattern, replacement in _STATEMENT:
        if re.match(pattern, text):
            said = re.sub(pattern, replacement, text)
            return re.sub(r"\byou\b", "me", re.sub(r"\byour\b", "my", said))
    return None


def _same_thing(kind: str, asked, own) -> bool:
    if kind == "family":  # (member, count): "a son" is one of "two kids"; "three kids" is not "two kids"
        (member, count), (other, other_count) = asked, own
        related = other == member or member in GENERIC_FAMILY.get(other, ()) or other in GENERIC_FAMILY.get(member, ())
        return related and (count is None or count < 2 or other_count is None or count == other_count)
    if kind == "pet" and (asked in _GENERIC_PETS or own in _GENERIC_PETS):
        return True
    return asked == own


@dataclass(frozen=True)
class KindMatch:
    """What a question names against the persona: its kind, the persona's fact of that kind, and whether the
    question names the persona's own thing (``own``) or another of the same kind."""

    kind: str
    fact: str
    own: bool


def match_kind(question: str, facts: Sequence[str]) -> KindMatch | None:
    """The persona fact of the kind ``question`` asks about, and whether it names the same thing; None when the
    question names no known kind or the persona has no fact of that kind."""
    said = statement(question)
    if said is None:
        return None
    asked = fact_kinds(said)
    known = " ".join(normalize(f) for f in facts)
    for kind, things in asked.items():
        if kind == "pet" and things <= _GENERIC_PETS:
            continue  # "do you have pets ?" is about any pet fact: left to the meaning match
        own = [(f, fact_kinds(f).get(kind)) for f in facts]
        own = [(f, t) for f, t in own if t]
        if not own:
            continue
        for fact, theirs in own:
            if any(_same_thing(kind, a, o) for a in things for o in theirs):
                return KindMatch(kind, fact, True)
        if kind in ("place", "food") and any(re.search(rf"\b{re.escape(str(a))}\b", known) for a in things):
            continue  # the thing is named elsewhere in the persona
        return KindMatch(kind, own[0][0], False)
    return None
