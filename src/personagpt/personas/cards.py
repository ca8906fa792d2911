"""Character cards, as SillyTavern-style front ends share personas: read V2 and V3 cards, write ours as a V2 card.

A card is JSON (``{"spec": "chara_card_v2" | "chara_card_v3", "data": {...}}``), alone or base64-encoded in a PNG
``tEXt`` chunk named ``chara`` (V2) or ``ccv3`` (V3). Its prose (``description``, ``personality``,
``scenario``, written in the third person with ``{{char}}`` and ``{{user}}`` macros) becomes persona facts by
:func:`~personagpt.personas.prompts.facts_from_prompt`; ``first_mes`` is the bot's opening turn and
``alternate_greetings`` other openings. Unknown fields and ``extensions`` are kept, so a card read and written
again loses nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from personagpt.errors import DataError
from personagpt.personas.prompts import PromptFacts, facts_from_prompt

MAX_CARD_BYTES = 20 << 20  # cards are small; a larger file is not one
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPECS = ("chara_card_v2", "chara_card_v3")


@dataclass
class Card:
    """A character card: its name, prose and greetings, and everything else it held (kept for writing back)."""

    name: str
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_mes: str = ""
    alternate_greetings: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)  # the whole card as read: unknown fields and extensions ride along

    def text(self, user: str = "the user") -> str:
        """The card's prose with its macros filled in: {{char}} is the card's name, {{user}} "the user" (so that
        sentences about the person are not taken for the bot's facts)."""
        prose = "\n".join(p for p in (self.description, self.personality, self.scenario) if p.strip())
        return fill(prose, self.name, user)

    def persona(self) -> PromptFacts:
        """The persona facts the card's prose gives (first person, the first five)."""
        return facts_from_prompt(self.text(), name=self.name or None)

    def greetings(self, user: str = "there") -> list[str]:
        """The bot's possible opening turns: ``first_mes``, then the alternates."""
        return [fill(g, self.name, user) for g in [self.first_mes, *self.alternate_greetings] if g.strip()]


def fill(text: str, name: str, user: str) -> str:
    for macro, value in (("{{char}}", name), ("<BOT>", name), ("{{user}}", user), ("<USER>", user)):
        text = text.replace(macro, value).replace(macro.lower(), value).replace(macro.upper(), value)
    return text


def read_card(path: str | Path) -> Card:
    """A card from a JSON file or a PNG with a ``chara``/``ccv3`` chunk; a malformed one is a one-line DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such card file")
    if path.stat().st_size > MAX_CARD_BYTES:
        raise DataError(f"{path}: {path.stat().st_size >> 20} MiB is too large for a character card")
    return card_from_bytes(path.read_bytes(), str(path))


def card_from_bytes(data: bytes, where: str = "card") -> Card:
    """A card from a file's bytes: JSON, or a PNG with a ``chara``/``ccv3`` chunk (the page's upload)."""
    if len(data) > MAX_CARD_BYTES:
        raise DataError(f"{where}: {len(data) >> 20} MiB is too large for a character card")
    if data.startswith(PNG_SIGNATURE):
        chunks = png_text_chunks(data, where)
        encoded = chunks.get("ccv3") or chunks.get("chara")
        if encoded is None:
            raise DataError(f"{where}: a PNG without a character card (no 'chara' or 'ccv3' text chunk)")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise DataError(f"{where}: the PNG's card chunk is not valid base64") from None
    return card_from_json(data, where)


def card_from_json(data: bytes | str | dict, where: str = "card") -> Card:
    """A card from its JSON (bytes, text or already parsed), V2 or V3; V1's flat fields are read too."""
    if not isinstance(data, dict):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{where}: the card is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{where}: a card is a JSON object")
    spec = data.get("spec")
    if spec is not None and spec not in SPECS:
        raise DataError(f"{where}: unknown card spec {spec!r}; V2 (chara_card_v2) and V3 (chara_card_v3) are read")
    body = data.get("data") if spec else data  # V1 cards are the flat fields alone
    if not isinstance(body, dict):
        raise DataError(f"{where}: the card has no 'data' object")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where}: the card has no name")
    texts = {k: body.get(k) or "" for k in ("description", "personality", "scenario", "first_mes")}
    for key, value in texts.items():
        if not isinstance(value, str):
            raise DataError(f"{where}: the card's {key} must be text")
    alternates = body.get("alternate_greetings") or []
    if not isinstance(alternates, list) or not all(isinstance(g, str) for g in alternates):
        raise DataError(f"{where}: the card's alternate_greetings must be a list of texts")
    return Card(name.strip(), **texts, alternate_greetings=list(alternates), raw=data)


def card_json(card: Card) -> dict:
    """The card as V2 JSON: what it was read from (unknown fields and extensions kept), with its fields set."""
    raw = json.loads(json.dumps(card.raw)) if card.raw else {}
    body = raw.get("data") if raw.get("spec") in SPECS else dict(raw)
    body = dict(body or {})
    body.update(name=card.name, description=card.description, personality=card.personality,
                scenario=card.scenario, first_mes=card.first_mes, alternate_greetings=list(card.alternate_greetings))
    body.setdefault("mes_example", "")
    body.setdefault("creator_notes", "")
    body.setdefault("system_prompt", "")
    body.setdefault("post_history_instructions", "")
    body.setdefault("tags", [])
    body.setdefault("creator", "")
    body.setdefault("character_version", "")
    body.setdefault("extensions", {})
    return {**{k: v for k, v in raw.items() if k not in ("spec", "spec_version", "data")},
            "spec": "chara_card_v2", "spec_version": "2.0", "data": body}


def persona_card(name: str, facts: list[str], greeting: str = "") -> Card:
    """Our persona (first-person facts) as a card that SillyTavern-style front ends import: the facts are its
    description and personality, written for {{char}}."""
    return Card(name=name, description=" ".join(facts), personality="", first_mes=greeting)


def write_card(card: Card, path: str | Path) -> Path:
    """A V2 card: JSON for a ``.json`` path, else a PNG (a 1x1 image) with the card in its ``chara`` chunk."""
    path = Path(path)
    text = json.dumps(card_json(card), ensure_ascii=False)
    if path.suffix.lower() == ".json":
        path.write_text(text + "\n", encoding="utf-8")
        return path
    path.write_bytes(png_with_text("chara", base64.b64encode(text.encode("utf-8")).decode("ascii")))
    return path


def png_text_chunks(data: bytes, where: str | Path = "png") -> dict[str, str]:
    """The ``tEXt`` chunks of a PNG, keyword -> text; a broken file is a DataError."""
    chunks, at = {}, len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if len(body) < length:
            raise DataError(f"{where}: the PNG is cut off")
        if kind == b"tEXt" and b"\0" in body:
            keyword, text = body.split(b"\0", 1)
            chunks[keyword.decode("latin-1")] = text.decode("latin-1")
        if kind == b"IEND":
            break
        at += 12 + length
    return chunks


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_with_text(keyword: str, text: str) -> bytes:
    """A 1x1 white PNG carrying one ``tEXt`` chunk."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
    pixels = _chunk(b"IDAT", zlib.compress(b"\x00\xff\xff\xff"))
    note = _chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + text.encode("latin-1"))
    return PNG_SIGNATURE + header + note + pixels + _chunk(b"IEND", b"")
