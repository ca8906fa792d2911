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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from transformers import set_seed
from transformers.cache_utils import Cache, DynamicLayer, StaticCache

from personagpt.format import PromptFormat


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings. Defaults are the original PersonaGPT's (top-k 10, nucleus 0.92)."""

    do_sample: bool = True
    top_k: int = 10
    top_p: float = 0.92
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64
    min_new_tokens: int = 0  # eos is banned before this many tokens (benchmarks that need fixed-length turns)
    num_beams: int = 1

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.repetition_penalty <= 0:
            raise ValueError("repetition_penalty must be > 0")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("min_new_tokens must be between 0 and max_new_tokens")
        if self.num_beams < 1:
            raise ValueError("num_beams must be >= 1")

    def generate_kwargs(self, fmt: PromptFormat) -> dict:
        kwargs = asdict(self)
        if not self.do_sample:
            del kwargs["top_k"], kwargs["top_p"], kwargs["temperature"]
        return kwargs | {
            "eos_token_id": fmt.eos_id,
            "pad_token_id": fmt.tokenizer.pad_token_id,
            # the added tokens delimit prompts; they never belong inside an utterance
            "suppress_tokens": list(fmt.special_ids),
        }


GREEDY = SamplingConfig(do_sample=False)


class ContextOverflowError(ValueError):
    """The prefix plus the newest turn does not fit in the model's context window."""


def context_limit(model) -> int:
    cfg = model.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 1024


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


def _strip_reply(ids: Sequence[int], eos_id: int) -> list[int]:
    """Generated ids up to (not including) the first eos."""
    ids = list(ids)
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


class Conversation:
    """A dialogue session for one bot: a fixed prompt prefix plus the growing history.

    ``add_turn`` records the other speaker's utterance; ``respond`` generates, records and returns the bot's.
    """

    def __init__(self, model, fmt: PromptFormat, prefix: Sequence[int], *, sampling: SamplingConfig | None = None,
                 max_context: int | None = None, use_cache: bool = True, compile: bool = False,
                 seed: int | None = None) -> None:
        self.model = model
        self.compile = compile
        self.fmt = fmt
        self.prefix = list(prefix)
        self.sampling = sampling or SamplingConfig()
        self.max_context = max_context or context_limit(model)
        self.use_cache = use_cache
        self.turns: list[str] = []
        self.turn_ids: list[list[int]] = []
        self._cache: Cache | None = None
        self._cached_ids: list[int] = []
        if seed is not None:
            set_seed(seed)
        self._check_fits([])

    @classmethod
    def with_persona(cls, model, fmt: PromptFormat, facts: Sequence[str], **kwargs) -> Conversation:
        """The bot is p2 and speaks in character."""
        return cls(model, fmt, fmt.persona_prefix(facts), **kwargs)

    @classmethod
    def with_action(cls, model, fmt: PromptFormat, goal: str, facts: Sequence[str] = (), **kwargs) -> Conversation:
        """The bot is p1 and its next turn pursues ``goal``; change it per turn with :meth:`set_action`."""
        return cls(model, fmt, fmt.action_prefix(goal, facts), **kwargs)

    def set_action(self, goal: str, facts: Sequence[str] = ()) -> None:
        self.prefix = self.fmt.action_prefix(goal, facts)
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

    @torch.inference_mode()
    def respond(self, sampling: SamplingConfig | None = None) -> str:
        cfg = sampling or self.sampling
        ids = self.context_ids(cfg.max_new_tokens)
        if cfg.num_beams > 1:
            reply = generate_batch(self.model, self.fmt, [ids], cfg)[0]
        else:
            needed = len(ids) + cfg.max_new_tokens
            if not self.use_cache or self._cache is None or needed > _capacity(self._cache):
                self._cache, self._cached_ids = self._new_cache(needed), []
            shared = self._reuse_cache(ids)
            step = compiled_step(self.model) if self.compile else None
            generated = decode(self.model, self._cache, ids, shared, cfg, self.fmt, step=step)
            self._cached_ids = (ids + generated)[: int(self._cache.get_seq_length())]
            reply = _strip_reply(generated, self.fmt.eos_id)
        text = self.fmt.decode(reply)
        self.turns.append(text)
        self.turn_ids.append(reply + [self.fmt.eos_id])
        return text

    def reset(self) -> None:
        """Forget the history (the prefix stays)."""
        self.turns, self.turn_ids = [], []

    def replace_last(self, text: str) -> None:
        """Swap the last turn for ``text`` (a person's correction of the bot's turn)."""
        self.turns[-1] = text.strip()
        self.turn_ids[-1] = self.fmt.utterance(text)

    def invalidate_cache(self) -> None:
        """Forget cached keys/values, e.g. after the model's weights changed."""
        self._cache, self._cached_ids = None, []

    def _new_cache(self, needed: int) -> Cache:
        if not self.compile:
            return ReservedCache()
        capacity = 256
        while capacity < needed:
            capacity *= 2
        return StaticCache(config=self.model.config, max_cache_len=min(capacity, max(needed, self.max_context)))

    def _reuse_cache(self, ids: list[int]) -> int:
        """Crop the cache to the longest prefix it shares with ``ids``; returns that length."""
        shared = 0
        for a, b in zip(self._cached_ids, ids):
            if a != b:
                break
            shared += 1
        shared = min(shared, len(ids) - 1)  # the last context token must be fed to get next-token logits
        surplus = int(self._cache.get_seq_length()) - shared
        if surplus > 0:
            self._cache.crop(-surplus)
        return shared

    def _check_fits(self, turn_ids: Sequence[Sequence[int]]) -> None:
        fit_context(self.prefix, turn_ids, self.max_context - self.sampling.max_new_tokens)


@torch.inference_mode()
def generate_batch(model, fmt: PromptFormat, contexts: Sequence[Sequence[int]],
                   sampling: SamplingConfig | None = None) -> list[list[int]]:
    """Generate one reply (ids, without eos) for each context, all in one left-padded batch."""
    cfg = sampling or SamplingConfig()
    if not contexts:
        return []
    pad = fmt.tokenizer.pad_token_id
    width = max(len(c) for c in contexts)
    rows = [[pad] * (width - len(c)) + list(c) for c in contexts]
    mask = [[0] * (width - len(c)) + [1] * len(c) for c in contexts]
    device = model.device
    out = model.generate(torch.tensor(rows, device=device), attention_mask=torch.tensor(mask, device=device),
                         **cfg.generate_kwargs(fmt))
    return [_strip_reply(row[width:], fmt.eos_id) for row in out.tolist()]


@dataclass
class Replay:
    """A recorded conversation to replay: at each turn in ``reply_at`` the model writes its own reply from the
    prefix and the gold turns before it (evaluation, data labelling)."""

    prefix: list[int]
    turns: list[list[int]]  # gold utterances, eos included
    reply_at: list[int]

    def length(self) -> int:
        return len(self.prefix) + sum(len(t) for t in self.turns)


@torch.inference_mode()
def generate_replays(model, fmt: PromptFormat, replays: Sequence[Replay], sampling: SamplingConfig | None = None,
                     batch_size: int = 16, progress=None) -> list[list[list[int]]]:
    """Replies (ids, without eos) for every ``reply_at`` turn of every replay, in the replay's order.

    Re-encoding prefix + history for each reply costs a conversation's length squared; here each batch of
    conversations keeps one KV cache and moves through the turns in lockstep: feed the gold turns up to the
    next reply (left-padded, so the cache has masked holes), generate, crop the generated tokens off, go on.
    Each token of the history is encoded once. Replays must fit the model's context with the reply.
    """
    cfg = sampling or SamplingConfig()
    if cfg.num_beams > 1:
        raise ValueError("replayed generation samples or decodes greedily; use generate_batch for beams")
    limit = context_limit(model)
    for replay in replays:
        if replay.length() + cfg.max_new_tokens > limit:
            raise ValueError(f"a replay of {replay.length()} tokens does not fit the {limit}-token context")
    order = sorted(range(len(replays)), key=lambda i: (len(replays[i].reply_at), replays[i].length()))
    out: list[list[list[int]]] = [[] for _ in replays]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        for row, replies in zip(rows, _replay_batch(model, fmt, [replays[r] for r in rows], cfg, progress)):
            out[row] = replies
    return out


def _replay_batch(model, fmt: PromptFormat, replays: Sequence[Replay], cfg: SamplingConfig, progress):
    device, pad, eos = model.device, fmt.tokenizer.pad_token_id, fmt.eos_id
    suppress, suppress_eos = _suppressed(fmt, device)
    size = len(replays)
    cache = ReservedCache()
    mask = torch.zeros((size, 0), dtype=torch.long, device=device)
    seen: list[list[int]] = [[] for _ in replays]  # real tokens of each row so far
    fed = [0] * size  # gold turns consumed
    replies: list[list[list[int]]] = [[] for _ in replays]

    def step(tokens: list[list[int]]) -> torch.Tensor:
        """Feed a left-padded chunk (empty rows are all padding); next-token logits of each row."""
        nonlocal mask
        width = max(len(t) for t in tokens)
        ids = torch.tensor([[pad] * (width - len(t)) + t for t in tokens], device=device)
        chunk = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in tokens], device=device)
        real = torch.tensor([len(s) for s in seen], device=device).unsqueeze(1)
        positions = (real + chunk.cumsum(1) - 1).clamp(min=0)
        mask = torch.cat([mask, chunk], 1)
        for row, t in enumerate(tokens):
            seen[row] += t
        return model(ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                     logits_to_keep=1).logits[:, -1].float()

    for k in range(max(len(r.reply_at) for r in replays)):
        chunks = []
        for row, replay in enumerate(replays):
            if k >= len(replay.reply_at):
                chunks.append([])
                continue
            turn = replay.reply_at[k]
            chunks.append((replay.prefix if k == 0 else []) + [i for t in replay.turns[fed[row]:turn] for i in t])
            fed[row] = turn
        logits = step(chunks)
        kept_length, kept_mask, kept_seen = cache.get_seq_length(), mask, [list(s) for s in seen]
        live = [bool(c) for c in chunks]
        generated: list[list[int]] = [[] for _ in replays]
        for n in range(cfg.max_new_tokens):
            banned = suppress_eos if n < cfg.min_new_tokens else suppress
            if not cfg.do_sample and cfg.repetition_penalty == 1.0:
                picks = logits.index_fill(1, banned, float("-inf")).argmax(-1).tolist()
            else:
                picks = [_pick(logits[r], cfg, torch.tensor(seen[r], device=device), banned) if live[r] else pad
                         for r in range(size)]
            for r in range(size):
                if live[r]:
                    generated[r].append(picks[r])
                    live[r] = picks[r] != eos
            if not any(live) or n == cfg.max_new_tokens - 1:
                break
            logits = step([[picks[r]] if live[r] else [] for r in range(size)])
        cache.crop(-(cache.get_seq_length() - kept_length))
        mask, seen = kept_mask, kept_seen
        for row, replay in enumerate(replays):
            if k < len(replay.reply_at):
                replies[row].append(_strip_reply(generated[row], eos))
        if progress is not None:
            progress(sum(k < len(r.reply_at) for r in replays))
    return replies


class _ReservedLayer(DynamicLayer):
    """A KV layer that writes into a preallocated buffer, grown by doubling, instead of re-concatenating."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._length = 0
        self._keys = key_states.new_empty(*key_states.shape[:2], 0, key_states.shape[3])
        self._values = value_states.new_empty(*value_states.shape[:2], 0, value_states.shape[3])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            capacity = max(end, 2 * self._keys.shape[-2], 256)
            self._keys = _grow(self._keys, self._length, capacity)
            self._values = _grow(self._values, self._length, capacity)
        self._keys[..., self._length:end, :] = key_states
        self._values[..., self._length:end, :] = value_states
        self._length = end
        self.keys, self.values = self._keys[..., :end, :], self._values[..., :end, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._length if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        if self.is_initialized and tokens_to_remove:
            self._length = max(0, self._length - abs(tokens_to_remove))
            self.keys, self.values = self._keys[..., : self._length, :], self._values[..., : self._length, :]


def _grow(buffer: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
    bigger = buffer.new_empty(*buffer.shape[:2], capacity, buffer.shape[3])
    bigger[..., :length, :] = buffer[..., :length, :]
    return bigger


class ReservedCache(Cache):
    """A dynamic KV cache whose layers append in place (see :class:`_ReservedLayer`)."""

    def __init__(self) -> None:
        super().__init__(layer_class_to_replicate=_ReservedLayer)


def _capacity(cache: Cache) -> float:
    """Tokens a cache can hold: a static cache is fixed at creation, ours grows."""
    return cache.get_max_length() if isinstance(cache, StaticCache) else float("inf")


Step = Callable[[torch.Tensor, Cache], torch.Tensor]


def eager_step(model) -> Step:
    """The model's single-token forward: next-token logits of one row, extending ``cache``."""

    def forward(token: torch.Tensor, cache: Cache) -> torch.Tensor:
        return model(token, cache=cache, use_cache=True).logits[0, -1]

    return forward


def compiled_step(model) -> Step:
    """:func:`eager_step` under ``torch.compile``, one per model (its sessions share the compiled graphs).

    If compilation fails (e.g. no C++ compiler for inductor), warns once and falls back to the eager forward.
    """
    step = getattr(model, "_personagpt_compiled_step", None)
    if step is not None:
        return step
    forward = eager_step(model)
    compiled = torch.compile(forward, fullgraph=True, dynamic=False)

    def step(token: torch.Tensor, cache: Cache) -> torch.Tensor:
        try:
            return compiled(token, cache)
        except Exception as error:  # any compiler failure: keep chatting, eagerly
            warnings.warn(f"torch.compile failed ({type(error).__name__}: {error}); decoding eagerly instead",
                          RuntimeWarning, stacklevel=2)
            model._personagpt_compiled_step = forward
            return forward(token, cache)

    model._personagpt_compiled_step = step
    return step


def decode(model, cache: Cache, ids: Sequence[int], cached: int, cfg: SamplingConfig,
           fmt: PromptFormat, step: Step | None = None) -> list[int]:
    """Generate after ``ids`` whose first ``cached`` tokens are already in ``cache``; stops after eos.

    ``step`` runs a single-token forward (:func:`compiled_step`); by default :func:`eager_step`.
    Returns the generated ids (eos included when produced). The cache then holds ``ids`` plus all generated
    tokens but the last.
    """
    device = model.device
    step = step or eager_step(model)
    logits = model(torch.tensor([ids[cached:]], device=device), cache=cache, use_cache=True,
                   logits_to_keep=1).logits[0, -1]
    seen = torch.tensor(sorted(set(ids)), device=device)
    suppress, suppress_eos = _suppressed(fmt, device)
    generated: list[int] = []
    for n in range(cfg.max_new_tokens):
        token = _pick(logits.float(), cfg, seen, suppress_eos if n < cfg.min_new_tokens else suppress)
        generated.append(token)
        if token == fmt.eos_id or n == cfg.max_new_tokens - 1:
            break
        seen = torch.cat([seen, torch.tensor([token], device=device)])
        logits = step(torch.tensor([[token]], device=device), cache)
    return generated


def _suppressed(fmt: PromptFormat, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids never generated (the format's added tokens), and the same plus eos (before ``min_new_tokens``)."""
    return (torch.tensor(fmt.special_ids, device=device),
            torch.tensor([*fmt.special_ids, fmt.eos_id], device=device))


def _pick(logits: torch.Tensor, cfg: SamplingConfig, seen: torch.Tensor, suppress: torch.Tensor) -> int:
    """One next token, by the rules of transformers' logits processors in their order."""
    if cfg.repetition_penalty != 1.0:
        prior = logits[seen]
        logits = logits.index_put((seen,), torch.where(prior < 0, prior * cfg.repetition_penalty,
                                                       prior / cfg.repetition_penalty))
    logits = logits.index_fill(0, suppress, float("-inf"))
    if not cfg.do_sample:
        return int(logits.argmax())
    logits = logits / cfg.temperature
    k = cfg.top_k if 0 < cfg.top_k < logits.numel() else logits.numel()
    values, indices = torch.topk(logits, k)  # sorted, descending
    if cfg.top_p < 1.0:
        probs = values.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of strictly likelier tokens
        values = values.masked_fill(before >= cfg.top_p, float("-inf"))
    return int(indices[torch.multinomial(values.softmax(-1), 1)])
