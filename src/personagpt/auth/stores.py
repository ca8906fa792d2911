"""Interviews kept as JSON lines as they finish (``{"index": i, key: value}``), so that a stopped run resumes where
it was, and what a store holds is read back instead of played again."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from personagpt.auth.interview import Episode, SelfPlay, rescore


def read_store(store: Path, count: int, key: str, restore: Callable[[int, object], object]) -> dict[int, object]:
    """{index: restore(index, value)} for the first ``count`` sets' lines in ``store`` that still fit."""
    done: dict[int, object] = {}
    if store.is_file():
        for line in store.read_text().splitlines():
            try:
                row = json.loads(line)
                index, value = row["index"], restore(row["index"], row[key]) if row["index"] < count else None
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by an interruption
            if value is not None:
                done[index] = value
    return done


def play_stored(env: SelfPlay, sets: Sequence[tuple[list[list[str]], int]], policy, seed: int, guide: str | None,
                store: Path | None, progress: Callable[[], None] | None, key: str,
                save: Callable[[int, Episode], object],
                restore: Callable[[int, object], object]) -> tuple[dict[int, object], int]:
    """Play the sets not yet in ``store`` (JSON lines of ``{"index": i, key: value}``), appending ``save(index, episode)``
    for each interview as it finishes, so a stopped run resumes where it was. Every value, read back or new, is
    kept as ``restore(index, value)`` (None when read back: it no longer fits its set, play it again). Returns
    ({index: kept}, how many were played now)."""
    done = read_store(store, len(sets), key, restore) if store is not None else {}
    if store is not None:
        store.parent.mkdir(parents=True, exist_ok=True)
    for _ in done:
        if progress:
            progress()
    lock = threading.Lock()

    def finished(index: int, episode: Episode) -> None:
        value = save(index, episode)
        with lock:
            done[index] = restore(index, value)
            if store is not None:
                with store.open("a") as f:
                    f.write(json.dumps({"index": index, key: value}) + "\n")
        if progress:
            progress()

    missing = [i for i in range(len(sets)) if i not in done]
    if missing:
        env.play(sets, policy, seed, finished, guide, missing)
    return done, len(missing)


def play_resumable(env: SelfPlay, sets: Sequence[tuple[list[list[str]], int]], policy, seed: int, guide: str | None,
                   store: Path | None, progress: Callable[[], None] | None = None) -> tuple[list[Episode], int]:
    """Play every set, each interview appended to ``store`` (JSON lines) as it finishes; interviews already there
    are read back, not replayed. Returns the interviews in the sets' order and how many were played now."""
    done, played = play_stored(env, sets, policy, seed, guide, store, progress, "episode", lambda _, e: e.to_json(),
                               _restorer(env, sets))
    return [done[i] for i in range(len(sets))], played


def _restorer(env: SelfPlay, sets: Sequence[tuple[list[list[str]], int]]) -> Callable[[int, dict], Episode | None]:
    """Reads a stored interview back: None where it no longer fits its set; an identifier added since it was
    played scores its transcript."""
    def restore(index: int, value: dict) -> Episode | None:
        episode = Episode.from_json(value)
        if episode.candidates != sets[index][0]:
            return None
        for name, make in env.identifiers.items():
            if name not in episode.scores:
                rescore([episode], name, make)
        return episode
    return restore


def stored_interviews(env: SelfPlay, sets: Sequence[tuple[list[list[str]], int]], store: Path) -> dict[int, Episode]:
    """{set index: its interview} for the sets ``store`` holds one for (nothing is played)."""
    return read_store(store, len(sets), "episode", _restorer(env, sets))
