"""Identifiers: rank K candidate personas from the partner's turns so far, updated after every exchange.

* :class:`LikelihoodIdentifier`: the dialogue model itself; a candidate's score is the log-likelihood of the
  partner's turns after that persona's prefix (:class:`~personagpt.scoring.PersonaRanker`, incremental). No
  training, but every turn costs K rows of forward passes and K rows of keys/values stay in memory.
* :class:`EmbeddingIdentifier` (as in the paper): each partner turn is encoded once, alone, as the mean of the
  dialogue model's last hidden states; the running mean of those goes through a small trained head
  (:class:`IdentifierHead`) and is compared (scaled cosine) with each candidate's persona embedding. A turn
  costs one short forward pass whatever K is, and its state is a vector, so it forks for free (lookahead).

* :class:`SentenceIdentifier`: what the partner says against what each persona states, under the sentence
  encoder the goal labeler already uses (all-MiniLM-L6-v2): after each answer, every candidate gains the best
  cosine between a sentence of the answer and one of its facts. No training, one small encoder pass per turn
  whatever K is, and forkable like the embedding identifier; it ignores how the dialogue model would phrase things.

All return unnormalised scores; ``softmax`` over the candidates gives the probabilities the policies see.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from personagpt.control.goals import SentenceEmbedder, sentences
from personagpt.format import PromptFormat
from personagpt.generate.consistency import expected_answer, last_yes_no_question
from personagpt.models.precision import inference_autocast
from personagpt.personas.facts import answer_polarity
from personagpt.scoring import PersonaRanker, decoder_and_head
from personagpt.train.checkpoints import ConfigModule


class Identifier(Protocol):
    def add_exchange(self, question: str, answer: str) -> torch.Tensor:
        """Feed one interviewer turn and the partner's answer; the [K] scores after them."""
        ...


class LikelihoodIdentifier:
    def __init__(self, model, fmt: PromptFormat, candidates: Sequence[Sequence[str]]) -> None:
        self.ranker = PersonaRanker(model, fmt, candidates, speaker=2)

    def add_exchange(self, question: str, answer: str) -> torch.Tensor:
        self.ranker.add_turns([question, answer])
        return self.ranker.totals()


class PooledEncoder:
    """Mean of the dialogue model's last hidden states over a text's tokens (one text per row, no context).
    Persona embeddings are kept: an evaluation pool repeats the same few hundred personas."""

    def __init__(self, model, fmt: PromptFormat, batch_size: int = 64) -> None:
        self.model, self.fmt, self.batch_size = model, fmt, batch_size
        self.decoder, _ = decoder_and_head(model)
        self.width = self.decoder.config.hidden_size
        self._personas: dict[tuple[str, ...], torch.Tensor] = {}
        self._lock = threading.Lock()

    @torch.inference_mode()
    def encode_ids(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        out = []
        pad = self.fmt.tokenizer.pad_token_id
        for start in range(0, len(rows), self.batch_size):
            batch = [list(r)[-256:] for r in rows[start:start + self.batch_size]]
            width = max(len(r) for r in batch)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch], device=self.model.device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch], device=self.model.device)
            with inference_autocast(self.model):
                hidden = self.decoder(input_ids=ids, attention_mask=mask).last_hidden_state.float()
            out.append((hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True))
        return torch.cat(out).cpu() if out else torch.zeros(0, self.width)

    def turns(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode_ids([self.fmt.utterance(t) for t in texts])

    def personas(self, personas: Sequence[Sequence[str]]) -> torch.Tensor:
        return cached_rows(self._personas, self._lock, [tuple(p) for p in personas],
                           lambda missing: self.encode_ids([self.fmt.facts(k) for k in missing]))


def cached_rows(cache: dict, lock: threading.Lock, keys: Sequence, encode) -> torch.Tensor:
    """Rows for ``keys`` from ``cache``, encoding the missing ones in one batch (thread-safe; interviews run in
    threads)."""
    with lock:
        missing = list(dict.fromkeys(k for k in keys if k not in cache))
    if missing:
        encoded = encode(missing)
        with lock:
            cache.update(zip(missing, encoded))
    with lock:
        return torch.stack([cache[k] for k in keys])


class IdentifierHead(ConfigModule, nn.Module):
    """Two small projections into one space, turns and personas, compared by a scaled cosine."""

    def __init__(self, width: int, dim: int = 128, hidden: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = {"width": width, "dim": dim, "hidden": hidden, "dropout": dropout}

        def tower() -> nn.Module:
            return nn.Sequential(nn.LayerNorm(width), nn.Dropout(dropout), nn.Linear(width, hidden), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, dim))

        self.turn_tower, self.persona_tower = tower(), tower()
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, turns: torch.Tensor, personas: torch.Tensor) -> torch.Tensor:
        """[B, P] logits of every (turn summary, persona) pair."""
        t = nn.functional.normalize(self.turn_tower(turns), dim=-1)
        p = nn.functional.normalize(self.persona_tower(personas), dim=-1)
        return self.log_scale.exp() * t @ p.T


class EmbeddingIdentifier:
    def __init__(self, encoder: PooledEncoder, head: IdentifierHead, candidates: Sequence[Sequence[str]]) -> None:
        self.encoder, self.head = encoder, head
        with torch.inference_mode():
            self.personas = head.persona_tower(encoder.personas(candidates))
            self.personas = nn.functional.normalize(self.personas, dim=-1)
        self.total = torch.zeros(encoder.width)
        self.count = 0

    def scores_for(self, total: torch.Tensor, count: int) -> torch.Tensor:
        if count == 0:
            return torch.zeros(len(self.personas))
        with torch.inference_mode():
            t = nn.functional.normalize(self.head.turn_tower((total / count).unsqueeze(0)), dim=-1)
            return (self.head.log_scale.exp() * t @ self.personas.T)[0]

    def preview(self, answer: str, question: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """The scores after ``answer`` and its encoding, without committing it (lookahead)."""
        encoded = self.encoder.turns([answer])[0]
        return self.scores_for(self.total + encoded, self.count + 1), encoded

    def add_exchange(self, question: str, answer: str, encoded: torch.Tensor | None = None) -> torch.Tensor:
        self.total = self.total + (encoded if encoded is not None else self.encoder.turns([answer])[0])
        self.count += 1
        return self.scores_for(self.total, self.count)


def packaged_head_path() -> Path:
    """The identifier head trained for the bundled model (``personagpt auth train-identifier``)."""
    return Path(__file__).resolve().parents[1] / "resources" / "auth" / "identifier.pt"


RECENT_SENTENCES = 4096


class FactEmbeddings:
    """A sentence encoder with its persona facts' embeddings kept (an evaluation pool repeats the same facts)."""

    def __init__(self, embedder=None) -> None:
        self.embedder = embedder or SentenceEmbedder()
        self._facts: dict[str, torch.Tensor] = {}
        # recent answer sentences: the sentence and exchange identifiers read every answer, a planner's previews too
        self._sentences: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def facts(self, facts: Sequence[str]) -> torch.Tensor:
        return cached_rows(self._facts, self._lock, list(facts), self.embedder.encode)

    def sentences(self, text: str) -> torch.Tensor:
        return self.sentences_of([text])[0]

    def sentences_of(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Each text's sentence embeddings, all encoded in one batch."""
        split = [sentences(t.lower()) or [t or " "] for t in texts]
        wanted = list(dict.fromkeys(s for parts in split for s in parts))
        with self._lock:
            have = {s: self._sentences[s] for s in wanted if s in self._sentences}
        missing = [s for s in wanted if s not in have]
        if missing:
            have.update(zip(missing, self.embedder.encode(missing)))
            with self._lock:
                self._sentences.update((s, have[s]) for s in missing)
                while len(self._sentences) > RECENT_SENTENCES:
                    self._sentences.popitem(last=False)
        return [torch.stack([have[s] for s in parts]) for parts in split]


class SentenceIdentifier:
    """``scale`` turns summed cosines into logits: 5 gave the true persona the highest mean log-probability over
    turns 1-8 (-1.37; 10: -1.73, 3: -1.51) in 32 random-goal self-play interviews on training personas, so the
    probabilities the policy sees and is rewarded by are calibrated rather than overconfident."""

    def __init__(self, encoder: FactEmbeddings, candidates: Sequence[Sequence[str]], scale: float = 5.0) -> None:
        self.encoder, self.scale = encoder, scale
        facts = [f for c in candidates for f in c]
        self.facts = encoder.facts(facts)
        self.owner = torch.tensor([i for i, c in enumerate(candidates) for _ in c])
        self.k = len(candidates)
        self.total = torch.zeros(self.k)

    def gain(self, answer: str, question: str = "", sentences: torch.Tensor | None = None) -> torch.Tensor:
        """[K]: each candidate's best (answer sentence, fact) cosine (the question is not read here);
        ``sentences``: the answer's sentence embeddings when already encoded."""
        sentences = self.encoder.sentences(answer) if sentences is None else sentences
        best_per_fact = (sentences @ self.facts.T).max(dim=0).values
        return torch.full((self.k,), -1.0).scatter_reduce(0, self.owner, best_per_fact, "amax")

    def preview(self, answer: str, question: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """The scores after ``answer`` and its gain, without committing it (lookahead)."""
        gain = self.gain(answer, question)
        return self.scale * (self.total + gain), gain

    def preview_many(self, questions: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
        """[n, K]: the scores after each hypothetical exchange (a planner's simulated answers)."""
        if not answers:
            return torch.zeros(0, self.k)
        encoded = self.encoder.sentences_of(answers)
        return self.scale * (self.total + torch.stack([self.gain(a, q, e) for q, a, e in zip(questions, answers, encoded)]))

    def add_exchange(self, question: str, answer: str, encoded: torch.Tensor | None = None) -> torch.Tensor:
        self.total = self.total + (encoded if encoded is not None else self.gain(answer, question))
        return self.scale * self.total


def partner_answer_rates(candidates: int = 1) -> tuple[float, float]:
    """How often a partner answering best-of-``candidates`` gives the answer a persona fact implies to the yes/no
    question about it: when its persona holds the fact, and when it does not. Sampled once, the bundled model gave
    it 55% and 54% of the time (``bench/experiments/auth_partner_answers.py``, 254 questions to 30 training personas). Best-of-N
    keeps a reply that does not deny an asked fact of the persona when one of its N samples does not, so a holder
    gives it 1 - 0.45^N of the time (0.96 for N = 4; measured 0.97) and a non-holder still about half (measured
    0.47)."""
    return 1 - (1 - 0.55) ** candidates, 0.5


class ExchangeIdentifier(SentenceIdentifier):
    """The sentence identifier plus the answer read with its question. When the interviewer's turn ends with a
    yes/no question and the answer opens with yes or no (:func:`personagpt.personas.facts.answer_polarity`), each candidate's
    fact nearest the question (cosine above ``floor``) adds ``weight`` x its closeness (0 at ``floor``, 1 at
    cosine 1) when the answer agrees with what that fact implies, and subtracts it when it disagrees; candidates
    with no such fact are left alone. The question check of the best-replies work found the asked fact this way
    (precision 89.5 / recall 81.0 on its hand-labelled set).

    With ``rates`` (how often the partner gives the answer a fact implies when its persona holds the fact, and when
    it does not; :func:`partner_answer_rates`), a yes or a no weighs what it is worth instead of ``weight``: the
    candidate gains the answer's log-likelihood ratio (holds against not) times the closeness. A sycophantic partner
    says "yes" to a fact it does not hold half the time, so a "yes" lifts the fact's holders by log(0.96 / 0.5) =
    0.65 against a best-of-4 partner, and a "no" sinks them by log(0.04 / 0.5) = -2.5; against a one-sample partner,
    whose answers barely depend on its persona, neither moves them.
    """

    def __init__(self, encoder: FactEmbeddings, candidates: Sequence[Sequence[str]], scale: float = 5.0,
                 weight: float = 1.0, floor: float = 0.5, rates: tuple[float, float] | None = None) -> None:
        super().__init__(encoder, candidates, scale)
        self.weight, self.floor = weight, floor
        self.ratios = None
        if rates is not None:  # the log-likelihood ratios (holds against not) of the implied answer and its opposite
            held, not_held = (min(max(r, 0.01), 0.99) for r in rates)
            self.ratios = (math.log(held / not_held), math.log((1 - held) / (1 - not_held)))
        implied = [expected_answer(f) for c in candidates for f in c]
        self.implies_yes = torch.tensor([1.0 if e else -1.0 if e is False else 0.0 for e in implied])
        self._questions: dict[str, torch.Tensor | None] = {}

    def _closeness(self, question: str) -> torch.Tensor | None:
        """Per fact, how close it is to ``question``'s closing yes/no question (None: it has none)."""
        if question not in self._questions:
            asked = last_yes_no_question(question)
            if asked is None:
                self._questions[question] = None
            else:
                cosine = self.encoder.embedder.encode([asked])[0] @ self.facts.T
                self._questions[question] = ((cosine - self.floor) / (1 - self.floor)).clamp(0, 1)
        return self._questions[question]

    def gain(self, answer: str, question: str = "", sentences: torch.Tensor | None = None) -> torch.Tensor:
        gain = super().gain(answer, question, sentences)
        polarity = answer_polarity(answer) if question else None
        closeness = self._closeness(question) if polarity is not None else None
        if closeness is None:
            return gain
        # per candidate, its fact nearest the question decides: agreement (+1 / -1) times closeness
        nearest = torch.full((self.k,), -1.0).scatter_reduce(0, self.owner, closeness, "amax")
        sign = self.implies_yes * (1.0 if polarity else -1.0)
        weight = self.weight
        if self.ratios is not None:  # per fact, the answer's log-likelihood ratio (0: it implies neither), in logits
            sign = torch.where(sign > 0, self.ratios[0], torch.where(sign < 0, self.ratios[1], 0.0))
            weight = 1 / self.scale
        is_nearest = closeness == nearest[self.owner]
        support = torch.zeros(self.k).index_add_(0, self.owner, torch.where(is_nearest, sign * closeness,
                                                                            torch.zeros_like(closeness)))
        count = torch.zeros(self.k).index_add_(0, self.owner, is_nearest.float()).clamp_min(1)
        return gain + weight * support / count


def fact_identifiers(facts: FactEmbeddings, partner_candidates: int = 1) -> dict:
    """{name: candidates -> identifier} for the identifiers that read persona facts under the sentence encoder:
    sentence, exchange, and the exchange identifier calibrated to a best-of-``partner_candidates`` partner."""
    rates = partner_answer_rates(partner_candidates)
    return {"sentence": lambda candidates: SentenceIdentifier(facts, candidates),
            "exchange": lambda candidates: ExchangeIdentifier(facts, candidates),
            "calibrated": lambda candidates: ExchangeIdentifier(facts, candidates, rates=rates)}
