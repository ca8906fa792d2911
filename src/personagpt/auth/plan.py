"""Planning the interviewer's next question without knowing the truth, and a policy distilled from the planner.

The actions are the candidates' own facts, asked as yes/no questions (:func:`personagpt.facts.question`), chosen
where the likely candidates disagree, and optionally the goal codes. The :class:`Planner` simulates the partner's
answer to every action under each of the top-M candidate personas (batched generation, :class:`~personagpt.auth.env.
Lookahead`), scores each simulated exchange with the guide identifier, and takes the action with the lowest expected
entropy over the K candidates afterwards (the largest expected information gain). The :class:`DistilledPolicy`
scores the same actions from cheap features (:func:`options`) with a small network trained to pick what the planner
picked, so it runs at random's cost.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from personagpt.auth.env import Action, Question, View
from personagpt.auth.identify import FactEmbeddings
from personagpt.checkpoints import ConfigModule
from personagpt.facts import question as fact_question

MATCH = 0.6  # cosine at which two facts say the same thing (the question check's threshold)
FEATURES = 10


@dataclass
class Option:
    """One action the interviewer could take, and what the candidates' probabilities say about it."""

    action: Action
    features: torch.Tensor  # [FEATURES], see :func:`options`


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def _asked_before(view: View) -> list[str]:
    return [u[len("ask: "):] for u in view.used if u and u.startswith("ask: ")]


def options(view: View, facts: FactEmbeddings, count: int = 4, top: int = 3,
            codes: Sequence[str] = ()) -> list[Option]:
    """The actions worth considering now: up to ``count`` facts of the ``top`` likeliest candidates, asked as yes/no
    questions, those whose probability mass (the candidates holding a fact like it) is nearest one half first; a
    fact already asked is not asked again. Then ``codes`` (goal codes), each with its topic's mass.

    Features: [is a fact question, is a goal, mass m, 4 m (1 - m), the likeliest candidate holds it, the second
    holds it, already used, the top probability, normalised entropy, turn / 8]."""
    from personagpt.auth.policies import topic_coverage

    probs = torch.softmax(view.scores.float(), 0)
    k = len(probs)
    common = [float(probs.max()), float(_entropy(probs) / math.log(max(2, k))), min(view.turn, 8) / 8]
    ranked = probs.argsort(descending=True).tolist()
    out: list[Option] = []
    seen = set(_asked_before(view))  # a question asked already, or already an option, is not offered again
    pool = []
    for index in ranked[:top]:
        for fact in view.candidates[index]:
            made = fact_question(fact)
            if made is not None and made[0] not in seen:
                seen.add(made[0])
                pool.append((Question(made[0], fact), index))
    if pool:
        everyone = [f for c in view.candidates for f in c]
        owner = torch.tensor([i for i, c in enumerate(view.candidates) for _ in c])
        similar = facts.facts([q.fact for q, _ in pool]) @ facts.facts(everyone).T  # [P, all facts]
        holds = torch.zeros(len(pool), k).scatter_reduce(1, owner.expand(len(pool), -1), (similar >= MATCH).float(),
                                                         "amax")
        mass = holds @ probs
        order = sorted(range(len(pool)), key=lambda i: (abs(float(mass[i]) - 0.5), i))[:count]
        for i in order:
            m = float(mass[i])
            out.append(Option(pool[i][0], torch.tensor([1.0, 0.0, m, 4 * m * (1 - m), float(holds[i, ranked[0]]),
                                                        float(holds[i, ranked[1]]) if k > 1 else 0.0, 0.0, *common])))
    if codes:
        coverage = topic_coverage(probs, view.candidates, tuple(codes))
        first = topic_coverage(torch.eye(k)[ranked[0]], view.candidates, tuple(codes))
        second = topic_coverage(torch.eye(k)[ranked[1]], view.candidates, tuple(codes)) if k > 1 else first * 0
        for j, code in enumerate(codes):
            c = float(coverage[j])
            out.append(Option(code, torch.tensor([0.0, 1.0, c, 4 * c * (1 - c), float(first[j]),
                                                  float(second[j]), float(code in view.used), *common])))
    return out


class Planner:
    """Expected information gain by simulation (see the module's docstring). ``top`` candidate personas answer
    every option; their probabilities, renormalised, weigh the entropies after each answer. Each decision (the
    options' features and their expected entropies) is appended to ``record`` when it is given (distillation)."""

    def __init__(self, facts: FactEmbeddings, questions: int = 4, top: int = 3, codes: Sequence[str] = (),
                 record: list | None = None) -> None:
        self.facts, self.questions, self.top, self.codes, self.record = facts, questions, top, tuple(codes), record

    def choose(self, view: View) -> Action:
        if view.lookahead is None:
            raise ValueError("the planner needs the environment's lookahead")
        choices = options(view, self.facts, self.questions, self.top, self.codes)
        if not choices:
            return None
        probs = torch.softmax(view.scores.float(), 0)
        likeliest = probs.argsort(descending=True)[:self.top].tolist()
        weights = probs[likeliest] / probs[likeliest].sum()
        goals = [o.action for o in choices if not isinstance(o.action, Question)]
        generated = dict(zip(goals, view.lookahead.questions(goals)))
        texts = [o.action.text if isinstance(o.action, Question) else generated[o.action] for o in choices]
        answers = view.lookahead.answers(texts, [view.candidates[i] for i in likeliest])
        after = view.lookahead.scores_after([t for t in texts for _ in likeliest], [a for row in answers for a in row])
        entropies = _entropy(torch.softmax(after.float(), -1)).view(len(choices), len(likeliest))
        expected = entropies @ weights
        best = int(expected.argmin())
        if self.record is not None:
            self.record.append({"features": torch.stack([o.features for o in choices]).tolist(),
                                 "expected_entropy": expected.tolist(), "chosen": best})
        return choices[best].action


class OptionScorer(ConfigModule, nn.Module):
    """A score per option from its features (two small layers); the policy takes the highest."""

    def __init__(self, features: int = FEATURES, hidden: int = 32, questions: int = 4, codes: Sequence[str] = ()) -> None:
        super().__init__()
        self.config = {"features": features, "hidden": hidden, "questions": questions, "codes": list(codes)}
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)


class DistilledPolicy:
    """The option the :class:`OptionScorer` ranks first: no simulation, so a turn costs what random's does."""

    def __init__(self, scorer: OptionScorer, facts: FactEmbeddings) -> None:
        self.scorer, self.facts = scorer, facts

    def choose(self, view: View) -> Action:
        choices = options(view, self.facts, self.scorer.config["questions"], codes=self.scorer.config["codes"])
        if not choices:
            return None
        with torch.inference_mode():
            return choices[int(self.scorer(torch.stack([o.features for o in choices])).argmax())].action


class RandomQuestionPolicy:
    """A random one of the same options the planner weighs (a baseline: does planning matter, or the questions?)."""

    def __init__(self, facts: FactEmbeddings, questions: int = 4, codes: Sequence[str] = (), seed: int = 0) -> None:
        self.facts, self.questions, self.codes, self.seed = facts, questions, tuple(codes), seed

    def choose(self, view: View) -> Action:
        choices = options(view, self.facts, self.questions, codes=self.codes)
        if not choices:
            return None
        key = "\x1f".join([str(self.seed), str(view.turn), *(" ".join(c) for c in view.candidates), *map(str, view.used)])
        return random.Random(key).choice(choices).action


def distill(decisions: Sequence[dict], steps: int = 2000, seed: int = 0, questions: int = 4,
            codes: Sequence[str] = (), progress=None) -> OptionScorer:
    """Train an :class:`OptionScorer` to pick the planner's choice (cross-entropy over each decision's options)."""
    torch.manual_seed(seed)
    scorer = OptionScorer(questions=questions, codes=codes)
    usable = [d for d in decisions if len(d["features"]) > 1]
    if not usable:
        raise ValueError("no decision with more than one option to learn from")
    rows = [torch.tensor(d["features"]) for d in usable]
    chosen = torch.tensor([d["chosen"] for d in usable])
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=3e-3, weight_decay=1e-4)
    rng = random.Random(seed)
    for step in range(steps):
        batch = rng.sample(range(len(rows)), min(64, len(rows)))
        loss = torch.stack([nn.functional.cross_entropy(scorer(rows[i]).unsqueeze(0), chosen[i:i + 1])
                            for i in batch]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if progress:
            progress(step + 1, loss.item())
    return scorer.eval()


def agreement(scorer: OptionScorer, decisions: Sequence[dict]) -> float:
    """How often the scorer picks what the planner picked (held-out decisions)."""
    usable = [d for d in decisions if d["features"]]
    with torch.inference_mode():
        hits = [int(scorer(torch.tensor(d["features"])).argmax()) == d["chosen"] for d in usable]
    return sum(hits) / max(1, len(hits))


def packaged_distilled_path() -> Path:
    """The distilled interviewer shipped for the bundled model (``personagpt auth distill``), if any."""
    return Path(__file__).resolve().parents[1] / "resources" / "auth" / "distilled.pt"
