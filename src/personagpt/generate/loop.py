"""The one token step every local decoder shares, and best-of-N's commitment rule.

* :class:`Row`: one sequence being decoded, with its own settings and generator (so a server's requests and a
  chat's candidates sample independently), the ids its repetition penalty reads, and its tokens.
* :func:`pick_token`: one next token, by the rules of transformers' logits processors in their order.
* :class:`Sampler`: one token for each live row of a batch of next-token logits, by :func:`pick_token`'s rules.
* :class:`TokenLoop`: N rows after one shared prompt, one forward per token for all of them (a chat session is
  N = 1; best-of-N's candidates are N > 1). The engine (many users' slots) and replays (masked holes) run their
  own forward over their own cache layout and sample through the same :class:`Sampler`.
* :class:`Commitment`: read each of N candidates until ``commit_tokens`` tokens or its end, choose one, go on
  with it; driven by the token loop, by the engine's requests in threads and by the server's asyncio alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from personagpt.format import PromptFormat
from personagpt.generate.kvcache import ReservedCache, Step
from personagpt.generate.sampling import SamplingConfig


def suppressed_ids(fmt: PromptFormat, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids never generated (the format's added tokens), and the same plus eos (before ``min_new_tokens``)."""
    return (torch.tensor(fmt.special_ids, device=device),
            torch.tensor([*fmt.special_ids, fmt.eos_id], device=device))


def pick_token(logits: torch.Tensor, cfg: SamplingConfig, seen: torch.Tensor, suppress: torch.Tensor,
               generator: torch.Generator | None = None, reply: Sequence[int] = ()) -> int:
    """One next token, by the rules of transformers' logits processors in their order, after OpenAI's presence
    and frequency penalties over ``reply`` (the tokens sampled so far)."""
    if cfg.repetition_penalty != 1.0:
        prior = logits[seen]
        logits = logits.index_put((seen,), torch.where(prior < 0, prior * cfg.repetition_penalty,
                                                       prior / cfg.repetition_penalty))
    if (cfg.presence_penalty or cfg.frequency_penalty) and reply:
        tokens, counts = torch.tensor(list(reply), device=logits.device).unique(return_counts=True)
        logits = logits.index_put((tokens,), logits[tokens] - cfg.frequency_penalty * counts
                                  - cfg.presence_penalty)
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
    return int(indices[torch.multinomial(values.softmax(-1), 1, generator=generator)])


def guided_logits(logits: torch.Tensor, guide: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``guide + scale * (logits - guide)``; a token either side rules out (-inf, e.g. a
    banned end of turn) stays out rather than becoming NaN."""
    logits, guide = logits.float(), guide.float()
    return (guide + scale * (logits - guide)).masked_fill(torch.isneginf(logits) | torch.isneginf(guide),
                                                          float("-inf"))


@dataclass(eq=False)
class Row:
    """One sequence being decoded."""

    cfg: SamplingConfig
    seen: torch.Tensor  # the ids the repetition penalty reads: the prompt's, then every sampled token (with one)
    generator: torch.Generator | None = None
    tokens: list[int] = field(default_factory=list)  # sampled so far, eos included once sampled
    ended: bool = False  # eos was sampled

    @property
    def done(self) -> bool:
        """eos sampled, or ``max_new_tokens`` reached."""
        return self.ended or len(self.tokens) >= self.cfg.max_new_tokens

    @property
    def reply(self) -> list[int]:
        return self.tokens[:-1] if self.ended else list(self.tokens)


@functools.lru_cache(maxsize=64)
def _ban_table(opening_ban: tuple[tuple[int, ...], ...]) -> tuple[dict[tuple[int, ...], list[int]], int]:
    """An opening ban as what may not follow each prefix, {(i, do): [,, ., eos], (): [yes, ...]}, and the longest
    prefix (past it a reply is free: no lookup)."""
    table: dict[tuple[int, ...], list[int]] = {}
    for seq in opening_ban:
        table.setdefault(seq[:-1], []).append(seq[-1])
    return table, max(map(len, table))


@functools.lru_cache(maxsize=16)
def _all_but(allowed: tuple[int, ...], vocab: int, device) -> torch.Tensor:
    keep = torch.ones(vocab, dtype=torch.bool)
    keep[list(allowed)] = False
    return keep.nonzero().squeeze(1).to(device)


class Sampler:
    """Picks one token per live row of a batch of logits, each row by its own settings and generator."""

    def __init__(self, fmt: PromptFormat, device) -> None:
        self.eos_id, self.device = fmt.eos_id, device
        self.suppress, self.suppress_eos = suppressed_ids(fmt, device)

    def row(self, cfg: SamplingConfig, prompt: Sequence[int], generator: torch.Generator | None = None,
            tokens: list[int] | None = None) -> Row:
        """A row after ``prompt`` (``tokens``: a list the row appends to, e.g. a request's own). Its seen ids are
        kept only when its repetition penalty reads them."""
        seen = sorted(set(prompt)) if cfg.repetition_penalty != 1.0 else []
        return Row(cfg, torch.tensor(seen, dtype=torch.long, device=self.device), generator,
                   tokens if tokens is not None else [])

    def pick(self, logits: torch.Tensor, rows: Sequence[Row | None]) -> list[int | None]:
        """``logits`` [len(rows), vocab]: the next token of each row that is not done (None for the others), taken
        into the row. Greedy rows without a repetition penalty are picked in one batched argmax."""
        live = [i for i, row in enumerate(rows) if row is not None and not row.done]
        picks: list[int | None] = [None] * len(rows)
        if not live:
            return picks
        banned = [self.banned(rows[i], logits.shape[-1]) for i in live]
        if all(not rows[i].cfg.do_sample and rows[i].cfg.repetition_penalty == 1.0
               and not rows[i].cfg.presence_penalty and not rows[i].cfg.frequency_penalty for i in live) \
                and all(b is banned[0] for b in banned):
            best = logits.float().index_fill(1, banned[0], float("-inf")).argmax(-1).tolist()
            for i in live:
                picks[i] = best[i]
        else:
            for i, ban in zip(live, banned):
                row = rows[i]
                picks[i] = pick_token(logits[i].float(), row.cfg, row.seen, ban, row.generator, row.tokens)
        for i in live:
            self.take(rows[i], picks[i])
        return picks

    def banned(self, row: Row, vocab: int) -> torch.Tensor:
        """The ids ``row`` may not sample next: the format's tokens, eos before ``min_new_tokens``, and at the first
        tokens the turn's ``opening_ban`` (openings that would answer against the persona); at the first token,
        with ``opening_only``, everything else."""
        base = self.suppress_eos if len(row.tokens) < row.cfg.min_new_tokens else self.suppress
        if row.cfg.opening_only and not row.tokens:
            return _all_but(row.cfg.opening_only, vocab, self.device)
        if not row.cfg.opening_ban:
            return base
        table, longest = _ban_table(row.cfg.opening_ban)
        extra = table.get(tuple(row.tokens)) if len(row.tokens) <= longest else None
        return torch.cat([base, torch.tensor(extra, device=self.device)]) if extra else base

    def take(self, row: Row, token: int) -> None:
        row.tokens.append(token)
        if row.cfg.repetition_penalty != 1.0:  # the only reader of the seen ids
            row.seen = torch.cat([row.seen, torch.tensor([token], device=self.device)])
        row.ended = token == self.eos_id


class TokenLoop:
    """N rows sampled after one prompt whose keys/values are in ``cache`` and whose next-token ``logits`` are
    known: :meth:`advance` picks one token per live row, the next call first feeds them (one forward for all rows),
    so a token is handed out as soon as it is sampled. :meth:`keep` goes on with one row alone (a committed
    candidate). ``step`` (one row only) runs the single-token forward, e.g. compiled; ``logprobs`` keeps each
    row's summed log p(tokens | prompt) under the model (its eos included once sampled), and with a ``guide``
    ``guide_logprobs`` the same under the guide prompt, so that best-of-N's scores need no second pass."""

    def __init__(self, model, fmt: PromptFormat, prompt: Sequence[int], logits: torch.Tensor, cache,
                 cfg: SamplingConfig, n: int = 1, generator: torch.Generator | None = None, step: Step | None = None,
                 logprobs: bool = False, guide: Guide | None = None) -> None:
        self.model, self.fmt, self.cfg, self.cache, self.step = model, fmt, cfg, cache, step
        self.sampler = Sampler(fmt, model.device)
        self.all_rows = [self.sampler.row(cfg, prompt, generator) for _ in range(n)]
        self.rows = list(range(n))  # the rows still in the cache, by index
        self.logits = logits.expand(n, -1) if logits.dim() == 1 else logits
        self.position = len(prompt)  # tokens in the cache
        self.logprobs = [0.0] * n if logprobs else None
        self.guide_logprobs = [0.0] * n if logprobs and guide is not None else None
        self.steps = 0
        self._fed: list[int] | None = None
        self.guide = guide

    @classmethod
    def after(cls, model, fmt: PromptFormat, prompt: Sequence[int], cfg: SamplingConfig, cache=None, cached: int = 0,
              **kwargs) -> TokenLoop:
        """A loop after ``prompt``, whose first ``cached`` tokens are already in ``cache`` (one row: a session)."""
        cache = cache if cache is not None else ReservedCache()
        with torch.inference_mode():
            logits = model(torch.tensor([list(prompt[cached:])], device=model.device), cache=cache, use_cache=True,
                           logits_to_keep=1).logits[0, -1]
        return cls(model, fmt, prompt, logits, cache, cfg, **kwargs)

    @property
    def replies(self) -> list[list[int]]:
        """Each row's tokens so far, without eos."""
        return [row.reply for row in self.all_rows]

    @property
    def finished(self) -> list[bool]:
        """Whether each row has sampled eos."""
        return [row.ended for row in self.all_rows]

    @property
    def done(self) -> bool:
        return all(self.all_rows[r].done for r in self.rows) or self.steps >= self.cfg.max_new_tokens

    @torch.inference_mode()
    def advance(self) -> list[int | None]:
        """One token for every kept row (None for a row already done)."""
        if self._fed is not None:
            self._forward(self._fed)
        rows = [self.all_rows[r] for r in self.rows]
        model_logprobs = torch.log_softmax(self.logits.float(), -1) if self.logprobs is not None else None
        picks = self.sampler.pick(self.logits if self.guide is None else self.guide.steer(self.logits), rows)
        if model_logprobs is not None:
            guide_logprobs = torch.log_softmax(self.guide.logits.float(), -1) if self.guide_logprobs else None
            for i, (r, token) in enumerate(zip(self.rows, picks)):
                if token is not None:
                    self.logprobs[r] += float(model_logprobs[i, token])
                    if guide_logprobs is not None:
                        self.guide_logprobs[r] += float(guide_logprobs[i, token])
        self.steps += 1
        self._fed = None if self.done else [self.fmt.eos_id if t is None else t for t in picks]
        return picks

    def _forward(self, tokens: list[int]) -> None:
        if self.step is not None and len(tokens) == 1:
            self.logits = self.step(torch.tensor([tokens], device=self.model.device), self.cache).unsqueeze(0)
        else:
            self.logits = feed_tokens(self.model, self.cache, tokens, self.position)
        if self.guide is not None:
            self.guide.feed(self.model, tokens)
        self.position += 1
        self._fed = None

    def keep(self, row: int) -> None:
        """Go on with ``row`` alone."""
        i = self.rows.index(row)
        self.cache, self.logits, self.rows = select_rows(self.cache, [i]), self.logits[i:i + 1], [row]
        if self._fed is not None:
            self._fed = [self._fed[i]]
        if self.guide is not None:
            self.guide.keep(i)


class Guide:
    """Classifier-free guidance for a :class:`TokenLoop`: the guide prompt (the prompt without its goal or its
    persona) has its own cache and rows, fed the tokens the loop samples; the loop samples from
    ``guide + scale * (prompt - guide)``."""

    def __init__(self, logits: torch.Tensor, cache, position: int, scale: float) -> None:
        self.logits, self.cache, self.position, self.scale = logits, cache, position, scale

    def steer(self, logits: torch.Tensor) -> torch.Tensor:
        return guided_logits(logits, self.logits, self.scale)

    def feed(self, model, tokens: list[int]) -> None:
        self.logits = feed_tokens(model, self.cache, tokens, self.position)
        self.position += 1

    def keep(self, i: int) -> None:
        self.cache, self.logits = select_rows(self.cache, [i]), self.logits[i:i + 1]


def select_rows(cache: ReservedCache, rows: Sequence[int]) -> ReservedCache:
    """A cache of the given rows of ``cache`` (a committed candidate goes on alone)."""
    out = ReservedCache()
    index = torch.tensor(list(rows), device=cache.layers[0].keys.device)
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys.index_select(0, index), layer.values.index_select(0, index), i)
    return out


def feed_tokens(model, cache, tokens: Sequence[int], position: int) -> torch.Tensor:
    """One token per cache row, all at ``position``: the rows' next-token logits [rows, vocab]."""
    positions = torch.full((len(tokens), 1), position, device=model.device)
    return model(torch.tensor(list(tokens), device=model.device).unsqueeze(1), position_ids=positions, cache=cache,
                 use_cache=True).logits[:, -1]


def strip_reply(ids: Sequence[int], eos_id: int) -> list[int]:
    """Generated ids up to (not including) the first eos."""
    ids = list(ids)
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


Choose = Callable[[list[list[int]], list[bool]], int]  # (replies so far, finished) -> the candidate to keep


class Commitment:
    """Best-of-N's rule, once for every driver: each candidate is read until ``commit_tokens`` tokens (0: to its
    end); then one is chosen, its tokens so far are handed out, and only it goes on.

    A driver feeds candidate ``i``'s tokens to :meth:`take` while it returns True, calls :meth:`choose`, yields
    :meth:`head` and then, while :meth:`goes_on`, the kept candidate's further tokens.
    """

    def __init__(self, n: int, commit_tokens: int, eos_id: int) -> None:
        self.commit_tokens, self.eos_id = commit_tokens, eos_id
        self.replies: list[list[int]] = [[] for _ in range(n)]
        self.finished = [False] * n  # eos was read
        self.stopped = [False] * n  # read up to the commitment point, with more to come
        self.chosen: int | None = None

    def take(self, i: int, token: int) -> bool:
        """Record candidate ``i``'s next token; False once it needs no more before the choice."""
        if token == self.eos_id:
            self.finished[i] = True
            return False
        self.replies[i].append(token)
        if self.commit_tokens and len(self.replies[i]) >= self.commit_tokens:
            self.stopped[i] = True
            return False
        return True

    def choose(self, choose: Choose) -> int:
        self.chosen = choose(self.replies, list(self.finished)) if len(self.replies) > 1 else 0
        return self.chosen

    def head(self) -> list[int]:
        """The kept candidate's tokens read so far (its eos included when read)."""
        return self.replies[self.chosen] + [self.eos_id] * self.finished[self.chosen]

    def goes_on(self) -> bool:
        """Whether the kept candidate has tokens beyond :meth:`head` (not ended, not cut at its length limit)."""
        return self.stopped[self.chosen] and not self.finished[self.chosen]
