"""An interview with a person (``personagpt auth interact``): the interviewer asks, the person answers at the
terminal, and the judge's probabilities over the K candidate personas follow each answer."""

from __future__ import annotations

import random

import torch

from personagpt.auth.identify import EmbeddingIdentifier, FactEmbeddings, PooledEncoder, fact_identifiers
from personagpt.auth.interview import Question, View
from personagpt.auth.plan import DistilledPolicy, Gated
from personagpt.auth.policies import LearnedPolicy
from personagpt.data.dialogues import load_personas, resolve_personas_path
from personagpt.errors import SettingsError
from personagpt.format import DEFAULT_ACTIONS
from personagpt.generate.conversation import Conversation
from personagpt.generate.sampling import SamplingConfig


def interview_people(candidates: int, claimed: list[str] | None, seed: int) -> tuple[list[list[str]], list[str]]:
    """K candidate personas from the packaged list, one of them the one played (or claimed), in a random order;
    returns (candidates, the true or claimed persona)."""
    pool = [p for p in load_personas(resolve_personas_path()) if p != claimed]
    if candidates - 1 > len(pool):
        raise SettingsError(f"-k {candidates} needs {candidates - 1} distractors; the persona list has {len(pool)}")
    rng = random.Random(seed)
    chosen = rng.sample(pool, candidates if claimed is None else candidates - 1)
    truth = claimed or chosen[0]
    people = [truth] + [p for p in chosen if p is not truth]
    rng.shuffle(people)
    return people, truth


def judge_for(scorer=None, network=None) -> str:
    """The identifier a live interview is judged by: the one ``auth eval`` plays its policy with (the distilled
    question policy: calibrated; a learned goal policy: the one it learned on; random goals: sentence)."""
    if scorer is not None:
        return "calibrated"
    return network.guide if network is not None else "sentence"


class LiveInterview:
    """The interviewer's side of an interview with a person: each question from the policy (the distilled
    question policy, gated as `auth eval` plays it, else the learned goal policy, else a random goal), the judge's
    probabilities after each answer."""

    def __init__(self, model, fmt, people: list[list[str]], guide: str, scorer=None, network=None, head=None,
                 max_new_tokens: int = 32, seed: int = 0) -> None:
        import torch  # start-up: `auth interact --help` and the claim checks need no torch


        self.people, self.rng = people, random.Random(seed)
        facts = FactEmbeddings() if guide != "embedding" or scorer is not None else None
        if guide == "embedding":
            self.judge = EmbeddingIdentifier(PooledEncoder(model, fmt), head, people)
        else:  # a person's yes or no is read as the chat's best-of-4 partner's
            self.judge = fact_identifiers(facts, partner_candidates=4)[guide](people)
        self.policy = (Gated(DistilledPolicy(scorer, facts), seed=seed) if scorer is not None
                       else LearnedPolicy(network) if network is not None else None)
        self.interviewer = Conversation.with_persona(model, fmt, [], speaker=1, seed=seed,
                                                     sampling=SamplingConfig(max_new_tokens=max_new_tokens))
        self.scores, self.used, self.answered, self.question = torch.zeros(len(people)), [], 0, ""

    def ask(self) -> tuple[str, str]:
        """(what the interviewer pursues, its question)."""
        view = View(len(self.used), self.scores, self.used, candidates=self.people)
        action = self.policy.choose(view) if self.policy is not None else self.rng.choice(DEFAULT_ACTIONS)
        if isinstance(action, Question):
            self.question = action.text
            self.interviewer.add_turn(self.question)
        else:
            self.interviewer.set_goal(action) if action else self.interviewer.set_persona([], speaker=1)
            self.question = self.interviewer.respond()
        self.used.append(str(action) if action else None)
        return (f"checks: {action.fact}" if isinstance(action, Question) else action or "no goal"), self.question

    def answer(self, text: str):
        """Record the person's answer; the candidates' probabilities after it."""
        self.interviewer.add_turn(text)
        self.scores = self.judge.add_exchange(self.question, text)
        self.answered += 1
        return self.probabilities()

    def probabilities(self):
        return torch.softmax(self.scores, 0)
