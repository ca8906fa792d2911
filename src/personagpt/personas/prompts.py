"""System prompts in the styles people write them, turned into the first-person persona facts the model learned.

Persona-Chat facts are short first-person sentences ("i am a nurse.", "i have two dogs."). Front ends send
instruction-style prompts ("You are Sam, a friendly nurse. You have two dogs. Keep answers short.") and character
cards in third-person prose ("Sam is a nurse. She loves hiking."). The rules here, pinned by
``tests/test_prompts.py`` on hand-written cases:

* sentences are split (lines, then sentence ends);
* instructions about style, format or role are left out ("Keep answers short.", "Never break character.",
  "You are a helpful assistant.", "You must ...");
* second person ("You are", "You have", "Your ...") and third person about the bot ("Sam is", "She loves",
  "Her ...") become the first person ("i am", "i have", "my ...", verbs in their base form);
* "You are Sam, a nurse." gives "i am sam, a nurse." and makes "Sam" the bot's name for the sentences after it;
* the first :data:`MAX_FACTS` facts are used, in the order written; the rest are reported as not used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_FACTS = 5

# openings of a sentence that tell the bot how to behave rather than who it is
_INSTRUCTION = re.compile(
    r"^(please |always |never |only |just )?(keep|respond|reply|answer|be|don'?t|do not|avoid|use|write|speak|talk "
    r"(like|as|in)|act|stay|remember|pretend|roleplay|role-play|play the|limit|make sure|try|ensure|refuse|follow|"
    r"format|include|mention|ask|greet|introduce|start|end|begin|output|return|give|provide|maintain|continue|"
    r"focus|imagine|assume|consider|note|let)\b", re.I)
_MODAL = re.compile(r"^(you|he|she|they|[a-z]+) (must|should|shall|will always|will never|will not|won'?t|need to|"
                    r"have to|may|can|cannot|can'?t|are (not )?(to|allowed|expected|required|supposed|never))\b", re.I)
_ASSISTANT = re.compile(r"\b(assistant|chat ?bot|language model|ai model|an ai\b|artificial intelligence|"
                        r"role ?play|character|persona|the user|users?\b|conversation|answers?|responses?|replies|"
                        r"messages?|format|markdown|emojis?)\b", re.I)
_IRREGULAR = {"has": "have", "is": "am", "are": "am", "was": "was", "were": "was", "does": "do", "goes": "go",
              "isn't": "am not", "doesn't": "do not", "hasn't": "have not", "wasn't": "was not"}
_SECOND_VERB = {"are": "am", "were": "was", "aren't": "am not", "weren't": "was not"}
_SECOND_SUBJECT = {"you're": ["i", "am"], "you've": ["i", "have"], "you'll": ["i", "will"], "you'd": ["i", "would"]}
_SECOND_REST = {"you": "me", "your": "my", "yours": "mine", "yourself": "myself", "you're": "i am",
                "you've": "i have"}
_THIRD_REST = {"he": "i", "she": "i", "him": "me", "her": "my", "his": "my", "their": "my", "himself": "myself",
               "herself": "myself", "themselves": "myself"}
_FIRST = ("i", "i'm", "my", "me", "i've", "i'd", "i'll", "mine")


@dataclass
class PromptFacts:
    """What a system prompt gave: the facts used, the bot's name if said, and what was left out and why."""

    facts: list[str]
    name: str | None = None
    instructions: list[str] = field(default_factory=list)  # sentences about style or format, not the persona
    unused: list[str] = field(default_factory=list)  # facts past the prompt budget

    @property
    def left_out(self) -> list[str]:
        """Everything of the prompt not used as a fact: the instructions, then the facts past the budget."""
        return self.instructions + self.unused


def sentences(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.strip().lstrip("-*•").strip()
        out += [s.strip() for s in re.split(r"(?<=[.!?])\s+", line) if s.strip()]
    return out


def _base_form(verb: str) -> str:
    """A third-person present verb in the form "i" takes: loves -> love, has -> have, watches -> watch."""
    if verb in _IRREGULAR:
        return _IRREGULAR[verb]
    if re.fullmatch(r"[a-z]+(ch|sh|ss|x|o)es", verb):
        return verb[:-2]
    if re.fullmatch(r"[a-z]+[^aeiou]ies", verb):
        return verb[:-3] + "y"
    if re.fullmatch(r"[a-z]+[^su]s", verb):
        return verb[:-1]
    return verb


def _words(sentence: str) -> list[str]:
    return re.findall(r"[\w'-]+|[^\w\s]", sentence.replace("\u2019", "'").lower())


def _join(words: list[str]) -> str:
    return re.sub(r"\s+([,.!?;:])", r"\1", " ".join(words))


def _swap(words: list[str], table: dict[str, str]) -> list[str]:
    return [part for w in words for part in table.get(w, w).split()]


def _first_person(sentence: str, name: str | None) -> str | None:
    """The sentence about the bot in the first person, or None when it is not about the bot."""
    words = _words(sentence)
    if not words:
        return None
    named = name.lower().split() if name else []
    if words[0] in _FIRST:
        return _join(words)
    if words[0] in _SECOND_SUBJECT:
        return _join(_SECOND_SUBJECT[words[0]] + _swap(words[1:], _SECOND_REST))
    if words[0] == "you":
        verb = words[1:2]
        return _join(["i"] + [_SECOND_VERB.get(v, v) for v in verb] + _swap(words[2:], _SECOND_REST))
    if words[0] == "your":
        return _join(["my"] + _swap(words[1:], _SECOND_REST))
    if named and words[:len(named) - 1] == named[:-1] and words[len(named) - 1:len(named)] == [named[-1] + "'s"]:
        return _join(["my"] + _swap(words[len(named):], _THIRD_REST))  # "sam's dog is max"
    if named and words[:len(named)] == named:
        rest = words[len(named):]
        if rest[:1] == ["'s"]:  # "sam's dog is max"
            return _join(["my"] + _swap(rest[1:], _THIRD_REST))
        return _join(["i"] + [_base_form(v) for v in rest[:1]] + _swap(rest[1:], _THIRD_REST))
    if named and words[0] in ("he", "she", "they"):
        verb = words[1:2]
        verb = [_base_form(v) if words[0] != "they" else _SECOND_VERB.get(v, v) for v in verb]
        return _join(["i"] + verb + _swap(words[2:], _THIRD_REST))
    if named and words[0] in ("his", "her", "their"):
        return _join(["my"] + _swap(words[1:], _THIRD_REST))
    return None


_NOT_NAMES = {"a", "an", "the", "he", "she", "they", "it", "this", "that", "there", "here", "what", "who"}


def _name_in(sentence: str) -> str | None:
    """The bot's name where the prompt says it: "You are Sam, ...", "Your name is Sam", "Sam is a ..."."""
    match = re.match(r"^(?i:you are|you're|your name is|i am|i'm|my name is)\s+([A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)?)"
                     r"(?=[,.!]|\s+(?:and|who)\b|$)", sentence)
    if match is None:  # third person: "Sam is a nurse.", "Sam Lee loves jazz."
        match = re.match(r"^([A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)?)(?:'s\b|\s+(?:is|was|has|grew|[a-z]+s)\b)", sentence)
    if match and match.group(1).lower() not in _NOT_NAMES:
        return match.group(1)
    return None


def facts_from_prompt(text: str, name: str | None = None) -> PromptFacts:
    """The persona facts a system prompt (or a character card's prose) gives, by the rules above."""
    facts, instructions = [], []
    for sentence in sentences(text):
        found = _name_in(sentence)
        name = name or found
        if _INSTRUCTION.match(sentence) or _MODAL.match(sentence) or _ASSISTANT.search(sentence):
            instructions.append(sentence)
            continue
        fact = _first_person(sentence, name)
        if fact is None:
            instructions.append(sentence)  # about something else (the user, the setting): not a persona fact
            continue
        fact = fact.lower().rstrip("!?;:, ")
        if not fact.endswith("."):
            fact += "."
        facts.append(fact)
    return PromptFacts(facts[:MAX_FACTS], name, instructions, facts[MAX_FACTS:])
