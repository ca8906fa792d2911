"""The authentication environment: an interviewer (goal mode, its goal from a policy) talks with a partner
(persona mode); after each partner turn every identifier (:mod:`personagpt.auth.identify`) scores the K
candidate personas.

A policy sees one identifier (the guide): its scores, the turn and the goals used so far (:class:`View`).
Transcripts do not depend on the other identifiers, so those can also score them afterwards (:func:`rescore`).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import torch

from personagpt.auth.identify import (
    EmbeddingIdentifier,
    FactEmbeddings,
    Identifier,
    LikelihoodIdentifier,
    PooledEncoder,
    fact_identifiers,
)
from personagpt.control.selfplay import Transcript
from personagpt.errors import SettingsError
from personagpt.format import PromptFormat
from personagpt.generate.conversation import Conversation, SamplingConfig, generate_batch
from personagpt.generate.engine import Engine
from personagpt.generate.loop import strip_reply
from personagpt.generate.sampling import DEFAULT_COMMIT_TOKENS
from personagpt.models.precision import serving_model

IdentifierFactory = Callable[[list[list[str]]], Identifier]


def rank_of(scores: Sequence[float], truth: int) -> int:
    """0 when the truth scores strictly highest; ties count against it."""
    s = torch.as_tensor(scores)
    return int((s > s[truth]).sum()) + int((s == s[truth]).sum()) - 1


@dataclass
class Episode:
    """One interview: the candidates (the true persona at ``truth``), the transcript, and per identifier the
    candidates' scores after every exchange."""

    candidates: list[list[str]]
    truth: int
    transcript: Transcript
    scores: dict[str, list[list[float]]] = field(default_factory=dict)

    def ranks(self, identifier: str) -> list[int]:
        return [rank_of(s, self.truth) for s in self.scores[identifier]]

    def probabilities(self, identifier: str, of: int | None = None) -> list[float]:
        """Per turn, the softmax probability of candidate ``of`` (default: the truth) among all K."""
        return [float(torch.softmax(torch.tensor(s), 0)[self.truth if of is None else of])
                for s in self.scores[identifier]]

    @property
    def goals(self) -> list[str | None]:
        return [None if a == "(no goal)" else a for a in self.transcript.actions[::2]]

    def to_json(self) -> dict:
        return {"candidates": self.candidates, "truth": self.truth, "scores": self.scores,
                "transcript": self.transcript.to_json()}

    @classmethod
    def from_json(cls, value: dict) -> Episode:
        t = value["transcript"]
        return cls(value["candidates"], value["truth"], Transcript(t["p2_facts"], t["turns"], t["actions"]),
                   value.get("scores", {}))


@dataclass(frozen=True)
class Question:
    """An action that is the interviewer's turn itself, said as written (e.g. the yes/no question that checks one
    candidate's fact), instead of a goal the interviewer generates a turn for."""

    text: str
    fact: str = ""

    def __str__(self) -> str:
        return f"ask: {self.text}"


Action = str | Question | None  # a goal (action code or free text), a question said as written, or no goal


class Lookahead:
    """What a planner may try before the interviewer's turn, without knowing the truth: the question the
    interviewer would generate for a goal, the partner's answers under any candidate persona, and the guide
    identifier's scores after such a hypothetical exchange. Generation is batched (on the engine when there is one:
    every request is queued before any is read). Simulated answers are cut at ``answer_tokens``: a yes or no and the
    words after it are what identifies.

    A partner that answers best-of-N (``partner_candidates``) is simulated by the part of its choice that decides a
    yes or no: N answers sampled, the first that does not deny the persona's fact asked about kept (``checker``, a
    :class:`~personagpt.generate.consistency.ConsistencyChecker`). The partner itself also weighs fluency, persona and
    repetition, a forward pass per answer that the simulation saves."""

    def __init__(self, model, fmt: PromptFormat, turns: Sequence[str], identifier, sampling: SamplingConfig,
                 engine=None, seed: int | None = None, answer_tokens: int = 10, partner_candidates: int = 1,
                 checker=None) -> None:
        self.model, self.fmt, self.turns, self.identifier, self.engine = model, fmt, list(turns), identifier, engine
        self.sampling, self.seed = sampling, seed
        self.answer_sampling = replace(sampling, max_new_tokens=min(answer_tokens, sampling.max_new_tokens),
                                       num_candidates=1)
        self.partner_candidates = partner_candidates if checker is not None else 1
        self.checker = checker
        self.asked: dict[str, str] = {}  # goal -> the question generated for it (reused if the goal is chosen)
        self.rows = 0  # replies generated so far (its cost)

    def _generate(self, contexts: list[list[int]], keys: list[str], sampling: SamplingConfig,
                  guides: list[dict] | None = None) -> list[str]:
        """``guides``: each context's guidance arguments (goal guidance, on the engine; see ``questions``)."""
        if not contexts:
            return []
        self.rows += len(contexts)
        seeds = [None if self.seed is None else zlib.crc32(f"{self.seed} {len(self.turns)} {k}".encode())
                 for k in keys]
        if self.engine is not None:
            requests = [self.engine.submit(c, sampling, seed=s, **(g or {}))
                        for c, s, g in zip(contexts, seeds, guides or [None] * len(contexts))]
            replies = [strip_reply(list(r), self.fmt.eos_id) for r in requests]
        else:
            if seeds and seeds[0] is not None:
                torch.manual_seed(seeds[0])
            with torch.inference_mode():
                replies = generate_batch(self.model, self.fmt, contexts, sampling)
        return [self.fmt.decode(r) for r in replies]

    def questions(self, goals: Sequence[str]) -> list[str]:
        """The interviewer's turn for each goal, generated (once per goal and turn)."""
        missing = [g for g in dict.fromkeys(goals) if g not in self.asked]
        sessions = [Conversation.from_turns(self.model, self.fmt, self.turns, goal=g, max_context=self._limit())
                    for g in missing]
        contexts = [s.context_ids(self.sampling.max_new_tokens) for s in sessions]
        guides = [s.guide_request(c, self.sampling) for s, c in zip(sessions, contexts)]  # goal guidance, as chat
        self.asked.update(zip(missing, self._generate(contexts, [f"goal {g}" for g in missing], self.sampling,
                                                      guides)))
        return [self.asked[g] for g in goals]

    def answers(self, questions: Sequence[str], personas: Sequence[Sequence[str]],
                history: bool = False) -> list[list[str]]:
        """[question][persona]: the partner's answer to each question had it each persona. By default the question
        is asked afresh, without the interview so far: the answer to a yes/no question about a fact hardly depends
        on it, and the prompt is then the persona's prefix (kept in the engine's prefix cache across turns) and the
        question's few tokens, where with the history every persona's prompt is encoded anew each turn (measured:
        32 planner interviews had not finished one in 21 minutes that way on a 2-core EPYC). On an engine the first
        question goes alone, so that the others find each persona's prompt in the cache."""
        n = self.partner_candidates
        contexts, keys = [], []
        for q in questions:
            for persona in personas:
                conversation = Conversation.from_turns(self.model, self.fmt, (self.turns if history else []) + [q],
                                                       persona=persona, max_context=self._limit())
                context = conversation.context_ids(self.answer_sampling.max_new_tokens)
                key = f"answer {q} {' '.join(persona)}"
                contexts += [context] * n
                keys += [key] + [f"{key} {j}" for j in range(1, n)]
        first = len(personas) * n if self.engine is not None else 0
        flat = (self._generate(contexts[:first], keys[:first], self.answer_sampling)
                + self._generate(contexts[first:], keys[first:], self.answer_sampling))
        return [[self._faithful(flat[(i * len(personas) + j) * n:][:n], q, persona)
                 for j, persona in enumerate(personas)] for i, q in enumerate(questions)]

    def _faithful(self, samples: list[str], question: str, persona: Sequence[str]) -> str:
        """The first sample that does not deny the fact of ``persona`` that ``question`` asks about."""
        if len(samples) == 1:
            return samples[0]
        asked = self.checker.asked_fact(question, persona)
        return next((s for s in samples if not self.checker.denies(s, asked)), samples[0])

    def scores_after(self, questions: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        """[n, K]: the guide's scores after each (question, answer) exchange, nothing committed."""
        if not hasattr(self.identifier, "preview_many"):
            raise SettingsError("planning needs the sentence or exchange identifier as its guide")
        return self.identifier.preview_many(questions, answers)

    def _limit(self) -> int | None:
        return self.engine.capacity if self.engine is not None else None


@dataclass
class View:
    """What a policy sees before the interviewer's turn ``turn`` (0-based)."""

    turn: int
    scores: torch.Tensor
    used: list[str | None]
    preview: Callable[[str], float] = lambda goal: 0.0
    candidates: list[list[str]] = field(default_factory=list)
    lookahead: Lookahead | None = None
    # the conversation so far, only as the key of seeded random draws (it holds the truth's facts: nothing else may
    # read it); a policy drawing a random goal from it draws the random baseline's goal (common random numbers)
    transcript: Transcript | None = None


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


def sample_sets(pool: Sequence[Sequence[str]], count: int, k: int, seed: int = 0) -> list[tuple[list[list[str]], int]]:
    """``count`` interviews: true personas drawn from ``pool`` with ``seed``, each with ``k - 1`` distractors from it
    (:func:`candidate_sets`, the same seed). Every run, policy and bench that draws with the same seed interviews
    the same people."""
    if count > len(pool):
        raise SettingsError(f"{count} interviews need as many personas; the pool has {len(pool)}")
    return candidate_sets(random.Random(seed).sample(list(pool), count), pool, k, seed)


def likelihood_identifiers(model, fmt: PromptFormat) -> dict[str, IdentifierFactory]:
    return {"likelihood": lambda candidates: LikelihoodIdentifier(model, fmt, candidates)}


def interview(model, fmt: PromptFormat, candidates: list[list[str]], truth: int, policy, turns: int = 8,
              sampling: SamplingConfig | None = None, seed: int | None = None, engine=None,
              identifiers: Mapping[str, IdentifierFactory] | None = None,
              on_turn: Callable[[Episode], None] | None = None,
              partner_sampling: SamplingConfig | None = None) -> Episode:
    """Run one interview. The policy's ``choose(view)`` (or a baseline's ``next_goal(transcript)``) gives each
    interviewer turn's goal (None: no goal, the interviewer chats freely); ``view`` follows the first identifier.
    The partner answers with ``partner_sampling`` (default: ``sampling``; e.g. best-of-N, as the chat does)."""
    identifiers = likelihood_identifiers(model, fmt) if identifiers is None else identifiers
    episode = Episode(candidates, truth, Transcript(p2_facts=list(candidates[truth])),
                      {name: [] for name in identifiers})
    running = {name: make(candidates) for name, make in identifiers.items()}
    guide = next(iter(running), None)
    # off the engine's steps too (best-of-N scoring), the interview computes as the engine does
    kwargs = dict(sampling=sampling, engine=engine, fast=engine.fast_path.mode if engine is not None else None)
    interviewer = Conversation.with_persona(model, fmt, [], speaker=1, seed=None if seed is None else 2 * seed,
                                            **kwargs)
    partner = Conversation.with_persona(model, fmt, candidates[truth], seed=None if seed is None else 2 * seed + 1,
                                        **(kwargs | {"sampling": partner_sampling or sampling}))
    best_of = partner.sampling.num_candidates if partner.sampling.do_sample else 1
    for turn in range(turns):
        previews: dict[str, tuple] = {}

        def preview(goal: str) -> float:
            """The truth's log-probability under the guide after trying ``goal`` (an oracle's look ahead)."""
            if not hasattr(running.get(guide), "preview"):
                raise SettingsError("a look-ahead policy needs a forkable identifier (sentence or embedding) as its guide")
            turns_so_far = episode.transcript.turns
            ask = Conversation.from_turns(model, fmt, turns_so_far, goal=goal, seed=zlib.crc32(f'{seed} {turn} {goal}'.encode()),
                                          **kwargs)
            question = ask.respond()
            answer = Conversation.from_turns(model, fmt, turns_so_far + [question], persona=candidates[truth],
                                             seed=zlib.crc32(f'{seed} {turn} {goal} answer'.encode()),
                                             **(kwargs | {"sampling": partner.sampling})).respond()
            after, encoded = running[guide].preview(answer, question)
            previews[goal] = (question, answer, encoded)
            return float(torch.log_softmax(after, 0)[truth])

        scores = torch.tensor(episode.scores[guide][-1]) if turn and guide else torch.zeros(len(candidates))
        lookahead = Lookahead(model, fmt, episode.transcript.turns, running.get(guide), sampling or SamplingConfig(),
                              engine, seed, partner_candidates=best_of,
                              checker=partner.checker if best_of > 1 else None)
        view = View(turn, scores, episode.goals, preview, candidates, lookahead, episode.transcript)
        goal = policy.choose(view) if hasattr(policy, "choose") else policy.next_goal(episode.transcript)
        encoded = None
        if isinstance(goal, Question) or goal in lookahead.asked:  # the turn is known: said, not generated
            question = goal.text if isinstance(goal, Question) else lookahead.asked[goal]
            interviewer.add_turn(question)
            partner.add_turn(question)
            answer = partner.respond()
        elif goal in previews:
            question, answer, encoded = previews[goal]
            interviewer.add_turn(question)
            partner.add_turn(question)
            partner.add_turn(answer)
        else:
            if goal is None:
                interviewer.set_persona([], speaker=1)
            else:
                interviewer.set_goal(goal)
            question = interviewer.respond()
            partner.add_turn(question)
            answer = partner.respond()
        interviewer.add_turn(answer)
        episode.transcript.turns += [question, answer]
        episode.transcript.actions += [str(goal) if goal else "(no goal)", None]
        for name, identifier in running.items():
            extra = {"encoded": encoded} if name == guide and encoded is not None else {}
            episode.scores[name].append(identifier.add_exchange(question, answer, **extra).tolist())
        if on_turn:
            on_turn(episode)
    return episode


def rescore(episodes: Sequence[Episode], name: str, make: IdentifierFactory,
            progress: Callable[[int], None] | None = None) -> None:
    """Score finished interviews with another identifier (their transcripts do not depend on it)."""
    for episode in episodes:
        identifier = make(episode.candidates)
        turns = episode.transcript.turns
        episode.scores[name] = [identifier.add_exchange(turns[i], turns[i + 1]).tolist()
                                for i in range(0, len(turns) - 1, 2)]
        if progress:
            progress(1)


def run_interviews(model, fmt: PromptFormat, sets: Sequence[tuple[list[list[str]], int]], policy, turns: int = 8,
                   sampling: SamplingConfig | None = None, seed: int = 0, engine=None, workers: int = 8,
                   identifiers: Mapping[str, IdentifierFactory] | None = None,
                   on_episode: Callable[[int, Episode], None] | None = None,
                   indices: Sequence[int] | None = None,
                   partner_sampling: SamplingConfig | None = None) -> list[Episode]:
    """Many interviews; with an ``engine`` they run side by side (their decoding steps batched). Interview ``i``
    plays ``sets[i]`` with seed ``seed + i``; ``indices`` plays only those (a resumed run), and ``on_episode``
    receives each index and interview as it finishes."""
    def one(i: int) -> Episode:
        episode = interview(model, fmt, *sets[i], policy, turns, sampling, seed + i, engine, identifiers,
                            partner_sampling=partner_sampling)
        if on_episode:
            on_episode(i, episode)
        return episode

    chosen = range(len(sets)) if indices is None else indices
    if engine is None:
        return [one(i) for i in chosen]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, chosen))


class SelfPlay:
    """Interviews side by side over one engine (their decoding steps batched), scored after every exchange by the
    sentence and exchange identifiers and the exchange identifier calibrated to this partner's answers
    (``"calibrated"``; none of them if ``sentence=False``) and, when a head is given, the embedding identifier. A
    policy sees the ``guide`` of :meth:`play`; with no identifier at all the transcripts can be scored
    afterwards with :func:`rescore`. The partner answers best-of-``partner_candidates`` (1: one sample), as the chat
    does by default with 4: it then seldom denies a fact of its persona that it is asked about.

    ``decoding="exact"`` (the default) decodes with fp32 weights and activations, where a reply is a function of
    its seed and its prompt whatever else runs in the batch; ``"fast"`` takes the path this CPU decodes fastest
    with (int8 weights and bf16 activations on most), whose rounding follows the batch and the prefix cache. Two
    policies compared interview by interview (common random numbers) need exact: measured on a 2-core AMD EPYC
    (``bench/experiments/auth_reply_reproducibility.py``), 16 of 16 first answers were the same words when the same interviews
    were replayed in other batches in fp32, 2 of 16 in int8, at about the same play time."""

    DECODING = {"exact": "fp32", "fast": None}

    def __init__(self, model, fmt: PromptFormat, head=None, turns: int = 8, sampling: SamplingConfig | None = None,
                 workers: int = 32, sentence: bool = True, partner_candidates: int = 1,
                 decoding: str = "exact") -> None:
        self.model, self.fmt, self.turns, self.sampling, self.workers = model, fmt, turns, sampling, workers
        if partner_candidates < 1:
            raise SettingsError("partner_candidates must be >= 1")
        self.partner_candidates = partner_candidates
        self.partner_sampling = (replace(sampling or SamplingConfig(), num_candidates=partner_candidates,
                                         commit_tokens=DEFAULT_COMMIT_TOKENS) if partner_candidates > 1 else None)
        # a planner's simulated answers reuse each candidate's prompt and history from the cache: room for them
        if decoding not in self.DECODING:
            raise SettingsError(f"decoding must be one of {', '.join(self.DECODING)}, not {decoding!r}")
        self.decoding = decoding
        self.engine = Engine(model if decoding == "exact" else serving_model(model, fmt=fmt), fmt, max_batch=32,
                             max_queue=8192, prefix_cache_tokens=65536, fast=self.DECODING[decoding],
                             backend="torch" if decoding == "exact" else None)
        self.identifiers: dict[str, IdentifierFactory] = {}
        self.facts = None
        if sentence:
            self.facts = FactEmbeddings()
            self.identifiers.update(fact_identifiers(self.facts, partner_candidates))
        if head is not None:
            encoder = PooledEncoder(model, fmt)
            self.identifiers["embedding"] = lambda candidates: EmbeddingIdentifier(encoder, head, candidates)
    def play(self, sets: Sequence[tuple[list[list[str]], int]], policy, seed: int = 0,
             on_episode: Callable[[int, Episode], None] | None = None, guide: str | None = None,
             indices: Sequence[int] | None = None) -> list[Episode]:
        if guide is not None and guide not in self.identifiers:
            raise SettingsError(f"the {guide} identifier is not available here")
        ordered = {name: self.identifiers[name] for name in sorted(self.identifiers, key=lambda n: n != guide)}
        return run_interviews(self.model, self.fmt, sets, policy, self.turns, self.sampling, seed, self.engine,
                              self.workers, ordered, on_episode, indices, self.partner_sampling)

    def close(self) -> None:
        self.engine.close()
