"""Persona-Chat's writing style, both ways: what the model reads, and what people see.

The model learned from lower-case text with punctuation split off ("i work as a nurse , do you ?"). People type
"I work as a nurse, do you?" and expect to read it that way back. Front ends (terminal, HTTP API, page) convert
at their edge: :func:`to_model` for what a person wrote, :func:`for_people` (or :class:`DisplayStream` while a
reply streams) for what the bot wrote. The library, transcripts and training data keep the model's style.
"""

from __future__ import annotations

import re

_PUNCTUATION_RUN = re.compile(r"[.,!?;]+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+(?=[.,!?;])")
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})


def to_model(text: str) -> str:
    """A person's text in the training style: lower case, ``. , ! ? ;`` split off (but not inside numbers such
    as 3.5 or 1,000), curly quotes straightened, contractions ("i'm") kept whole."""

    def split(match: re.Match) -> str:
        run, start, end = match.group(), match.start(), match.end()
        inside_number = (len(run) == 1 and run in ".," and 0 < start and end < len(text)
                         and text[start - 1].isdigit() and text[end].isdigit())
        return run if inside_number else " " + " ".join(run) + " "

    text = text.translate(_QUOTES).lower()
    return " ".join(_PUNCTUATION_RUN.sub(split, text).split())


def for_people(text: str) -> str:
    """The bot's text with natural spacing: "i am a nurse , you ?" becomes "i am a nurse, you?"."""
    return _SPACE_BEFORE_PUNCTUATION.sub("", text)


class DisplayStream:
    """:func:`for_people` applied to a reply as its pieces arrive. A trailing space is held back until the next
    piece shows whether punctuation follows it; the pieces join to ``for_people`` of the whole reply."""

    def __init__(self) -> None:
        self.raw = ""
        self.shown = ""

    def push(self, piece: str) -> str:
        self.raw += piece
        return self._advance(for_people(self.raw).rstrip())

    def flush(self) -> str:
        return self._advance(for_people(self.raw))

    def _advance(self, text: str) -> str:
        if not text.startswith(self.shown):  # cannot happen for a growing reply; never repeat text
            return ""
        piece, self.shown = text[len(self.shown):], text
        return piece
