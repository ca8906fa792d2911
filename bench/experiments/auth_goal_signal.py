"""How much does the interviewer's goal change what a turn reveals? A check on what any learned policy can gain.

Reads the replay buffer of an ``auth train`` run (every exchange it played: state, goal, reward = the gain in the
true persona's log-probability) and fits ridge regressions of the reward on growing feature sets, on 75% of the
interviews, scoring the squared error on the other 25% (three random splits by interview):

* turn: the turn index only (later answers add less);
* + goal: which of the 11 goals was pursued;
* + repeat: whether that goal was already pursued in this interview;
* + coverage: the candidates' probability mass with a fact on the goal's topic (and its spread, m(1 - m)).

If the goal features lower the held-out error no more than noise does, the reward does not depend on the goal
in a way a policy can learn from this much self-play, and a learned policy cannot beat random goals by much.

    python bench/experiments/auth_goal_signal.py runs/auth/policy/checkpoint.pt
"""

from __future__ import annotations

import argparse
import random

import torch

from personagpt.auth.policies import MAX_TURNS, TOP
from personagpt.format import DEFAULT_ACTIONS

FEATURE_SETS = (("turn",), ("turn", "goal"), ("turn", "repeat"), ("turn", "coverage"),
                ("turn", "goal", "repeat", "coverage"))


def features(transition: tuple, which: tuple[str, ...]) -> torch.Tensor:
    state, action = transition[0], transition[1]
    used_at = TOP + 1 + MAX_TURNS
    actions = len(DEFAULT_ACTIONS)
    turn = torch.zeros(MAX_TURNS)
    turn[int(state[TOP + 1:used_at].argmax())] = 1
    goal = torch.zeros(actions)
    goal[action] = 1
    coverage = state[used_at + actions + action]
    parts = {"turn": turn, "goal": goal, "repeat": state[used_at + action].view(1),
             "coverage": torch.stack([coverage, coverage * (1 - coverage)])}
    return torch.cat([parts[w] for w in which])


def held_out_error(train: list[tuple], test: list[tuple], which: tuple[str, ...], ridge: float = 1.0) -> float:
    x = torch.stack([features(t, which) for t in train])
    y = torch.tensor([t[2] for t in train])
    w = torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1]), x.T @ y)
    xt = torch.stack([features(t, which) for t in test])
    return float(((xt @ w - torch.tensor([t[2] for t in test])) ** 2).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="checkpoint.pt of an `auth train` run")
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--turns", type=int, default=8, help="exchanges per interview in that run")
    args = parser.parse_args()
    buffer = torch.load(args.checkpoint, map_location="cpu", weights_only=False)["buffer"]
    interviews = [buffer[i:i + args.turns] for i in range(0, len(buffer), args.turns)]
    print(f"{len(interviews)} interviews, {len(buffer)} exchanges; held-out mean squared error of the reward")
    print("| split | " + " | ".join(" + ".join(w) for w in FEATURE_SETS) + " |")
    print("|---:|" + "---:|" * len(FEATURE_SETS))
    totals = [0.0] * len(FEATURE_SETS)
    for split in range(args.splits):
        shuffled = interviews[:]
        random.Random(split).shuffle(shuffled)
        cut = int(0.75 * len(shuffled))
        train = [t for i in shuffled[:cut] for t in i]
        test = [t for i in shuffled[cut:] for t in i]
        errors = [held_out_error(train, test, w) for w in FEATURE_SETS]
        totals = [a + b for a, b in zip(totals, errors)]
        print(f"| {split} | " + " | ".join(f"{e:.4f}" for e in errors) + " |")
    base = totals[0]
    print("| mean change vs turn only | " + " | ".join(f"{100 * (t - base) / base:+.2f}%" for t in totals) + " |")


if __name__ == "__main__":
    main()
