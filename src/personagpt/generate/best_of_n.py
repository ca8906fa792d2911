"""Best-of-N decoding: sample N replies from one shared prefix computation, score each, keep the best.

Inference compute instead of training compute: single samples of a small model repeat stock lines and drift from
the persona, but among a few samples there is often a better one. Scores (higher is better):

* **denial**: the reply answers a yes/no question about a persona fact against the fact (a large penalty;
  :mod:`personagpt.generate.consistency`);
* **persona** (persona mode): how much the persona explains the reply, log p(reply | persona, history) −
  log p(reply | history without persona), per token (pointwise mutual information);
* **goal** (goal mode): whether the goal labeler accepts the reply for the goal (a large bonus), then the same
  PMI with the goal instead of the persona;
* **repetition**: the share of the reply's word 4-grams already said in the bot's earlier turns or earlier in the
  reply (a penalty);
* **fluency**: mean token log-probability of the reply (its eos included) under the prompt.

Candidates may be scored on their first tokens (:func:`best_of_n_lockstep`: choose, then stream the rest; the rule is
:class:`~personagpt.generate.loop.Commitment`, shared with the engine's and the server's drivers).

The weights are settings (:class:`RerankWeights`). The persona-mode defaults (persona, repetition, fluency) were
chosen by ``bench/rerank_tune.py`` on 150 contexts of the training split (best-of-8, picks re-weighted offline):
within 0.5 F1 of the best setting, the one repeating least. The goal weights are not tuned: the labeler's verdict
comes first by construction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from personagpt.control.goals import GoalLabeler, minilm_path
from personagpt.errors import PersonaGPTError
from personagpt.format import PromptFormat
from personagpt.generate.kvcache import ReservedCache, crop_to_prefix
from personagpt.generate.loop import Choose, Commitment, Guide, TokenLoop, feed_tokens
from personagpt.generate.sampling import SamplingConfig
from personagpt.personas.facts import negate


@dataclass(frozen=True)
class RerankWeights:
    persona: float = 0.5
    goal_accepted: float = 10.0
    goal: float = 1.0
    repetition: float = 8.0
    fluency: float = 0.5
    denial: float = 10.0  # the reply denies the persona fact it was asked about (first, like an accepted goal)

    def pmi(self, goal: str | None) -> float:
        """The weight of the PMI term: the goal's in goal mode, the persona's otherwise (0: no reference needed)."""
        return self.persona if goal is None else self.goal


@dataclass
class Candidate:
    ids: list[int]  # the reply's tokens, without eos
    text: str
    scores: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    index: int = 0  # its position among the replies given


def repeated(cache: ReservedCache, n: int) -> ReservedCache:
    """A cache of n identical rows from a batch-1 cache (one prefix computation serves them all)."""
    out = ReservedCache()
    for index, layer in enumerate(cache.layers):
        out.update(layer.keys.repeat(n, 1, 1, 1), layer.values.repeat(n, 1, 1, 1), index)
    return out


class PrefixScorer:
    """Scores replies after a prompt, keeping the prompt's keys/values between calls: the next turn's prompt
    extends this one's, so only its new tokens are encoded (the reference context of a conversation)."""

    def __init__(self, model) -> None:
        self.model, self.cache, self.ids, self.last = model, ReservedCache(), [], None

    @torch.inference_mode()
    def prefill(self, prompt: Sequence[int], raw: bool = False) -> tuple[ReservedCache, torch.Tensor]:
        """The cache holding ``prompt`` and the next-token log-probs (``raw``: logits) after it."""
        shared = crop_to_prefix(self.cache, self.ids, prompt)
        out = self.model(torch.tensor([list(prompt[shared:])], device=self.model.device), cache=self.cache,
                         position_ids=torch.arange(shared, len(prompt), device=self.model.device).unsqueeze(0),
                         use_cache=True, logits_to_keep=1).logits[0, -1]
        self.ids = list(prompt)
        return self.cache, out if raw else torch.log_softmax(out.float(), -1)

    def keep(self, cache: ReservedCache, ids: Sequence[int]) -> None:
        """Adopt a one-row cache holding ``ids`` (a committed candidate's: its reply then need not be re-encoded)."""
        self.cache, self.ids = cache, list(ids)


def candidates_loop(model, fmt: PromptFormat, ids: Sequence[int], n: int, cfg: SamplingConfig,
                    generator: torch.Generator | None = None, scorer: PrefixScorer | None = None,
                    guide: Guide | None = None) -> TokenLoop:
    """N candidates after the prompt ``ids`` in one :class:`~personagpt.generate.loop.TokenLoop`: the prompt is
    computed once (with ``scorer``, only what it adds to the scorer's last prompt) and its keys/values repeated for
    every row; each row keeps its summed log p(tokens | prompt), so that scoring needs no second pass."""
    prefix, first = (scorer or PrefixScorer(model)).prefill(ids, raw=True)
    return TokenLoop(model, fmt, ids, first, repeated(prefix, n), cfg, n, generator, logprobs=True, guide=guide)


def best_of_n_lockstep(loop: TokenLoop, commit_tokens: int, choose: Choose) -> Iterator[int]:
    """The chosen candidate's token ids (eos included when sampled): all rows advance until ``commit_tokens``
    tokens (0: until every row has ended), ``choose`` picks one, which is yielded and then decoded alone."""
    commitment = Commitment(len(loop.all_rows), commit_tokens, loop.fmt.eos_id)
    while not loop.done and (commit_tokens == 0 or loop.steps < commit_tokens):
        for i, token in enumerate(loop.advance()):
            if token is not None:
                commitment.take(i, token)
    row = commitment.choose(choose)
    yield from commitment.head()
    if not commitment.goes_on():
        return
    loop.keep(row)
    while not loop.done:
        yield loop.advance()[0]


def best_of_n_requests(requests: Sequence, commit_tokens: int, eos_id: int, choose: Choose) -> Iterator[int]:
    """:func:`best_of_n_lockstep` over an engine's requests (one prompt, N samples batched with other users'):
    read each until ``commit_tokens`` tokens or its end, keep the chosen one, cancel the others."""
    streams = [iter(r) for r in requests]
    commitment = Commitment(len(requests), commit_tokens, eos_id)
    try:
        for i, stream in enumerate(streams):
            for token in stream:
                if not commitment.take(i, token):
                    break
        row = commitment.choose(choose)
        for i, request in enumerate(requests):
            if i != row:
                request.cancel()
        yield from commitment.head()
        if commitment.goes_on():
            yield from streams[row]
    finally:
        for request in requests:
            request.cancel()


@torch.inference_mode()
def sample_candidates(model, fmt: PromptFormat, ids: Sequence[int], n: int, cfg: SamplingConfig,
                      generator: torch.Generator | None = None, logprobs: list | None = None,
                      scorer: PrefixScorer | None = None) -> list[list[int]]:
    """N whole replies (ids, without eos) to the prompt ``ids``, sampled side by side (:func:`candidates_loop`).
    ``logprobs``, if given, receives each reply's summed log p(reply + eos | prompt) under the model itself
    (a reply cut at ``max_new_tokens`` is scored as if eos followed it); ``scorer`` keeps the prompt's cache for
    the next turn, whose prompt extends this one."""
    loop = candidates_loop(model, fmt, ids, n, cfg, generator, scorer)
    while not loop.done:
        loop.advance()
    if logprobs is not None:
        finished = loop.finished
        cut = [r for r in range(n) if not finished[r]]
        if cut:  # their eos was never sampled: score it too
            last = [fmt.eos_id if finished[r] else loop.replies[r][-1] for r in range(n)]
            final = torch.log_softmax(feed_tokens(loop.model, loop.cache, last, loop.position).float(), -1)
            for r in cut:
                loop.logprobs[r] += float(final[r, fmt.eos_id])
        logprobs[:] = loop.logprobs
    return loop.replies


def recorded_scores(requests: Sequence, replies: Sequence[Sequence[int]],
                    finished: Sequence[bool]) -> tuple[list[float], list[float] | None]:
    """The replies' summed log-probabilities under their prompt and, when every request was guided, under its guide
    prompt (the prompt without the persona or the goal), as the engine recorded them while sampling: best-of-N's
    reranker then needs no model pass of its own (``replies[i]``: request i's first tokens, eos counted when
    ``finished[i]``)."""
    counts = [len(reply) + bool(end) for reply, end in zip(replies, finished)]
    conditioned = [sum(r.scores[:n]) for r, n in zip(requests, counts)]
    if not all(len(r.guide_scores) >= n for r, n in zip(requests, counts)):
        return conditioned, None
    return conditioned, [sum(r.guide_scores[:n]) for r, n in zip(requests, counts)]


@torch.inference_mode()
def reply_logprobs(model, prompt: Sequence[int], replies: Sequence[Sequence[int]], eos_id: int,
                   scorer: PrefixScorer | None = None, finished: Sequence[bool] | None = None) -> torch.Tensor:
    """[n] summed log p(reply + eos | prompt), the prompt computed once for all replies (with ``scorer``, only
    what it adds to the scorer's previous prompt). ``finished[i]`` False: reply i is a prefix of a reply still
    being written, scored without eos."""
    device = model.device
    prefix, first = (scorer or PrefixScorer(model)).prefill(prompt)
    ends = [True] * len(replies) if finished is None else list(finished)
    targets = [list(r) + [eos_id] * end for r, end in zip(replies, ends)]
    width = max(max(len(t) for t in targets), 1)
    rows = torch.tensor([t + [eos_id] * (width - len(t)) for t in targets], device=device)
    mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in targets], device=device)
    positions = (len(prompt) + torch.arange(width - 1, device=device)).expand(len(targets), -1)
    total = first[rows[:, 0]] * mask[:, 0]
    if width > 1:  # token j of a reply is predicted after its tokens 0..j-1
        logits = model(rows[:, :-1], position_ids=positions, cache=repeated(prefix, len(targets)),
                       use_cache=True).logits.float()
        gathered = torch.log_softmax(logits, -1).gather(-1, rows[:, 1:].unsqueeze(-1)).squeeze(-1)
        total = total + (gathered * mask[:, 1:]).sum(1)
    return total


def repetition(reply: str, earlier: Sequence[str], n: int = 4) -> float:
    """Share of the reply's word n-grams said before: in ``earlier`` turns, or earlier in the reply."""
    words = reply.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    before = {tuple(w[i:i + n]) for t in earlier for w in [t.split()] for i in range(len(w) - n + 1)}
    seen, repeated = set(), 0
    for gram in grams:
        repeated += gram in before or gram in seen
        seen.add(gram)
    return repeated / len(grams)


_LABELER = {}


def default_labeler():
    """The goal labeler, semantic when its sentence encoder is installed (loaded once)."""
    if "labeler" not in _LABELER:
        try:
            minilm_path()
            _LABELER["labeler"] = GoalLabeler(semantic=True)
        except PersonaGPTError:
            _LABELER["labeler"] = GoalLabeler(semantic=False)
    return _LABELER["labeler"]


def rank_candidates(model, fmt: PromptFormat, prompt: Sequence[int], reference: Sequence[int],
                    replies: Sequence[Sequence[int]], bot_turns: Sequence[str], goal: str | None = None,
                    weights: RerankWeights = RerankWeights(), labeler=None, conditioned: Sequence[float] | None = None,
                    scorer: PrefixScorer | None = None, finished: Sequence[bool] | None = None, checker=None,
                    asked=None, unconditioned: Sequence[float] | None = None) -> list[Candidate]:
    """Score replies to ``prompt``; ``reference`` is the same context without the persona (or the goal).
    ``conditioned`` are the replies' log-likelihoods under ``prompt`` when already known (from sampling),
    ``unconditioned`` theirs under a context without the persona or the goal (a guide prompt's, from guided sampling);
    ``scorer`` keeps the reference context's cache across turns; ``finished[i]`` False: reply i
    is still being written (scored as a prefix, without eos); ``asked`` (an
    :class:`~personagpt.generate.consistency.AskedFact`) is the persona fact the last turn asked about, and ``checker``
    says whether a reply denies it. Returns the candidates, best first."""
    ends = [True] * len(replies) if finished is None else list(finished)
    if conditioned is None:
        conditioned = reply_logprobs(model, prompt, replies, fmt.eos_id, finished=ends).tolist()
    pmi_weight = weights.pmi(goal)
    if pmi_weight and unconditioned is None:
        unconditioned = reply_logprobs(model, reference, replies, fmt.eos_id, scorer, ends).tolist()
    candidates = []
    for i, reply in enumerate(replies):
        text = fmt.decode(reply)
        length = max(len(reply) + ends[i], 1)
        scores = {"pmi": float(conditioned[i] - unconditioned[i]) / length if pmi_weight else 0.0,
                  "fluency": float(conditioned[i]) / length,
                  "repetition": repetition(text, bot_turns)}
        total = weights.fluency * scores["fluency"] - weights.repetition * scores["repetition"]
        if asked is not None and checker is not None:
            scores["denies_fact"] = float(checker.denies(text, asked))
            total -= weights.denial * scores["denies_fact"]
        if goal is None:
            total += weights.persona * scores["pmi"]
        else:
            scores["goal_accepted"] = float(bool(text) and (labeler or default_labeler()).accepts(text, goal))
            total += weights.goal_accepted * scores["goal_accepted"] + weights.goal * scores["pmi"]
        candidates.append(Candidate(list(reply), text, scores, total, i))
    return sorted(candidates, key=lambda c: -c.total)


def contrast_facts(facts: Sequence[str]) -> list[str] | None:
    """The persona with every fact negated that :func:`personagpt.personas.facts.negate` can negate (None if none can):
    the context a contradicting reply fits better than the persona itself."""
    negated = [negate(f) for f in facts]
    if not any(negated):
        return None
    return [n or f for n, f in zip(negated, facts)]


def contradiction(model, fmt: PromptFormat, facts: Sequence[str], turns: Sequence[str], reply: str,
                  speaker: int = 2) -> float | None:
    """log p(reply | negated persona, history) - log p(reply | persona, history): > 0 when the reply fits the
    persona's negation better (a contradiction); None when no fact can be negated."""
    negated = contrast_facts(facts)
    if negated is None:
        return None
    history = fmt.history(list(turns))
    ids = [fmt.text(reply)]
    with torch.inference_mode():
        under = reply_logprobs(model, fmt.persona_prefix(list(facts), speaker) + history, ids, fmt.eos_id)
        against = reply_logprobs(model, fmt.persona_prefix(negated, speaker) + history, ids, fmt.eos_id)
    return float(against[0] - under[0])
