"""Likelihood scoring shared by training, evaluation and persona identification.

* :class:`TargetLoss`: summed cross-entropy over target tokens, the output layer applied to those positions only;
* :func:`score_examples`: per-token NLL and argmax of every target turn (perplexities, tf-F1);
* :func:`rank_personas`: how likely each candidate persona makes one speaker's turns (Hits@1, persona
  authentication), as a :class:`PersonaRanker` that takes further turns at the cost of their new tokens only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from personagpt.data.examples import IGNORE_INDEX, Example, TokenizedDataset, collate, control_example
from personagpt.format import MAX_SEQUENCE_LENGTH, PromptFormat
from personagpt.errors import SettingsError
from personagpt.errors import ContextOverflowError
from personagpt.models.load import context_limit
from personagpt.generate.kvcache import ReservedCache


class TargetLoss(nn.Module):
    """Summed cross-entropy over target tokens only; the output layer runs on those positions alone.

    Projecting every position onto a 50k vocabulary would cost batch x length x vocab floats; targets are
    under half the tokens. The projection runs in chunks of a fixed number of rows (the last one padded), so
    its large buffers have the same shape every step: with freed memory kept in the process (see
    ``heap.keep_freed_memory``) a different size each step would fragment the heap until it runs out.
    Wrapping this (not the bare LM) in DDP keeps gradient sync on the real forward.
    """

    def __init__(self, model, chunk_rows: int = 512) -> None:
        super().__init__()
        self.model = model
        self.chunk_rows = chunk_rows
        self._decoder, self._head = decoder_and_head(model)

    def hidden_at(self, input_ids, attention_mask, positions: torch.Tensor) -> torch.Tensor:
        """Final hidden states at the ``positions`` (a [batch, length] bool mask), in row-major order."""
        hidden = self._decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden[positions]

    def logits_at(self, input_ids, attention_mask, positions: torch.Tensor) -> torch.Tensor:
        """Next-token fp32 logits at the ``positions`` only, in row-major order.

        The output layer runs in the weights' own precision even under autocast: bf16 logits (3 significant
        digits) shift perplexities and flip argmax ties; the layers below keep the speed-up.
        """
        return project(self._head, self.hidden_at(input_ids, attention_mask, positions))

    def forward(self, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        positions = torch.nn.functional.pad(keep, (0, 1))  # position p predicts token p + 1
        hidden = self.hidden_at(input_ids, attention_mask, positions)
        gold = targets[keep]
        pad = -len(gold) % self.chunk_rows
        hidden = torch.cat([hidden, hidden.new_zeros(pad, hidden.shape[-1])])
        gold = torch.cat([gold, gold.new_full((pad,), IGNORE_INDEX)])
        loss = hidden.new_zeros((), dtype=torch.float32)
        for h, g in zip(hidden.split(self.chunk_rows), gold.split(self.chunk_rows)):
            loss = loss + nn.functional.cross_entropy(self._head(h).float(), g, ignore_index=IGNORE_INDEX,
                                                      reduction="sum")
        return loss, keep.sum()


def decoder_and_head(model):
    """The transformer body (hidden states) and the output layer of a causal LM, PEFT-wrapped or not, or of a
    :class:`~personagpt.models.fastpath.FastDecoder`."""
    if hasattr(model, "body") and hasattr(model, "logits"):
        return model.body, model.logits
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, inner.base_model_prefix), inner.get_output_embeddings()


def project(head, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 logits of ``hidden`` through the output layer, outside autocast."""
    if not hasattr(head, "weight"):  # a fast decoder's output layer: fp32 logits already
        return head(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        return head(hidden.to(head.weight.dtype)).float()


@torch.no_grad()
def record_loss(model, fmt: PromptFormat, record, max_length: int = MAX_SEQUENCE_LENGTH) -> float:
    """Mean negative log-likelihood per token of ``record.response`` under its goal and history."""
    dataset = TokenizedDataset.from_examples([control_example(record, fmt, max_length)])
    inputs = collate(dataset, [0], len(dataset[0][0]), fmt.tokenizer.pad_token_id)
    was_training = model.training
    model.eval()
    loss_sum, count = TargetLoss(model)(**{k: v.to(model.device) for k, v in inputs.items()})
    model.train(was_training)
    return float(loss_sum / count)


@dataclass
class TurnScore:
    """Teacher-forced results for one target response."""

    conversation: int  # index of the (dialogue, speaker) pair
    turn: int
    nll: list[float]  # per token of the response, eos included
    predicted: list[int]  # argmax prediction for each of those tokens
    gold: list[int]
    words: int


@torch.inference_mode()
def score_examples(model, fmt: PromptFormat, examples: Sequence[tuple[int, Example]],
                   words: Callable[[int, int], int], batch_size: int = 8, progress=None) -> list[TurnScore]:
    """Per-token NLL and argmax for every target turn of ``(conversation, example)`` pairs, batched (longest
    first, right padding). ``words(conversation, turn)`` gives the gold turn's word count (per-word perplexity)."""
    head = TargetLoss(model)
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i][1].ids))
    scores: list[TurnScore] = []
    for start in range(0, len(order), batch_size):
        batch = [examples[i] for i in order[start:start + batch_size]]
        width = max(len(e.ids) for _, e in batch)
        ids = torch.full((len(batch), width), fmt.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        positions = torch.zeros_like(ids, dtype=torch.bool)
        for row, (_, e) in enumerate(batch):
            ids[row, : len(e.ids)] = torch.tensor(e.ids)
            mask[row, : len(e.ids)] = 1
            for _, s, end in e.spans:
                positions[row, s - 1:end - 1] = True  # position p predicts token p + 1
        device = model.device
        logits = head.logits_at(ids.to(device), mask.to(device), positions.to(device)).float()
        gold = ids[:, 1:][positions[:, :-1]].to(device)
        nll = (torch.logsumexp(logits, -1) - logits.gather(-1, gold.unsqueeze(-1)).squeeze(-1)).tolist()
        argmax = logits.argmax(-1).tolist()
        cursor = 0
        for conversation, example in batch:
            for turn, s, end in example.spans:
                n = end - s
                scores.append(TurnScore(conversation, turn, nll[cursor:cursor + n], argmax[cursor:cursor + n],
                                        example.ids[s:end], words(conversation, turn)))
                cursor += n
        if progress is not None:
            progress(len(batch))
    scores.sort(key=lambda t: (t.conversation, t.turn))
    return scores


class PersonaRanker:
    """Candidate personas scored by the log-likelihood they give one speaker's turns, turn by turn.

    All K candidates run as one batch over one KV cache: each row is a candidate's persona prefix, left-padded
    to a common width, followed by the same dialogue tokens, so a new turn is one [K, turn length] forward.
    When the dialogue outgrows the context window, the oldest turns are dropped and the rows re-encoded (the
    persona prefix is never dropped), as the chat does.
    """

    # rows (candidates x positions) projected onto the vocabulary at once: 256 x 49k fp32 logits are 50 MB (64
    # positions of 20 candidates were 250 MB, and as many again for their log-softmax: a 3 GB peak in eval)
    SLICE_ROWS = 256

    def __init__(self, model, fmt: PromptFormat, candidates: Sequence[Sequence[str]], speaker: int = 2,
                 max_context: int | None = None) -> None:
        if not candidates:
            raise SettingsError("rank_personas needs at least one candidate persona")
        self.model, self.fmt, self.speaker = model, fmt, speaker
        self.prefixes = [fmt.persona_prefix(c, speaker) for c in candidates]
        self.max_context = max_context or context_limit(model)
        self._decoder, self._head = decoder_and_head(model)
        self.turns: list[list[int]] = []  # every turn's ids so far (eos included)
        self.turn_scores: list[torch.Tensor] = []  # per scored turn: [K] log-likelihoods
        self.scored_turns: list[int] = []  # dialogue index of each scored turn
        self.tokens_encoded = 0  # dialogue tokens fed per row (cost counter; prefixes excluded)
        self._reset([])

    @torch.inference_mode()
    def _reset(self, kept: list[list[int]]) -> None:
        """A fresh cache holding the prefixes and ``kept`` turns (no scores taken)."""
        width = max(len(p) for p in self.prefixes)
        pad, tail = self.fmt.tokenizer.pad_token_id, [i for t in kept for i in t]
        device = self.model.device
        self._cache = ReservedCache()
        self._mask = torch.zeros((len(self.prefixes), 0), dtype=torch.long, device=device)
        self._lengths = torch.zeros(len(self.prefixes), dtype=torch.long, device=device)
        self._window = len(kept)  # turns in the cache after the prefix (for the context budget)
        self._used = width + len(tail)
        ids = torch.tensor([[pad] * (width - len(p)) + p + tail for p in self.prefixes], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * (len(p) + len(tail)) for p in self.prefixes],
                            device=device)
        self._last = self._next_logprobs(self._forward(ids, mask)[:, -1:])

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Extend every row by a [K, n] chunk (``mask`` 0 on left padding); the chunk's final hidden states."""
        self._mask = torch.cat([self._mask, mask], 1)
        positions = (self._lengths.unsqueeze(1) + mask.cumsum(1) - 1).clamp(min=0)
        self._lengths = self._lengths + mask.sum(1)
        hidden = self._decoder(input_ids=ids, attention_mask=self._mask, position_ids=positions, cache=self._cache,
                               use_cache=True).last_hidden_state
        return hidden

    def _next_logprobs(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(project(self._head, hidden), -1)

    def add_turn(self, text: str) -> torch.Tensor | None:
        """Feed the next dialogue turn; returns its [K] log-likelihoods if it is the ranked speaker's, else None."""
        return self.add_turns([text])[-1]

    @torch.inference_mode()
    def add_turns(self, texts: Sequence[str]) -> list[torch.Tensor | None]:
        """Feed several turns in one forward pass; per turn, as :meth:`add_turn`."""
        new = [self.fmt.utterance(t) for t in texts]
        if not new:
            return []
        flat = [i for t in new for i in t]
        if self._used + len(flat) > self.max_context:
            if len(new) > 1:  # past the window: one turn at a time, dropping the oldest as needed
                return [score for text in texts for score in self.add_turns([text])]
            self._drop_to_fit(len(flat))
        first = len(self.turns)
        self.turns += new
        self._window += len(new)
        self._used += len(flat)
        self.tokens_encoded += len(flat)
        ids = torch.tensor([flat], device=self.model.device).expand(len(self.prefixes), -1)
        hidden = self._forward(ids, torch.ones_like(ids))
        gold = ids.unsqueeze(-1)
        # token j is predicted by position j - 1; the first by the previous chunk's last position
        parts = [self._last.gather(-1, gold[:, :1]).squeeze(-1)]
        step = max(1, self.SLICE_ROWS // len(self.prefixes))  # positions per slice: K x step rows at once
        for a in range(0, len(flat) - 1, step):  # the vocabulary projection in slices bounds memory
            b = min(a + step, len(flat) - 1)
            logits = project(self._head, hidden[:, a:b])
            parts.append(logits.gather(-1, gold[:, a + 1:b + 1]).squeeze(-1) - torch.logsumexp(logits, -1))
        token_lp = torch.cat(parts, 1)
        self._last = self._next_logprobs(hidden[:, -1:])
        out: list[torch.Tensor | None] = []
        cursor = 0
        for k, turn in enumerate(new):
            index = first + k
            if 1 + index % 2 == self.speaker:
                score = token_lp[:, cursor:cursor + len(turn)].sum(1).float().cpu()
                self.turn_scores.append(score)
                self.scored_turns.append(index)
                out.append(score)
            else:
                out.append(None)
            cursor += len(turn)
        return out

    def _drop_to_fit(self, incoming: int) -> None:
        width = max(len(p) for p in self.prefixes)
        window = self.turns[len(self.turns) - self._window:]
        while window and width + sum(len(t) for t in window) + incoming > self.max_context:
            window = window[1:]
        if width + incoming > self.max_context:
            raise ContextOverflowError(f"a turn of {incoming} tokens does not fit the {self.max_context}-token context "
                             "after the persona")
        self._reset(window)

    def totals(self) -> torch.Tensor:
        """[K] summed log-likelihood of the ranked speaker's turns so far (zeros before any)."""
        if not self.turn_scores:
            return torch.zeros(len(self.prefixes))
        return torch.stack(self.turn_scores).sum(0)

    def probabilities(self) -> torch.Tensor:
        """[K] posterior over the candidates under a uniform prior."""
        return torch.softmax(self.totals(), 0)

    def ranking(self) -> list[int]:
        """Candidate indices, likeliest first."""
        return torch.argsort(self.totals(), descending=True, stable=True).tolist()


def rank_personas(model, fmt: PromptFormat, candidates: Sequence[Sequence[str]], turns: Sequence[str],
                  speaker: int = 2, max_context: int | None = None) -> PersonaRanker:
    """Score ``candidates`` (persona fact lists) by the likelihood of ``speaker``'s turns in ``turns``
    (``turns[0]`` is p1's). The returned ranker's :meth:`~PersonaRanker.add_turn` goes on turn by turn."""
    ranker = PersonaRanker(model, fmt, candidates, speaker, max_context)
    ranker.add_turns(turns)
    return ranker
