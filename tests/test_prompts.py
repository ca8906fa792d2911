"""System prompts in the styles front ends send, turned into first-person persona facts by rules a test pins:
52 hand-written prompts (instruction style, character-card prose, Persona-Chat facts) against their facts."""

import json

import pytest

from personagpt.personas.prompts import MAX_FACTS, facts_from_prompt

from conftest import REPO

CASES = [json.loads(line) for line in (REPO / "tests" / "fixtures" / "system_prompts.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", CASES, ids=[c["prompt"][:40] for c in CASES])
def test_prompt_gives_its_facts(case):
    assert facts_from_prompt(case["prompt"]).facts == case["facts"]


def test_the_set_covers_every_style():
    assert len(CASES) >= 50 and {c["style"] for c in CASES} >= {"instruction", "card", "persona-chat"}


def test_names_instructions_and_the_budget_are_said():
    taken = facts_from_prompt("You are Sam, a nurse. Sam has two dogs. Keep it short. She likes tea. She hikes. "
                              "She sings. She paints.")
    assert taken.name == "Sam" and taken.instructions == ["Keep it short."]
    assert taken.facts[:3] == ["i am sam, a nurse.", "i have two dogs.", "i like tea."]
    assert len(taken.facts) == MAX_FACTS and taken.unused == ["i paint."]
    assert facts_from_prompt("Mia loves jazz.", name="Mia").facts == ["i love jazz."]
