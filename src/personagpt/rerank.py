"""Best-of-N decoding: sample N replies from one shared prefix computation, score each, keep the best.

Inference compute instead of training compute: single samples of a small model repeat stock lines and drift from
the persona, but among a few samples there is often a better one. Scores (higher is better):

* **persona** (persona mode): how much the persona explains the reply, log p(reply | persona, history) −
  log p(reply | history without persona), per token (pointwise mutual information);
* **goal** (action mode): whether the goal labeler accepts the reply for the goal (a large bonus), then the same
  PMI with the goal instead of the persona;
* **repetition**: the share of the reply's word 4-grams already said in the bot's earlier turns or earlier in the
  reply (a penalty);
* **fluency**: mean token log-probability of the reply (its eos included) under the prompt.

The weights are settings (:class:`RerankWeights`). The persona-mode defaults (persona, repetition, fluency) were
chosen by ``bench/rerank_tune.py`` on 150 contexts of the training split (best-of-8, picks re-weighted offline):
within 0.5 F1 of the best setting, the one repeating least. The goal weights are not tuned: the labeler's verdict
comes first by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from personagpt.format import PromptFormat
from personagpt.kvcache import ReservedCache, crop_to_prefix
from personagpt.sampling import SamplingConfig, pick_token, suppressed_ids


@dataclass(frozen=True)
class RerankWeights:
    persona: float = 0.5
    goal_accepted: float = 10.0
    goal: float = 1.0
    repetition: float = 8.0
    fluency: float = 0.5


@dataclass
class Candidate:
    ids: list[int]  # the reply's tokens, without eos
    text: str
    scores: dict[str, float] = field(default_factory=dict)
    total: float = 0.0


def _repeated(cache: ReservedCache, n: int) -> ReservedCache:
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


@torch.inference_mode()
def sample_candidates(model, fmt: PromptFormat, ids: Sequence[int], n: int, cfg: SamplingConfig,
                      generator: torch.Generator | None = None, logprobs: list | None = None,
                      scorer: PrefixScorer | None = None) -> list[list[int]]:
    """N replies (ids, without eos) to the prompt ``ids``: one prefill, then N rows decoded in lockstep.
    ``logprobs``, if given, receives each reply's summed log p(reply + eos | prompt) under the model itself;
    ``scorer`` keeps the prompt's cache for the next turn, whose prompt extends this one."""
    device = model.device
    prefix, first = (scorer or PrefixScorer(model)).prefill(ids, raw=True)
    cache = _repeated(prefix, n)
    logits = first.expand(n, -1)
    suppress, suppress_eos = suppressed_ids(fmt, device)
    seen = torch.tensor(sorted(set(ids)), device=device)
    replies: list[list[int]] = [[] for _ in range(n)]
    totals = [0.0] * n
    live = [True] * n
    for step in range(cfg.max_new_tokens):
        banned = suppress_eos if step < cfg.min_new_tokens else suppress
        model_logprobs = torch.log_softmax(logits.float(), -1)
        picks = []
        for row in range(n):
            token = pick_token(logits[row].float(), cfg, seen, banned, generator) if live[row] else fmt.eos_id
            picks.append(token)
            if live[row]:
                totals[row] += float(model_logprobs[row, token])
                if token == fmt.eos_id:
                    live[row] = False
                else:
                    replies[row].append(token)
        if not any(live) or step == cfg.max_new_tokens - 1:
            break
        positions = torch.full((n, 1), len(ids) + step, device=device)
        logits = model(torch.tensor(picks, device=device).unsqueeze(1), position_ids=positions, cache=cache,
                       use_cache=True).logits[:, -1]
    if logprobs is not None:
        if any(live):  # replies cut at max_new_tokens: their eos was never sampled, score it too
            final = torch.log_softmax(model(torch.tensor(picks, device=device).unsqueeze(1), position_ids=positions + 1,
                                            cache=cache, use_cache=True).logits[:, -1].float(), -1)
            totals = [t + float(final[r, fmt.eos_id]) if live[r] else t for r, t in enumerate(totals)]
        logprobs[:] = totals
    return replies


@torch.inference_mode()
def reply_logprobs(model, prompt: Sequence[int], replies: Sequence[Sequence[int]], eos_id: int,
                   scorer: PrefixScorer | None = None) -> torch.Tensor:
    """[n] summed log p(reply + eos | prompt), the prompt computed once for all replies (with ``scorer``, only
    what it adds to the scorer's previous prompt)."""
    device = model.device
    prefix, first = (scorer or PrefixScorer(model)).prefill(prompt)
    targets = [list(r) + [eos_id] for r in replies]
    width = max(len(t) for t in targets)
    rows = torch.tensor([t + [eos_id] * (width - len(t)) for t in targets], device=device)
    mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in targets], device=device)
    positions = (len(prompt) + torch.arange(width - 1, device=device)).expand(len(targets), -1)
    total = first[rows[:, 0]]
    if width > 1:  # token j of a reply is predicted after its tokens 0..j-1
        logits = model(rows[:, :-1], position_ids=positions, cache=_repeated(prefix, len(targets)),
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
    from personagpt.control import GoalLabeler, minilm_path
    from personagpt.errors import PersonaGPTError

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
                    scorer: PrefixScorer | None = None) -> list[Candidate]:
    """Score replies to ``prompt``; ``reference`` is the same context without the persona (or the goal).
    ``conditioned`` are the replies' log-likelihoods under ``prompt`` when already known (from sampling);
    ``scorer`` keeps the reference context's cache across turns. Returns the candidates, best first."""
    if conditioned is None:
        conditioned = reply_logprobs(model, prompt, replies, fmt.eos_id).tolist()
    unconditioned = reply_logprobs(model, reference, replies, fmt.eos_id, scorer)
    candidates = []
    for i, reply in enumerate(replies):
        text = fmt.decode(reply)
        length = len(reply) + 1
        scores = {"pmi": float(conditioned[i] - unconditioned[i]) / length,
                  "fluency": float(conditioned[i]) / length,
                  "repetition": repetition(text, bot_turns)}
        total = weights.fluency * scores["fluency"] - weights.repetition * scores["repetition"]
        if goal is None:
            total += weights.persona * scores["pmi"]
        else:
            scores["goal_accepted"] = float(bool(text) and (labeler or default_labeler()).accepts(text, goal))
            total += weights.goal_accepted * scores["goal_accepted"] + weights.goal * scores["pmi"]
        candidates.append(Candidate(list(reply), text, scores, total))
    return sorted(candidates, key=lambda c: -c.total)
