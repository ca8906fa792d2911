"""Planning the interviewer's next question without knowing the truth, and a policy distilled from the planner.

The actions are the candidates' own facts, asked as yes/no questions (:func:`personagpt.personas.facts.question`), chosen
where the likely candidates disagree, and optionally the goal codes. The :class:`Planner` simulates the partner's
answer to every action under each of the top-M candidate personas (batched generation, :class:`~personagpt.auth.interview.
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

from personagpt.auth.identify import FactEmbeddings
from personagpt.auth.interview import Action, Question, View
from personagpt.auth.policies import topic_coverage
from personagpt.control.selfplay import RandomPolicy
from personagpt.format import DEFAULT_ACTIONS
from personagpt.personas.facts import question as fact_question
from personagpt.train.checkpoints import ConfigModule

MATCH = 0.6  # cosine at which two facts say the same thing (the question check's threshold)
FEATURES = 10

# An open question per goal code, said as written: its answer names the partner's own fact on the topic ("i have a
# dog"), where a yes/no question about one candidate's fact draws an answer that echoes the question whoever answers.
TOPIC_QUESTIONS = {
    "ask about kids.": "do you have any kids ?",
    "ask about pets.": "do you have any pets ?",
    "talk about work.": "what do you do for a living ?",
    "ask about marital status.": "are you married ?",
    "talk about travel.": "where do you like to travel ?",
    "ask about age and gender.": "how old are you ?",
    "ask about hobbies.": "what do you like to do for fun ?",
    "ask about favorite food.": "what is your favorite food ?",
    "talk about movies.": "what kind of movies do you like ?",
    "talk about music.": "what kind of music do you like ?",
    "talk about politics.": "what do you think about politics ?",
}


@dataclass
class Option:
    """One action the interviewer could take, and what the candidates' probabilities say about it."""

    action: Action
    features: torch.Tensor  # [FEATURES], see :func:`options`


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def _seeded_choice(seed: int, view: View, items: Sequence):
    """A random item, drawn from the seed and the interview so far: it does not depend on how interviews running
    side by side interleave."""
    key = "\x1f".join([str(seed), str(view.turn), *(" ".join(c) for c in view.candidates), *map(str, view.used)])
    return random.Random(key).choice(items)


def _asked_before(view: View) -> list[str]:
    return [u[len("ask: "):] for u in view.used if u and u.startswith("ask: ")]


def options(view: View, facts: FactEmbeddings, count: int = 4, top: int = 3,
            codes: Sequence[str] = (), topics: int = 0) -> list[Option]:
    """The actions worth considering now: up to ``count`` facts of the ``top`` likeliest candidates, asked as yes/no
    questions, those whose probability mass (the candidates holding a fact like it) is nearest one half first; a
    fact already asked is not asked again. Then up to ``topics`` open topic questions (:data:`TOPIC_QUESTIONS`, not
    asked yet), those most of the likely candidates have a fact on first. Then ``codes`` (goal codes), each with its
    topic's mass (a topic question's features are its code's).

    Features: [is a fact question, is a goal, mass m, 4 m (1 - m), the likeliest candidate holds it, the second
    holds it, already used, the top probability, normalised entropy, turn / 8]."""
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
    open_codes = [c for c in TOPIC_QUESTIONS if TOPIC_QUESTIONS[c] not in seen] if topics else []
    every = tuple(dict.fromkeys([*open_codes, *codes]))
    if every:
        coverage = topic_coverage(probs, view.candidates, every)
        first = topic_coverage(torch.eye(k)[ranked[0]], view.candidates, every)
        second = topic_coverage(torch.eye(k)[ranked[1]], view.candidates, every) if k > 1 else first * 0

        def option(action: Action, j: int) -> Option:
            c = float(coverage[j])
            return Option(action, torch.tensor([0.0, 1.0, c, 4 * c * (1 - c), float(first[j]), float(second[j]),
                                                float(str(action) in view.used), *common]))

        most = sorted(range(len(open_codes)), key=lambda j: (-float(coverage[j]), j))[:topics]
        out += [option(Question(TOPIC_QUESTIONS[open_codes[j]]), j) for j in most]
        out += [option(code, every.index(code)) for code in codes]
    return out


class Planner:
    """Planning by simulation (see the module's docstring). ``top`` candidate personas answer every option; their
    probabilities, renormalised, weigh what each answer leaves. ``criterion`` says what that is: ``"entropy"``, the
    entropy over the K after the answer (expected information gain); ``"truth"``, minus the log-probability of the
    candidate that answered (expected log score). The two differ where the guide can be misled: a "no, i do not have
    a dog" still lifts every dog owner for the sentence identifier, which lowers the entropy but not the answering
    candidate's probability. Each decision (the options' features and their expected values) is appended to
    ``record`` when it is given (distillation).

    With ``baseline`` (a seeded :class:`~personagpt.control.selfplay.RandomPolicy`), the goal that baseline draws for this
    conversation is one more option, simulated like the rest: the planner leaves the random interview only where a
    question is expected to tell more than the open exchange random would have had."""

    def __init__(self, facts: FactEmbeddings, questions: int = 4, top: int = 3, codes: Sequence[str] = (),
                 record: list | None = None, topics: int = 0, criterion: str = "entropy",
                 baseline: RandomPolicy | None = None) -> None:
        if criterion not in ("entropy", "truth"):
            raise ValueError(f"unknown planning criterion {criterion!r}")
        self.facts, self.questions, self.top, self.codes, self.record = facts, questions, top, tuple(codes), record
        self.topics, self.criterion, self.baseline = topics, criterion, baseline

    def choose(self, view: View) -> Action:
        if view.lookahead is None:
            raise ValueError("the planner needs the environment's lookahead")
        codes = self.codes
        if self.baseline is not None and view.transcript is not None:
            codes = tuple(dict.fromkeys([*codes, self.baseline.next_goal(view.transcript)]))
        choices = options(view, self.facts, self.questions, self.top, codes, self.topics)
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
        after = after.float().view(len(choices), len(likeliest), -1)
        if self.criterion == "entropy":
            left = _entropy(torch.softmax(after, -1))
        else:  # [option, answering candidate]: minus its log-probability after its own answer
            left = -torch.log_softmax(after, -1)[:, range(len(likeliest)), likeliest]
        expected = left @ weights
        best = int(expected.argmin())
        if self.record is not None:
            self.record.append({"features": torch.stack([o.features for o in choices]).tolist(),
                                 "expected": expected.tolist(), "chosen": best})
        chosen = choices[best].action
        if self.baseline is not None and chosen not in self.codes and not isinstance(chosen, Question):
            # the baseline's own goal: let the interviewer generate its turn from its own draws, as random's
            # interview does, instead of saying the simulated question (the two interviews stay one)
            view.lookahead.asked.pop(chosen, None)
        return chosen


class Gated:
    """A question policy that waits until it has something to ask about: while its ``top`` likeliest candidates
    hold less than ``mass`` of the probability, the interviewer pursues a random goal code (an open exchange, which
    reveals more than a question about a few of 20 near-equally likely candidates); then ``policy`` decides. On
    random-goal interviews (training and validation personas alike) the truth was among the 3 likeliest 85-100% of
    the time when they held half the mass or more, and about half the time when they held less.

    The random goal is the one :class:`~personagpt.control.selfplay.RandomPolicy` with the same seed draws for the same
    conversation, so that until the gate opens a gated interview is the random baseline's interview, turn for turn:
    a paired comparison then measures what the gated policy changes, not the luck of different draws."""

    def __init__(self, policy, mass: float = 0.5, top: int = 3, seed: int = 0,
                 actions: Sequence[str] = DEFAULT_ACTIONS) -> None:
        self.policy, self.mass, self.top, self.seed, self.actions = policy, mass, top, seed, tuple(actions)
        self.random = RandomPolicy(self.actions, seed)

    def choose(self, view: View) -> Action:
        probs = torch.softmax(view.scores.float(), 0)
        if float(probs.topk(min(self.top, len(probs))).values.sum()) >= self.mass:
            return self.policy.choose(view)
        if view.transcript is not None:
            return self.random.next_goal(view.transcript)
        return _seeded_choice(self.seed, view, self.actions)


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

    def __init__(self, facts: FactEmbeddings, questions: int = 4, codes: Sequence[str] = (), seed: int = 0,
                 topics: int = 0) -> None:
        self.facts, self.questions, self.codes, self.seed, self.topics = facts, questions, tuple(codes), seed, topics

    def choose(self, view: View) -> Action:
        choices = options(view, self.facts, self.questions, codes=self.codes, topics=self.topics)
        if not choices:
            return None
        return _seeded_choice(self.seed, view, choices).action


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
