"""Interviewer policies for authentication: which goal to pursue next (None: chat freely)."""

from __future__ import annotations

from personagpt.format import DEFAULT_ACTIONS
from personagpt.selfplay import FixedPolicy, RandomPolicy, Transcript


class NoGoalPolicy:
    """The interviewer chats freely, no action code (a baseline)."""

    def next_goal(self, transcript: Transcript) -> None:
        return None


def baseline_policies(seed: int = 0) -> dict:
    """The reference policies every learned policy is compared with."""
    return {"random": RandomPolicy(seed=seed), "round-robin": FixedPolicy(DEFAULT_ACTIONS), "no-goal": NoGoalPolicy()}
