"""Self-play: an interviewer (action mode, p1) talks with a persona agent (persona mode, p2), batched."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from personagpt.format import DEFAULT_ACTIONS, PromptFormat
from personagpt.generation import SamplingConfig, context_limit, fit_context, generate_batch


@dataclass
class Transcript:
    """One self-play conversation. Also a valid line of the project's JSONL dialogue format."""

    p2_facts: list[str]
    turns: list[str] = field(default_factory=list)
    actions: list[str | None] = field(default_factory=list)  # the interviewer's goal per turn, None for p2

    def to_json(self) -> dict:
        return {"turns": self.turns, "p1_facts": [], "p2_facts": self.p2_facts, "actions": self.actions}


def pick_actions(num_convos: int, num_turns: int, actions: Sequence[str] | None = None,
                 rng: random.Random | None = None) -> list[list[str]]:
    """A goal per (conversation, turn): ``actions`` in order (cycled), else random default goals."""
    if actions:
        return [[actions[t % len(actions)] for t in range(num_turns)] for _ in range(num_convos)]
    rng = rng or random.Random()
    return [[rng.choice(DEFAULT_ACTIONS) for _ in range(num_turns)] for _ in range(num_convos)]


def self_play(model, fmt: PromptFormat, personas: Sequence[Sequence[str]], goals: Sequence[Sequence[str]],
              sampling: SamplingConfig | None = None, max_context: int | None = None,
              progress: bool = False) -> list[Transcript]:
    """Run ``len(personas)`` conversations side by side; turn t of conversation i pursues ``goals[i][t]``."""
    if len(goals) != len(personas):
        raise ValueError("need one goal list per persona")
    cfg = sampling or SamplingConfig()
    budget = (max_context or context_limit(model)) - cfg.max_new_tokens
    transcripts = [Transcript(p2_facts=list(p)) for p in personas]
    history = [[] for _ in personas]  # token ids per turn, per conversation
    num_turns = min(len(g) for g in goals) if goals else 0
    for t in tqdm(range(num_turns), desc="self-play", unit="turn", disable=not progress):
        for role in ("interviewer", "persona"):
            if role == "interviewer":
                prefixes = [fmt.action_prefix(g[t]) for g in goals]
            else:
                prefixes = [fmt.persona_prefix(tr.p2_facts) for tr in transcripts]
            contexts = [fit_context(p, h, budget) for p, h in zip(prefixes, history)]
            for i, reply in enumerate(generate_batch(model, fmt, contexts, cfg)):
                transcripts[i].turns.append(fmt.decode(reply))
                transcripts[i].actions.append(goals[i][t] if role == "interviewer" else None)
                history[i].append(reply + [fmt.eos_id])
    return transcripts
