"""Self-training for weak goals: the model's own best-of-N steered turns that the goal labeler accepts become
action-code training data.

Harvesting walks training-split contexts (a dialogue cut before a turn), generates the next turn in goal mode
for a goal with N candidates (:mod:`personagpt.generate.best_of_n` puts labeler-accepted candidates first), and keeps the
reply only if the labeler accepts it for that goal and for no other goal of the action space, and it is not a
copy of a reply already kept for the goal (self-training on one stock question would teach the model to repeat
it). Every attempt is appended to a JSONL log as it is made, so an interrupted harvest resumes where it stopped
and the acceptance rate can be read back. :func:`merge_control_records` adds the kept turns to the existing
control data, capped per goal.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path

from tqdm.auto import tqdm

from personagpt.data.dialogues import ControlRecord, DataError, Dialogue
from personagpt.errors import SettingsError
from personagpt.format import DEFAULT_ACTIONS, HISTORY_TURNS
from personagpt.generate.best_of_n import default_labeler
from personagpt.generate.conversation import Conversation, SamplingConfig


@dataclass
class Attempt:
    """One steered turn generated for ``goal`` after ``history`` (and with ``facts`` in the prefix, if any)."""

    key: str  # "dialogue:cut:goal": identifies the context, so a resumed harvest skips it
    goal: str
    facts: list[str]
    history: list[str]
    response: str
    labels: list[str] = field(default_factory=list)  # every goal of the action space the labeler accepts
    verdict: str = ""  # "kept", "rejected" (not the goal, or other goals too) or "duplicate"

    def to_json(self) -> dict:
        return {"key": self.key, "goal": self.goal, "facts": self.facts, "history": self.history,
                "response": self.response, "labels": self.labels, "verdict": self.verdict}

    def record(self) -> ControlRecord:
        return ControlRecord(goal=self.goal, history=self.history, response=self.response, facts=self.facts)


def verdict(goal: str, labels: set[str], response: str, kept: set[str]) -> str:
    """Keep a reply only when ``goal`` is the one goal it fulfils and it is new for that goal."""
    if labels != {goal}:
        return "rejected"
    return "duplicate" if normalise(response) in kept else "kept"


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def read_attempts(path: str | os.PathLike) -> list[Attempt]:
    """The attempts logged so far (none if the file does not exist). A torn last line (a killed run) is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    attempts = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            attempts.append(Attempt(**obj))
        except (json.JSONDecodeError, TypeError) as e:
            if number == len(lines):
                break
            raise DataError(f"{path}:{number}: not a harvest attempt ({e})") from None
    return attempts


def drop_torn_tail(path: str | os.PathLike) -> None:
    """Cut a last line left half-written by a killed run, so appending starts on a line of its own."""
    path = Path(path)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def contexts(dialogues: Sequence[Dialogue], goal: str, seed: int) -> Iterator[tuple[str, Dialogue, int]]:
    """Every (dialogue, cut) of the dialogues in an order seeded per goal, so goals get different contexts."""
    pairs = [(i, cut) for i, d in enumerate(dialogues) for cut in range(1, len(d.turns))]
    random.Random(f"{seed}:{goal}").shuffle(pairs)
    for i, cut in pairs:
        yield f"{i}:{cut}:{goal}", dialogues[i], cut


def harvest(model, fmt, dialogues: Sequence[Dialogue], goals: Sequence[str], log_path: str | os.PathLike, *,
            per_goal: int = 150, max_attempts: int | None = None, candidates: int = 8, sampling=None,
            labeler=None, facts_probability: float = 0.5, history_turns: int = HISTORY_TURNS, seed: int = 0,
            action_space: Sequence[str] = DEFAULT_ACTIONS, engine=None, parallel: int = 1,
            progress: bool = True) -> dict[str, Counter]:
    """Generate steered turns for each goal until ``per_goal`` are kept (or ``max_attempts`` tried), appending
    each attempt to ``log_path``. Attempts already in the log count and their contexts are skipped (resume).
    With an ``engine``, ``parallel`` contexts are generated at once, batched in its steps (verdicts stay in
    context order, so a run's log does not depend on timing). Returns the verdict counts per goal, the logged
    ones included."""

    labeler = labeler or default_labeler()
    # a goal turn takes goal_candidates samples where set: here --candidates decides
    cfg = replace(sampling or SamplingConfig(max_new_tokens=40), num_candidates=candidates, goal_candidates=None)
    space = list(dict.fromkeys([*action_space, *goals]))
    drop_torn_tail(log_path)
    done = read_attempts(log_path)
    seen = {a.key for a in done}
    counts = {goal: Counter(a.verdict for a in done if a.goal == goal) for goal in goals}
    kept = {goal: {normalise(a.response) for a in done if a.goal == goal and a.verdict == "kept"} for goal in goals}

    def attempt(goal: str, key: str, dialogue: Dialogue, cut: int) -> Attempt:
        rng = random.Random(key)
        own = dialogue.facts(dialogue.speaker_of(cut))
        facts = list(own) if own and rng.random() < facts_probability else []
        history = [t.strip() for t in dialogue.turns[max(0, cut - history_turns):cut]]
        conversation = Conversation.from_turns(model, fmt, history, persona=facts, goal=goal, sampling=cfg,
                                               seed=rng.randrange(2**31), engine=engine)
        response = conversation.respond().strip()
        return Attempt(key, goal, facts, history, response, sorted(labeler.label(response, space) if response else []))

    width = max(1, parallel) if engine is not None else 1
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log, ThreadPoolExecutor(width) as pool:
        _lock(log, log_path)
        for goal in goals:
            limit = max_attempts if max_attempts is not None else 20 * per_goal
            bar = tqdm(total=per_goal, initial=min(counts[goal]["kept"], per_goal), desc=f"harvest {goal}",
                       unit="kept", disable=not progress)
            todo = ((key, d, cut) for key, d, cut in contexts(dialogues, goal, seed) if key not in seen)
            while counts[goal]["kept"] < per_goal and sum(counts[goal].values()) < limit:
                room = min(width, per_goal - counts[goal]["kept"], limit - sum(counts[goal].values()))
                batch = list(islice(todo, room))
                if not batch:
                    break
                for result in pool.map(lambda job: attempt(goal, *job), batch):
                    result.verdict = verdict(goal, set(result.labels), result.response, kept[goal])
                    log.write(json.dumps(result.to_json()) + "\n")
                    log.flush()
                    counts[goal][result.verdict] += 1
                    if result.verdict == "kept":
                        kept[goal].add(normalise(result.response))
                        bar.update(1)
            bar.close()
    return counts


def _lock(handle, path) -> None:
    """One harvest per log: a second one appending to it would interleave and repeat contexts."""
    try:
        import fcntl  # POSIX only
    except ImportError:  # not POSIX: no lock
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise SettingsError(f"{path} is being written by another harvest; wait for it or use another --log") from None


def merge_control_records(base: Sequence[ControlRecord], extra: Sequence[ControlRecord], cap: int,
                          seed: int = 0) -> tuple[list[ControlRecord], dict[str, dict[str, int]]]:
    """``base`` plus as many ``extra`` records per goal as fit under ``cap`` examples of that goal.

    Base examples (real dialogue turns) are never dropped; generated ones only fill goals that are short of
    the cap, so the mix stays balanced. Returns the shuffled records and per goal the base and added counts.
    """
    rng = random.Random(seed)
    have = Counter(r.goal for r in base)
    by_goal: dict[str, list[ControlRecord]] = {}
    for record in extra:
        by_goal.setdefault(record.goal, []).append(record)
    merged, counts = list(base), {g: {"base": n, "added": 0} for g, n in have.items()}
    for goal, records in by_goal.items():
        room = max(0, cap - have[goal])
        added = records if len(records) <= room else rng.sample(records, room)
        merged += added
        counts.setdefault(goal, {"base": 0, "added": 0})["added"] = len(added)
    rng.shuffle(merged)
    return merged, counts
