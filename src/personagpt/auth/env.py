"""The authentication environment: an interviewer (action mode, its goal from a policy) talks with a partner
(persona mode); after each partner turn the likelihood identifier ranks K candidate personas.

The identifier is :class:`~personagpt.scoring.PersonaRanker`: every candidate scores the partner's turns by their
likelihood under that persona, incrementally (a turn costs its new tokens per candidate).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from personagpt.errors import SettingsError
from personagpt.format import PromptFormat
from personagpt.generation import Conversation, SamplingConfig
from personagpt.scoring import PersonaRanker
from personagpt.selfplay import Transcript


@dataclass
class Episode:
    """One interview: the candidates (the true persona at ``truth``), the transcript, and per partner turn the
    true persona's rank (0 = identified) and posterior probability among the candidates."""

    candidates: list[list[str]]
    truth: int
    transcript: Transcript
    ranks: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    log_likelihoods: list[list[float]] = field(default_factory=list)  # per turn, every candidate's total


def candidate_sets(personas: Sequence[Sequence[str]], pool: Sequence[Sequence[str]], k: int,
                   seed: int = 0) -> list[tuple[list[list[str]], int]]:
    """For each true persona, ``k`` candidates: it and ``k - 1`` distractors from ``pool`` (never itself), in a
    random order; returns (candidates, index of the true one)."""
    rng = random.Random(seed)
    sets = []
    for persona in personas:
        others = [p for p in pool if list(p) != list(persona)]
        if len(others) < k - 1:
            raise SettingsError(f"K = {k} needs {k - 1} distractors, but the pool has only {len(others)} other personas")
        candidates = [list(persona)] + [list(p) for p in rng.sample(others, k - 1)]
        order = list(range(k))
        rng.shuffle(order)
        sets.append(([candidates[i] for i in order], order.index(0)))
    return sets


def interview(model, fmt: PromptFormat, candidates: list[list[str]], truth: int, policy, turns: int = 8,
              sampling: SamplingConfig | None = None, seed: int | None = None, engine=None,
              on_turn: Callable[[Episode], None] | None = None) -> Episode:
    """Run one interview. ``policy.next_goal(transcript)`` gives each interviewer turn's goal (None: no goal, the
    interviewer chats freely)."""
    episode = Episode(candidates, truth, Transcript(p2_facts=list(candidates[truth])))
    kwargs = dict(sampling=sampling, engine=engine)
    interviewer = Conversation.with_persona(model, fmt, [], speaker=1, seed=None if seed is None else 2 * seed,
                                            **kwargs)
    partner = Conversation.with_persona(model, fmt, candidates[truth], seed=None if seed is None else 2 * seed + 1,
                                        **kwargs)
    ranker = PersonaRanker(model, fmt, candidates, speaker=2)
    for _ in range(turns):
        goal = policy.next_goal(episode.transcript)
        if goal is None:
            interviewer.set_persona([], speaker=1)
        else:
            interviewer.set_action(goal)
        question = interviewer.respond()
        partner.add_turn(question)
        answer = partner.respond()
        interviewer.add_turn(answer)
        ranker.add_turns([question, answer])
        episode.transcript.turns += [question, answer]
        episode.transcript.actions += [goal or "(no goal)", None]
        totals = ranker.totals()
        episode.log_likelihoods.append(totals.tolist())
        episode.ranks.append(int((totals > totals[truth]).sum()) + int((totals == totals[truth]).sum()) - 1)
        episode.probabilities.append(float(torch.softmax(totals, 0)[truth]))
        if on_turn:
            on_turn(episode)
    return episode


def run_interviews(model, fmt: PromptFormat, sets: Sequence[tuple[list[list[str]], int]], policy, turns: int = 8,
                   sampling: SamplingConfig | None = None, seed: int = 0, engine=None, workers: int = 8,
                   on_episode: Callable[[Episode], None] | None = None) -> list[Episode]:
    """Many interviews; with an ``engine`` they run side by side (their decoding steps batched)."""
    def one(i: int) -> Episode:
        episode = interview(model, fmt, *sets[i], policy, turns, sampling, seed + i, engine)
        if on_episode:
            on_episode(episode)
        return episode

    if engine is None:
        return [one(i) for i in range(len(sets))]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(sets))))
