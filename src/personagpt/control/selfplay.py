"""Self-play: an interviewer (goal mode, p1) talks with a persona agent (persona mode, p2).

Before each of its turns the interviewer asks a :class:`Policy` for a goal; the policy sees the transcript so
far. Both sides are :class:`~personagpt.generate.conversation.Conversation` sessions, each with its own KV cache and its own
random generator, so a conversation's turns depend on its seed alone.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from personagpt.errors import SettingsError
from personagpt.format import DEFAULT_ACTIONS, PromptFormat
from personagpt.generate.conversation import Conversation, SamplingConfig


@dataclass
class Transcript:
    """One self-play conversation. Also a valid line of the project's JSONL dialogue format."""

    p2_facts: list[str]
    turns: list[str] = field(default_factory=list)
    actions: list[str | None] = field(default_factory=list)  # the interviewer's goal per turn, None for p2

    def to_json(self) -> dict:
        return {"turns": self.turns, "p1_facts": [], "p2_facts": self.p2_facts, "actions": self.actions}

    @property
    def interviewer_turns(self) -> int:
        return sum(a is not None for a in self.actions)


class Policy(Protocol):
    """Chooses the interviewer's next goal from the conversation so far."""

    def next_goal(self, transcript: Transcript) -> str: ...


@dataclass
class FixedPolicy:
    """The goals in order, cycled."""

    goals: Sequence[str]

    def __post_init__(self) -> None:
        if not self.goals:
            raise SettingsError("a fixed policy needs at least one goal")

    def next_goal(self, transcript: Transcript) -> str:
        return self.goals[transcript.interviewer_turns % len(self.goals)]


class RandomPolicy:
    """A uniformly random goal of ``actions`` each turn (the default action space).

    Seeded, the draw is a function of the seed and the conversation so far, so it does not depend on how
    conversations running side by side interleave."""

    def __init__(self, actions: Sequence[str] = DEFAULT_ACTIONS, seed: int | None = None) -> None:
        self.actions = list(actions)
        self.seed = seed
        self.rng = random.Random()

    def next_goal(self, transcript: Transcript) -> str:
        if self.seed is None:
            return self.rng.choice(self.actions)
        key = "\x1f".join([str(self.seed), *transcript.p2_facts, *transcript.turns])
        return random.Random(key).choice(self.actions)


TurnCallback = Callable[[int, Transcript], None]


def self_play(model, fmt: PromptFormat, personas: Sequence[Sequence[str]], policy: Policy, num_turns: int = 8,
              sampling: SamplingConfig | None = None, max_context: int | None = None, seed: int | None = None,
              on_turn: TurnCallback | None = None, engine=None) -> list[Transcript]:
    """One conversation per persona, ``num_turns`` exchanges each (interviewer, then persona agent).

    With an ``engine`` (:class:`~personagpt.generate.engine.Engine`) the conversations run side by side, one thread each,
    and their decoding steps are batched; without one they run in turn, each side on its own KV cache.
    ``on_turn(i, transcript)`` is called after every turn of conversation ``i`` (progress, streaming output).
    Conversation ``i`` samples with seed ``seed + i`` when ``seed`` is given, so results do not depend on the
    engine or on how the conversations interleave.
    """
    transcripts = [Transcript(p2_facts=list(facts)) for facts in personas]
    kwargs = dict(sampling=sampling, max_context=max_context, engine=engine)

    def play(i: int) -> None:
        transcript = transcripts[i]
        first = policy.next_goal(transcript)
        interviewer = Conversation.with_goal(model, fmt, first, seed=None if seed is None else 2 * (seed + i),
                                               **kwargs)
        agent = Conversation.with_persona(model, fmt, transcript.p2_facts,
                                          seed=None if seed is None else 2 * (seed + i) + 1, **kwargs)
        for t in range(num_turns):
            goal = first if t == 0 else policy.next_goal(transcript)
            interviewer.set_goal(goal)
            for speaker, listener, action in ((interviewer, agent, goal), (agent, interviewer, None)):
                text = speaker.respond()
                listener.add_turn(text)
                transcript.turns.append(text)
                transcript.actions.append(action)
                if on_turn:
                    on_turn(i, transcript)

    if engine is None:
        for i in range(len(personas)):
            play(i)
        return transcripts
    with ThreadPoolExecutor(max_workers=max(1, len(personas))) as pool:
        for future in [pool.submit(play, i) for i in range(len(personas))]:
            future.result()  # re-raises a conversation's error
    return transcripts
