"""Interviewer policies for authentication: which goal to pursue next (None: chat freely).

Baselines ask ``next_goal(transcript)``. Policies that look at the identifier implement ``choose(view)``
instead, where the view (:class:`~personagpt.auth.interview.View`) holds the turn, the identifier's current scores
over the candidates, the goals used so far, the candidates themselves, and ``preview(goal)`` (what the next
exchange would bring).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from personagpt.control.goals import Goal, on_topic
from personagpt.control.selfplay import FixedPolicy, RandomPolicy, Transcript
from personagpt.format import DEFAULT_ACTIONS
from personagpt.train.checkpoints import ConfigModule

TOP = 5  # the state keeps the identifier's top probabilities, sorted
MAX_TURNS = 8  # turn one-hot width (later turns share the last slot)


class NoGoalPolicy:
    """The interviewer chats freely, no action code (a baseline)."""

    def next_goal(self, transcript: Transcript) -> None:
        return None


def baseline_policies(seed: int = 0) -> dict:
    """The reference policies every learned policy is compared with."""
    return {"random": RandomPolicy(seed=seed), "round-robin": FixedPolicy(DEFAULT_ACTIONS), "no-goal": NoGoalPolicy()}


@lru_cache(maxsize=65536)
def _on_topic(fact: str, action: str) -> bool:
    return on_topic(fact.lower(), Goal.parse(action))


def topic_coverage(probs: torch.Tensor, candidates: Sequence[Sequence[str]],
                   actions: tuple[str, ...] = DEFAULT_ACTIONS) -> torch.Tensor:
    """Per goal, the probability mass of the candidates with a fact on its topic: a question about a topic that
    splits the likely candidates (mass near 0.5) tells them apart; one none of them mentions tells little."""
    has = torch.tensor([[float(any(_on_topic(f, a) for f in c)) for a in actions] for c in candidates])
    return probs @ has


def state_features(scores: torch.Tensor, turn: int, used: list[str | None],
                   actions: tuple[str, ...] = DEFAULT_ACTIONS,
                   candidates: Sequence[Sequence[str]] = ()) -> torch.Tensor:
    """The policy's state: the identifier's top-5 probabilities (sorted) and normalised entropy, the turn
    (one-hot), which goals were already pursued (a topic asked twice tells less the second time), and per goal
    the candidates' probability mass on its topic (:func:`topic_coverage`; zeros when the candidates are not
    known)."""
    probs = torch.softmax(scores.float(), 0)
    top = torch.zeros(TOP)
    k = min(TOP, len(probs))
    top[:k] = probs.sort(descending=True).values[:k]
    entropy = float(-(probs * probs.clamp_min(1e-12).log()).sum() / math.log(max(2, len(probs))))
    when = torch.zeros(MAX_TURNS)
    when[min(turn, MAX_TURNS - 1)] = 1
    done = torch.tensor([float(a in used) for a in actions])
    coverage = topic_coverage(probs, candidates, actions) if len(candidates) else torch.zeros(len(actions))
    return torch.cat([top, torch.tensor([entropy]), when, done, coverage])


FEATURES = TOP + 1 + MAX_TURNS + 2 * len(DEFAULT_ACTIONS)


class QNetwork(ConfigModule, nn.Module):
    """Q(state, goal) for every goal at once: a two-layer MLP (a few thousand parameters). ``guide`` names the
    identifier whose view the state is built from (a policy must be run with the identifier it learned on)."""

    def __init__(self, features: int = FEATURES, actions: int = len(DEFAULT_ACTIONS), hidden: int = 64,
                 guide: str = "embedding") -> None:
        super().__init__()
        self.guide = guide
        self.config = {"features": features, "actions": actions, "hidden": hidden, "guide": guide}
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, actions))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


class LearnedPolicy:
    """Greedy in the learned Q (epsilon-greedy while it is trained)."""

    def __init__(self, network: QNetwork, actions: tuple[str, ...] = DEFAULT_ACTIONS, epsilon: float = 0.0,
                 seed: int | None = None) -> None:
        self.network, self.actions, self.epsilon = network, actions, epsilon
        self.rng = random.Random(seed)

    def choose(self, view) -> str:
        if self.epsilon and self.rng.random() < self.epsilon:
            return self.rng.choice(self.actions)
        with torch.inference_mode():
            q = self.network(state_features(view.scores, view.turn, view.used, self.actions, view.candidates))
        return self.actions[int(q.argmax())]


class LookaheadPolicy:
    """Tries every goal for the next exchange and keeps the one that raises the true persona's probability most
    (an oracle: it knows the truth and pays one exchange per goal; a reference for what steering can reach)."""

    def __init__(self, actions: tuple[str, ...] = DEFAULT_ACTIONS) -> None:
        self.actions = actions

    def choose(self, view) -> str:
        return max(self.actions, key=view.preview)


def packaged_policy_path() -> Path:
    """The interviewer policy shipped for the bundled model (``personagpt auth train``)."""
    return Path(__file__).resolve().parents[1] / "resources" / "auth" / "policy.pt"
