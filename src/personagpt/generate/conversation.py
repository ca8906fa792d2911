"""Turn generation: a multi-turn session that reuses its KV cache, and batched generation.

A :class:`Conversation` keeps the prompt prefix (persona or action), the turns so far, and the model's KV cache
for the tokens it has already seen. Each turn only the new tokens are encoded: before generating, the cache is
cropped to the longest prefix it shares with the new context (all of it in a normal turn; the persona prefix
after old turns were dropped to fit the context window; less when the action goal changes).

Sessions decode with their own short loop rather than ``model.generate``: at chat model sizes on a CPU the
per-token cost is dominated by framework overhead (``torch.cat`` of the whole cache every token, sorting the full
vocabulary for top-p), which the loop avoids with a preallocated cache and top-k-first filtering. Its sampling
rules are those of transformers' processors (repetition penalty, temperature, top-k, then top-p).
Beam search and batches use ``model.generate``.

``compile=True`` goes one step further: the single-token forward pass runs through ``torch.compile`` over a
fixed-shape ``StaticCache`` (sized in powers of two, so a session compiles for a few shapes at most), which
removes most of the remaining per-op overhead; prefills stay eager. It pays a one-off compilation (seconds to a
minute) and suits long sessions and servers, not one-shot commands.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace

import torch
from transformers.cache_utils import Cache, StaticCache

from personagpt.errors import ContextOverflowError
from personagpt.models.fastpath import fast_decoder
from personagpt.format import PromptFormat
from personagpt.generate.kvcache import ReservedCache, Step, capacity, compiled_step, crop_to_prefix, eager_step
from personagpt.generate.best_of_n import (PrefixScorer, RerankWeights, best_of_n_lockstep, best_of_n_requests,
                                          candidates_loop, default_labeler, rank_candidates, recorded_scores, repeated)
from personagpt.generate.consistency import ConsistencyChecker, opening_ban, yes_no_openers
from personagpt.generate.loop import Guide, TokenLoop, strip_reply
from personagpt.generate.replay import Replay, generate_replays
from personagpt.models.load import context_limit
from personagpt.generate.sampling import GREEDY, SamplingConfig

__all__ = ["GREEDY", "ContextOverflowError", "Conversation", "SamplingConfig", "TextStream",
           "decode", "decode_tokens", "fit_context", "generate_batch"]


def fit_context(prefix: Sequence[int], turns: Sequence[Sequence[int]], budget: int) -> list[int]:
    """``prefix`` + as many of the newest ``turns`` as fit in ``budget`` tokens (the prefix is never dropped)."""
    kept: list[Sequence[int]] = []
    used = len(prefix)
    for turn in reversed(turns):
        if used + len(turn) > budget:
            break
        kept.append(turn)
        used += len(turn)
    if turns and not kept:
        raise ContextOverflowError(
            f"the prompt prefix ({len(prefix)} tokens) and the last turn ({len(turns[-1])} tokens) "
            f"exceed the context budget of {budget} tokens")
    if not turns and used > budget:
        raise ContextOverflowError(f"the prompt prefix alone ({used} tokens) exceeds the budget of {budget} tokens")
    return list(prefix) + [i for turn in reversed(kept) for i in turn]


class Conversation:
    """A dialogue session for one bot: a fixed prompt prefix plus the growing history.

    ``add_turn`` records the other speaker's utterance; ``respond`` generates, records and returns the bot's.
    """

    def __init__(self, model, fmt: PromptFormat, prefix: Sequence[int], *, sampling: SamplingConfig | None = None,
                 max_context: int | None = None, use_cache: bool = True, compile: bool = False,
                 seed: int | None = None, engine=None, fast: str | None = None, labeler=None) -> None:
        """``engine`` (a :class:`~personagpt.generate.engine.Engine`) generates this session's turns batched with other
        sessions' and reuses cached prefixes; without it the session decodes on its own KV cache, through the
        fast path this CPU gets (:mod:`personagpt.models.fastpath`; ``fast="off"``: the reference model). ``labeler``
        judges goals for best-of-N in goal mode (default: :func:`personagpt.generate.best_of_n.default_labeler`)."""
        self.model = model
        self.fast = "off" if compile else fast
        self.decoder = fast_decoder(model, self.fast) if model is not None else None
        self.engine = engine
        self.goal: str | None = None  # goal mode: the goal of the bot's next turn
        self.facts: list[str] = []  # the bot's persona facts
        self.compile = compile
        self.fmt = fmt
        self.prefix = list(prefix)
        self.sampling = sampling or SamplingConfig()
        self.max_context = max_context or (engine.capacity if engine is not None else context_limit(model))
        self.use_cache = use_cache
        self.turns: list[str] = []
        self.turn_ids: list[list[int]] = []
        self._cache: Cache | None = None
        self._cached_ids: list[int] = []
        self.labeler = labeler
        self.weights = None  # best-of-N scoring weights (a rerank.RerankWeights; None: its defaults)
        self._checker = None
        # best-of-N: the caches of the prompt and of the reference (no persona, or no goal) across turns
        self._prompt_scorer = self._reference_scorer = None
        self._guide_scorer = None  # guidance: the cache of the guide prompt across turns
        # each conversation samples from its own generator: replies depend on its seed and its turns only,
        # however many conversations a process interleaves
        self.generator = torch.Generator(device=model.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()
        self._check_fits([])

    @classmethod
    def with_persona(cls, model, fmt: PromptFormat, facts: Sequence[str], speaker: int = 2,
                     **kwargs) -> Conversation:
        """The bot speaks in character (as p2, or p1 when it opened the conversation)."""
        conversation = cls(model, fmt, fmt.persona_prefix(facts, speaker), **kwargs)
        conversation.facts = list(facts)
        return conversation

    @classmethod
    def with_goal(cls, model, fmt: PromptFormat, goal: str, facts: Sequence[str] = (), **kwargs) -> Conversation:
        """The bot is p1 and its next turn pursues ``goal``; change it per turn with :meth:`set_goal`."""
        conversation = cls(model, fmt, fmt.goal_prefix(goal, facts), **kwargs)
        conversation.goal, conversation.facts = goal.strip(), list(facts)
        return conversation

    @classmethod
    def from_turns(cls, model, fmt: PromptFormat, turns: Sequence[str], *, persona: Sequence[str] = (),
                   goal: str | None = None, speaker: int = 2, **kwargs) -> Conversation:
        """A session rebuilt from its history (``turns[0]`` is p1's), e.g. for a stateless request: the bot
        speaks next in character with ``persona``, or, given a ``goal``, pursues it in goal mode (``persona``
        are then the bot's own facts). The oldest turns are dropped to fit the context when it is generated."""
        if goal is not None:
            conversation = cls.with_goal(model, fmt, goal, persona, **kwargs)
        else:
            conversation = cls.with_persona(model, fmt, persona, speaker, **kwargs)
        conversation.turns = [t.strip() for t in turns]
        conversation.turn_ids = [fmt.utterance(t) for t in turns]
        conversation._check_fits(conversation.turn_ids)
        return conversation

    def set_persona(self, facts: Sequence[str], speaker: int = 2) -> None:
        """The bot (p2, or p1) speaks in character with ``facts`` (none: freely) from its next turn on."""
        self.prefix = self.fmt.persona_prefix(facts, speaker)
        self.facts, self.goal = list(facts), None
        self._check_fits(self.turn_ids)

    def set_goal(self, goal: str, facts: Sequence[str] = ()) -> None:
        self.prefix = self.fmt.goal_prefix(goal, facts)
        self.goal, self.facts = goal.strip(), list(facts)
        self._check_fits(self.turn_ids)

    def add_turn(self, text: str) -> None:
        """Record the other speaker's utterance. Raises ContextOverflowError (history unchanged) if too long."""
        ids = self.fmt.utterance(text)
        self._check_fits(self.turn_ids + [ids])
        self.turns.append(text.strip())
        self.turn_ids.append(ids)

    def context_ids(self, max_new_tokens: int | None = None) -> list[int]:
        """The prompt the next turn is generated from, with the oldest turns dropped to fit the window."""
        budget = self.max_context - (max_new_tokens or self.sampling.max_new_tokens)
        return fit_context(self.prefix, self.turn_ids, budget)

    def guidance(self, cfg: SamplingConfig | None = None) -> float:
        """The guidance scale this turn uses: the goal's in goal mode, the persona's in persona mode."""
        cfg = cfg or self.sampling
        if self.goal is not None:
            return cfg.goal_guidance
        return cfg.persona_guidance if self.facts else 1.0

    def guide_ids(self, ids: Sequence[int]) -> list[int]:
        """The prompt ``ids`` without its goal (goal mode: ``<|act|> <|p1|> [facts] <|sep|> <|start|>`` + history)
        or without its persona facts (persona mode): what classifier-free guidance steers away from."""
        history = list(ids[len(self.prefix):])
        if self.goal is not None:
            return self.fmt.goalless_prefix(self.facts) + history
        return self.fmt.persona_prefix([], 1 if self.prefix[0] == self.fmt.p1_id else 2) + history

    def guide_request(self, ids: Sequence[int], cfg: SamplingConfig | None = None) -> dict:
        """The engine's guidance arguments for the prompt ``ids`` (``guide_prompt``, ``guidance``)."""
        scale = self.guidance(cfg)
        return {"guide_prompt": self.guide_ids(ids) if scale != 1 else None, "guidance": scale}

    def _guide(self, ids: Sequence[int], cfg: SamplingConfig, rows: int) -> Guide | None:
        scale = self.guidance(cfg)
        if scale == 1.0:
            return None
        if self._guide_scorer is None:
            self._guide_scorer = PrefixScorer(self.decoder)
        guide_ids = self.guide_ids(ids)
        cache, logits = self._guide_scorer.prefill(guide_ids, raw=True)
        return Guide(logits.expand(rows, -1), repeated(cache, rows), len(guide_ids), scale)

    def turn_sampling(self, cfg: SamplingConfig | None = None) -> SamplingConfig:
        """``cfg`` for the bot's next turn. With ``consistent_answers``, when the last turn ends with a yes/no question
        about the persona (one of its facts, or a thing of a fact's kind it does not have), the opening words that
        would answer against the persona are banned (:func:`~personagpt.generate.consistency.opening_ban`); with
        ``yes_no_first`` the reply opens with the yes or no the persona implies."""
        cfg = cfg or self.sampling
        if self.goal is not None:
            cfg = cfg.for_goal()
        if not cfg.consistent_answers or cfg.opening_ban or not self.facts or not self.turns:
            return cfg
        asked = self.checker.asked_fact(self.turns[-1], self.facts)
        if asked is None:
            return cfg
        only = yes_no_openers(self.fmt.tokenizer, asked.expected) if cfg.yes_no_first else ()
        return replace(cfg, opening_ban=opening_ban(self.fmt.tokenizer, asked.expected, self.fmt.eos_id),
                       opening_only=only)

    def respond(self, sampling: SamplingConfig | None = None) -> str:
        """Generate, record and return the bot's next turn (the joined :meth:`stream`)."""
        return "".join(self.stream(sampling))

    def stream(self, sampling: SamplingConfig | None = None) -> Iterator[str]:
        """Generate the bot's next turn, yielding text pieces as tokens are decoded.

        Pieces never split a multi-byte character and join to the recorded turn. The turn is recorded when
        the stream ends; a stream closed early (a cancelled request, Ctrl-C) records what was generated so far.
        """
        cfg = self.turn_sampling(sampling)
        ids = self.context_ids(cfg.max_new_tokens)
        text = TextStream(self.fmt)
        if cfg.num_beams > 1:
            with torch.inference_mode():
                reply = generate_batch(self.model, self.fmt, [ids], cfg)[0]
            self._record(reply)
            yield self.turns[-1]
            return
        if cfg.num_candidates > 1 and cfg.do_sample:  # greedy candidates would all be the same reply
            yield from self._stream_best_of_n(ids, cfg, text)
            return
        if self.engine is not None:
            yield from self._stream_from_engine(ids, cfg, text)
            return
        needed = len(ids) + cfg.max_new_tokens
        if not self.use_cache or self._cache is None or needed > capacity(self._cache):
            self._cache, self._cached_ids = self._new_cache(needed), []
        shared = self._reuse_cache(ids)
        step = compiled_step(self.model) if self.compile else None
        generated: list[int] = []

        guide = self._guide(ids, cfg, 1)

        def tokens():
            for token in decode_tokens(self.decoder, self._cache, ids, shared, cfg, self.fmt, step, self.generator,
                                       guide):
                generated.append(token)
                yield token

        try:
            yield from text.pieces(tokens())
        finally:
            self._cached_ids = (ids + generated)[: int(self._cache.get_seq_length())]
            self._record(strip_reply(generated, self.fmt.eos_id))

    def _stream_from_engine(self, ids: list[int], cfg: SamplingConfig, text: TextStream) -> Iterator[str]:
        request = self.engine.submit(ids, cfg, self.generator, **self.guide_request(ids, cfg))
        try:
            yield from text.pieces(request)
        finally:
            request.cancel()  # a no-op once finished; frees the slot when the consumer stopped early
            self._record(strip_reply(list(request.tokens), self.fmt.eos_id))

    def _stream_best_of_n(self, ids: list[int], cfg: SamplingConfig, text: TextStream) -> Iterator[str]:
        """Best-of-N (:mod:`personagpt.generate.best_of_n`): ``cfg.num_candidates`` replies sampled side by side; after
        ``cfg.commit_tokens`` tokens (0: once all have ended) the best scored one is chosen and streamed, the
        others dropped."""
        generated: list[int] = []
        if self.engine is not None:  # the engine batches the N requests with everyone else's
            guide = self.guide_request(ids, cfg)
            if guide["guide_prompt"] is None and (self.weights or RerankWeights()).pmi(self.goal):
                # the reference rides beside each candidate as a row that steers nothing: its PMI costs no pass
                guide = {"guide_prompt": self.reference_ids(ids), "guidance": 1.0}
            requests = self.engine.submit_many(ids, cfg.num_candidates, cfg, self.generator, **guide)
            tokens = best_of_n_requests(requests, cfg.commit_tokens, self.fmt.eos_id, lambda replies, finished:
                                        self.choose(ids, replies, finished, *recorded_scores(requests, replies,
                                                                                             finished)))
        else:
            if self._prompt_scorer is None:
                self._prompt_scorer = PrefixScorer(self.decoder)
            loop = candidates_loop(self.decoder, self.fmt, ids, cfg.num_candidates, cfg, self.generator,
                                   self._prompt_scorer, self._guide(ids, cfg, cfg.num_candidates))
            tokens = best_of_n_lockstep(loop, cfg.commit_tokens, lambda replies, finished: self.choose(
                ids, replies, finished, loop.logprobs, loop.guide_logprobs))
        try:
            for token in tokens:
                generated.append(token)
                yield from text.pieces([token])
            yield from text.pieces([])
        finally:
            tokens.close()
            if self.engine is None and len(loop.rows) == 1:  # the kept row's keys/values serve the next turn
                self._prompt_scorer.keep(loop.cache, (ids + generated)[: loop.position])
            self._record(strip_reply(generated, self.fmt.eos_id))

    def choose(self, ids: Sequence[int], replies: Sequence[Sequence[int]], finished: Sequence[bool],
               conditioned: Sequence[float] | None = None, unconditioned: Sequence[float] | None = None) -> int:
        """The index of the best of ``replies`` to the prompt ``ids`` (whole or, where not ``finished``, begun),
        scored by :func:`~personagpt.generate.best_of_n.rank_candidates` against this conversation's persona or goal
        (``conditioned``/``unconditioned``: their log-likelihoods with and without it, where sampling recorded them)."""
        if self._reference_scorer is None:
            self._reference_scorer = PrefixScorer(self.decoder)
        reference = self.reference_ids(ids)
        bot_turns = [t for i, t in enumerate(self.turns) if (len(self.turns) - i) % 2 == 0]
        asked = self.checker.asked_fact(self.turns[-1], self.facts) if self.turns and self.facts else None
        ranked = rank_candidates(self.decoder, self.fmt, ids, reference, replies, bot_turns, self.goal,
                                 labeler=self._labeler(), scorer=self._reference_scorer, finished=finished,
                                 conditioned=None if conditioned is None else list(conditioned),
                                 unconditioned=None if unconditioned is None else list(unconditioned),
                                 checker=self.checker, asked=asked, weights=self.weights or RerankWeights())
        return ranked[0].index

    def reference_ids(self, ids: Sequence[int]) -> list[int]:
        """The prompt ``ids`` without its persona (or its goal): what best-of-N's persona/goal PMI is taken against."""
        history = list(ids[len(self.prefix):])
        if self.goal is None:
            return self.fmt.persona_prefix([]) + history
        return self.fmt.persona_prefix(self.facts, speaker=1) + history

    def _labeler(self):
        if self.labeler is None:
            self.labeler = default_labeler()
        return self.labeler

    @property
    def checker(self):
        """The persona-consistency check of best-of-N (its sentence encoder is the goal labeler's, if any)."""
        if self._checker is None:
            labeler = self._labeler()
            self._checker = ConsistencyChecker(labeler.embedder if getattr(labeler, "semantic", False) else None)
        return self._checker

    def _record(self, reply: list[int]) -> None:
        self.turns.append(self.fmt.decode(reply))
        self.turn_ids.append(reply + [self.fmt.eos_id])

    def reset(self) -> None:
        """Forget the history (the prefix stays)."""
        self.turns, self.turn_ids = [], []

    def truncate(self, count: int) -> None:
        """Keep only the first ``count`` turns (e.g. withdraw a cut-off reply and the message it answered)."""
        del self.turns[count:], self.turn_ids[count:]

    def replace_last(self, text: str) -> None:
        """Swap the last turn for ``text`` (a person's correction of the bot's turn)."""
        self.turns[-1] = text.strip()
        self.turn_ids[-1] = self.fmt.utterance(text)

    def invalidate_cache(self) -> None:
        """Forget cached keys/values, e.g. after the model's weights changed (the fast path's copies too)."""
        self._cache, self._cached_ids = None, []
        self._prompt_scorer = self._reference_scorer = self._guide_scorer = None
        self.model.__dict__.pop("_personagpt_fast", None)
        self.decoder = fast_decoder(self.model, self.fast)

    def _new_cache(self, needed: int) -> Cache:
        if not self.compile:
            return ReservedCache()
        capacity = 256
        while capacity < needed:
            capacity *= 2
        return StaticCache(config=self.model.config, max_cache_len=min(capacity, max(needed, self.max_context)))

    def _reuse_cache(self, ids: list[int]) -> int:
        """Crop the cache to the longest prefix it shares with ``ids``; returns that length."""
        return crop_to_prefix(self._cache, self._cached_ids, ids)

    def _check_fits(self, turn_ids: Sequence[Sequence[int]]) -> None:
        fit_context(self.prefix, turn_ids, self.max_context - self.sampling.max_new_tokens)


@torch.inference_mode()
def generate_batch(model, fmt: PromptFormat, contexts: Sequence[Sequence[int]],
                   sampling: SamplingConfig | None = None) -> list[list[int]]:
    """Generate one reply (ids, without eos) for each context, all in one batch: through the token step of
    :mod:`~personagpt.generate.loop` (a replay of each context, left-padded into one cache), or with transformers'
    ``generate`` for beam search. Sampled rows draw from the global RNG, as ``generate`` does."""
    cfg = sampling or SamplingConfig()
    if not contexts:
        return []
    if cfg.num_beams == 1:
        replays = [Replay(list(c), [], [0]) for c in contexts]
        return [replies[0] for replies in generate_replays(model, fmt, replays, cfg, batch_size=len(contexts))]
    pad = fmt.tokenizer.pad_token_id
    width = max(len(c) for c in contexts)
    rows = [[pad] * (width - len(c)) + list(c) for c in contexts]
    mask = [[0] * (width - len(c)) + [1] * len(c) for c in contexts]
    device = model.device
    with warnings.catch_warnings():  # transformers' own generate still passes the old name to the model's forward
        warnings.filterwarnings("ignore", message=".*past_key_values.*is deprecated", category=FutureWarning)
        out = model.generate(torch.tensor(rows, device=device), attention_mask=torch.tensor(mask, device=device),
                             **cfg.generate_kwargs(fmt))
    return [strip_reply(row[width:], fmt.eos_id) for row in out.tolist()]


class TextStream:
    """Incremental detokenization: the text a token adds, held back while it ends inside a UTF-8 character.

    The pieces join to ``fmt.decode`` of all the tokens: leading and trailing whitespace is never emitted (a
    space is held until a visible character follows it), special tokens and eos add nothing. ``raw`` keeps the
    text as the tokens spell it, leading space included (a text completion continues its prompt: " Paris").
    """

    def __init__(self, fmt: PromptFormat, raw: bool = False) -> None:
        self.fmt, self.raw = fmt, raw
        self.ids: list[int] = []
        self.emitted = ""

    def _text(self) -> str:
        text = self.fmt.tokenizer.decode(self.ids, skip_special_tokens=True)
        return text.rstrip() if self.raw else text.strip()

    def push(self, token: int) -> str:
        if token == self.fmt.eos_id or token in self.fmt.special_ids:
            return ""
        self.ids.append(token)
        text = self._text()
        if text.endswith("\ufffd") or not text.startswith(self.emitted):
            return ""  # an incomplete character (or a rewrite, which byte-level BPE never does): wait
        piece, self.emitted = text[len(self.emitted):], text
        return piece

    def pieces(self, tokens) -> Iterator[str]:
        """The text pieces of ``tokens`` as they come, then what is left."""
        for token in tokens:
            if piece := self.push(token):
                yield piece
        if rest := self.flush():
            yield rest

    def flush(self) -> str:
        """What is left once the tokens end (e.g. a character the model never completed)."""
        if self.raw:
            text = self.fmt.tokenizer.decode(self.ids, skip_special_tokens=True) if self.ids else ""
        else:
            text = self.fmt.decode(self.ids)
        piece = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted = text
        return piece


@torch.inference_mode()
def decode_tokens(model, cache: Cache, ids: Sequence[int], cached: int, cfg: SamplingConfig, fmt: PromptFormat,
                  step: Step | None = None, generator: torch.Generator | None = None,
                  guide: Guide | None = None) -> Iterator[int]:
    """Generate after ``ids`` whose first ``cached`` tokens are already in ``cache``, yielding each token; stops
    after eos (which is yielded) or ``max_new_tokens``. A :class:`~personagpt.generate.loop.TokenLoop` of one row;
    ``step`` runs its single-token forward (:func:`~personagpt.generate.kvcache.compiled_step`; default eager).
    The cache then holds ``ids`` plus every yielded token but the last."""
    loop = TokenLoop.after(model, fmt, ids, cfg, cache, cached, generator=generator, step=step or eager_step(model),
                           guide=guide)
    while not loop.done:
        yield loop.advance()[0]


def decode(model, cache: Cache, ids: Sequence[int], cached: int, cfg: SamplingConfig, fmt: PromptFormat,
           step: Step | None = None, generator: torch.Generator | None = None) -> list[int]:
    """:func:`decode_tokens` as a list (eos included when produced)."""
    return list(decode_tokens(model, cache, ids, cached, cfg, fmt, step, generator))
