"""Dialogue records and the file formats they come from.

Two inputs are understood:

* ConvAI2 / ParlAI text (``N your persona: ...``, ``N partner's persona: ...``, ``N x<TAB>y``), in any of the
  ``self`` / ``both`` / ``other`` / ``none`` variants, with or without candidates;
* JSONL, one dialogue per line: ``{"turns": [...], "p1_facts": [...], "p2_facts": [...]}`` where ``turns[0]``
  is spoken by p1 and speakers alternate; the fact lists are optional.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from personagpt.errors import DataError

SILENCE = "__SILENCE__"
_YOUR = "your persona:"
_PARTNER = "partner's persona:"


@dataclass
class Dialogue:
    """One conversation: ``turns[0]`` is spoken by p1, then p2, alternating.

    ``p1_facts`` / ``p2_facts`` are empty when that speaker's persona is unknown.
    """

    turns: list[str]
    p1_facts: list[str] = field(default_factory=list)
    p2_facts: list[str] = field(default_factory=list)
    source: str = ""

    def facts(self, speaker: int) -> list[str]:
        return self.p1_facts if speaker == 1 else self.p2_facts

    def speaker_of(self, index: int) -> int:
        """Which speaker (1 or 2) said ``turns[index]``."""
        return 1 if index % 2 == 0 else 2


def parse_convai2(path: str | os.PathLike) -> list[Dialogue]:
    """Parse a ConvAI2 / ParlAI text file into dialogues.

    The persona called "your" belongs to the speaker of the ``y`` side; when the first ``x`` is ``__SILENCE__``
    that speaker opened the conversation and becomes p1, otherwise the partner did.
    """
    path = Path(path)
    dialogues: list[Dialogue] = []
    episode: _Episode | None = None
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        number, sep, rest = line.partition(" ")
        if not number.isdigit() or not sep:
            raise DataError(f"{where}: expected a line starting with a line number, got {line[:60]!r}")
        if int(number) == 1 or episode is None:
            if episode is not None:
                dialogues.append(episode.finish())
            episode = _Episode(source=where)
        if rest.startswith(_YOUR):
            episode.your_facts.append(rest[len(_YOUR):].strip())
        elif rest.startswith(_PARTNER):
            episode.partner_facts.append(rest[len(_PARTNER):].strip())
        else:
            fields = rest.split("\t")
            if len(fields) < 2:
                raise DataError(f"{where}: expected 'x<TAB>y' (an exchange) or a persona line, got {rest[:60]!r}")
            x, y = fields[0].strip(), fields[1].strip()
            if not y:
                raise DataError(f"{where}: empty reply")
            if not episode.turns:
                episode.your_first = x == SILENCE
                if not episode.your_first:
                    episode.turns.append(x)
            elif x == SILENCE:
                raise DataError(f"{where}: {SILENCE} is only allowed in an episode's first exchange")
            else:
                episode.turns.append(x)
            episode.turns.append(y)
    if episode is not None:
        dialogues.append(episode.finish())
    return dialogues


@dataclass
class _Episode:
    source: str
    your_facts: list[str] = field(default_factory=list)
    partner_facts: list[str] = field(default_factory=list)
    turns: list[str] = field(default_factory=list)
    your_first: bool = False

    def finish(self) -> Dialogue:
        if self.your_first:
            p1, p2 = self.your_facts, self.partner_facts
        else:
            p1, p2 = self.partner_facts, self.your_facts
        return Dialogue(turns=self.turns, p1_facts=p1, p2_facts=p2, source=self.source)


def parse_jsonl(path: str | os.PathLike) -> list[Dialogue]:
    """Parse the project's JSONL dialogue format (see module docstring)."""
    dialogues = []
    for where, obj in _json_lines(path):
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object with a 'turns' list")
        turns = _string_list(obj.get("turns"), "turns", where)
        if not turns:
            raise DataError(f"{where}: 'turns' must be a non-empty list of strings")
        dialogues.append(Dialogue(
            turns=turns,
            p1_facts=_string_list(obj.get("p1_facts", []), "p1_facts", where),
            p2_facts=_string_list(obj.get("p2_facts", []), "p2_facts", where),
            source=where,
        ))
    return dialogues


@dataclass
class ControlRecord:
    """One action-code example: under ``goal`` (and optional own ``facts``), after ``history``, say ``response``."""

    goal: str
    history: list[str]
    response: str
    facts: list[str] = field(default_factory=list)
    source: str = ""

    def to_json(self) -> dict:
        return {"goal": self.goal, "facts": self.facts, "history": self.history, "response": self.response}


def load_control_records(path: str | os.PathLike) -> list[ControlRecord]:
    """Action-code data: JSONL of ``{goal, facts (optional), history, response}``."""
    records = []
    for where, obj in _json_lines(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("goal"), str) or not obj["goal"].strip():
            raise DataError(f"{where}: expected an object with a non-empty 'goal' string")
        response = obj.get("response")
        if not isinstance(response, str) or not response.strip():
            raise DataError(f"{where}: 'response' must be a non-empty string")
        records.append(ControlRecord(goal=obj["goal"].strip(), history=_string_list(obj.get("history", []), "history", where),
                                     response=response.strip(), facts=_string_list(obj.get("facts", []), "facts", where),
                                     source=where))
    return records


def write_jsonl(dialogues: Sequence[Dialogue], path: str | os.PathLike) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for d in dialogues:
            f.write(json.dumps({"turns": d.turns, "p1_facts": d.p1_facts, "p2_facts": d.p2_facts}) + "\n")


def load_dialogues(path: str | os.PathLike) -> list[Dialogue]:
    """Read dialogues from a ConvAI2 text file or a ``.jsonl`` file (chosen by extension)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        return parse_jsonl(path)
    return parse_convai2(path)


def persona_fact(text: str) -> str:
    """A fact in the style the model was trained on: the dialogue files end a persona line with the full stop
    attached ("i like to hunt."), while the persona list detaches it ("i like to hunt ."). Left detached, the bot
    mostly ignores its facts (random-goal self-play, Hits@1 of 20 after 4 turns: 41% on training personas as listed,
    69% on validation personas, whose facts are attached)."""
    text = text.strip()
    return re.sub(r"\s+([.!?])$", r"\1", text)


def load_personas(path: str | os.PathLike) -> list[list[str]]:
    """Persona profiles: one JSON list of facts per line (``personas_train.jsonl``), each fact in the training
    dialogues' style (:func:`persona_fact`)."""
    personas = []
    for where, facts in _json_lines(path):
        facts = [persona_fact(f) for f in _string_list(facts, "persona", where)]
        if facts:
            personas.append(facts)
    if not personas:
        raise DataError(f"{path}: no personas found")
    return personas


def distinct_personas(fact_lists) -> list[tuple[str, ...]]:
    """The distinct non-empty persona profiles among ``fact_lists``, in order of first appearance."""
    return list(dict.fromkeys(tuple(facts) for facts in fact_lists if facts))


def read_facts_file(path: str | os.PathLike) -> list[str]:
    """Persona facts for one bot: one fact per line; blank lines and ``#`` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return [line.strip() for _, line in _lines(path) if not line.lstrip().startswith("#")]


PACKAGED_PERSONAS = Path(__file__).resolve().parents[1] / "resources" / "personas_train.jsonl.gz"


def default_data_dir() -> Path:
    """Where the Persona-Chat files live: ``$PERSONAGPT_DATA``, else ``../shared/data`` or ``./data``."""
    env = os.environ.get("PERSONAGPT_DATA")
    if env:
        return Path(env)
    for candidate in (Path("../shared/data"), Path("data")):
        if (candidate / "personachat").is_dir():
            return candidate
    return Path("../shared/data")


def resolve_personas_path(path: str | os.PathLike | None = None) -> Path:
    """The persona list to draw from: ``path`` if given (it must exist), else the data directory's
    ``personachat/personas_train.jsonl`` when present, else the list shipped with the package."""
    if path is not None:
        if not Path(path).is_file():
            raise DataError(f"{path}: no such file (--personas-path takes a JSONL file of persona fact lists; "
                            "$PERSONAGPT_DATA names the data directory)")
        return Path(path)
    env = os.environ.get("PERSONAGPT_DATA")
    candidate = default_data_dir() / "personachat" / "personas_train.jsonl"
    if candidate.is_file():
        return candidate
    if env:
        raise DataError(f"{candidate}: no such file ($PERSONAGPT_DATA={env} has no personachat/personas_train.jsonl; "
                        "unset it to use the packaged personas, or pass --personas-path)")
    return PACKAGED_PERSONAS


def _json_lines(path: str | os.PathLike) -> Iterator[tuple[str, object]]:
    """``(file:line, parsed JSON)`` for each non-blank line; a missing file or bad JSON is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: invalid JSON ({e.msg})") from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank, stripped lines with 1-based numbers (``.gz`` files too); decoding errors become DataError."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip("\r\n")
                if line.strip():
                    yield lineno, line
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None


def _string_list(value, name: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: '{name}' must be a list of strings")
    return [v.strip() for v in value if v.strip()]
