"""Goal labeler quality on hand-labelled utterances, control data, control success, and the CLI."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from personagpt.cli import app
from personagpt.control.goals import Goal, GoalLabeler, build_control_records, labeler_scores
from personagpt.eval.evaluate import control_success
from personagpt.data.dialogues import Dialogue, load_control_records, load_dialogues
from personagpt.format import DEFAULT_ACTIONS
from personagpt.generate.conversation import SamplingConfig

from conftest import PERSONACHAT

FIXTURES = Path(__file__).parent / "fixtures"


def load_fixture(name):
    items = [json.loads(line) for line in (FIXTURES / name).read_text().splitlines()]
    return [i["text"] for i in items], [set(i["goals"]) for i in items]


@pytest.fixture(scope="module")
def labeler():
    return GoalLabeler()


def test_fixtures_are_big_enough_and_use_exact_goal_spellings():
    for name, minimum in (("goal_labels.jsonl", 150), ("goal_labels_heldout.jsonl", 100)):
        texts, gold = load_fixture(name)
        assert len(texts) >= minimum
        assert set().union(*gold) == set(DEFAULT_ACTIONS)


@pytest.mark.parametrize("name", ["goal_labels.jsonl", "goal_labels_heldout.jsonl"])
def test_labeler_precision_and_recall(labeler, name):
    texts, gold = load_fixture(name)
    overall = labeler_scores(labeler, texts, gold)["overall"]
    assert overall["precision"] >= 0.85, overall
    assert overall["recall"] >= 0.75, overall


def test_goal_parsing():
    assert Goal.parse("ask about pets.") == Goal("ask about pets.", "ask", "pets")
    assert Goal.parse("talk about age and gender") == Goal("talk about age and gender", "talk", "age and gender")
    assert Goal.parse("tell a joke.").kind == "talk"
    with pytest.raises(ValueError):
        Goal.parse("  ")


def test_ask_goals_need_a_question_to_the_partner(labeler):
    assert labeler.label("do you have any pets ?") == {"ask about pets."}
    assert labeler.label("i have two dogs .") == set()
    assert labeler.label("my dogs bark a lot , right ?") == set()  # a question, but not about the partner's pets
    assert "ask about kids." in labeler.label("i am tired . how old are your kids ?")
    assert labeler.label("how old are you ?") == {"ask about age and gender."}  # not kids, though similar


def test_talk_goals_accept_statements_and_questions(labeler):
    assert labeler.label("i work as a nurse .") == {"talk about work."}
    assert labeler.label("what kind of music do you like ?") == {"talk about music."}
    assert labeler.label("i am so tired from working out !") == set()


def test_free_text_goals(labeler):
    goals = ["talk about skiing.", "ask about cars."]
    assert labeler.label_many(["i went skiing last week .", "what car do you drive ?", "hello !"], goals) == [
        {"talk about skiing."}, {"ask about cars."}, set()]


def test_rules_only_labeler_needs_no_embedding_model():
    plain = GoalLabeler(semantic=False)
    assert plain.label("are you married ?") == {"ask about marital status."}
    assert "_embedder" in vars(plain) and "embedder" not in vars(plain)  # never loaded


def test_build_control_records_balances_and_formats():
    dialogue = Dialogue(turns=["hi !", "hello , do you have any pets ?", "yes , two dogs . do you have pets ?",
                               "no . what do you do for work ?", "i am a nurse ."],
                        p1_facts=["i have two dogs."], p2_facts=["i am a teacher."])
    records, counts = build_control_records([dialogue] * 3, GoalLabeler(semantic=False), per_goal=2,
                                            history_turns=2, facts_probability=1.0, progress=False)
    assert counts["ask about pets."] == {"found": 6, "kept": 2}
    assert counts["talk about work."] == {"found": 3, "kept": 2}  # "i am a nurse ." needs the semantic model
    assert counts["ask about kids."] == {"found": 0, "kept": 0}
    pets = [r for r in records if r.goal == "ask about pets."]
    assert len(pets) == 2 and all(r.response in dialogue.turns for r in pets)
    work = next(r for r in records if r.goal == "talk about work.")
    assert work.response == "no . what do you do for work ?"
    assert work.history == ["hello , do you have any pets ?", "yes , two dogs . do you have pets ?"]
    assert work.facts == ["i am a teacher."]  # turn 3 is p2's


def test_control_success_shape_and_range(tiny_model, fmt):
    dialogues = load_dialogues(PERSONACHAT / "valid_both_original_no_cands.txt")[:20]
    goals = ["ask about pets.", "talk about music."]
    result = control_success(tiny_model, fmt, dialogues, GoalLabeler(semantic=False), goals, contexts=4,
                             sampling=SamplingConfig(do_sample=False, max_new_tokens=6), progress=False)
    assert set(result) == {*goals, "overall"}
    for scores in result.values():
        assert 0 <= scores["success"] <= 1 and 0 <= scores["base_rate"] <= 1


def test_build_control_data_cli(tmp_path):
    source = tmp_path / "d.jsonl"
    source.write_text(json.dumps({"turns": ["hi", "do you have pets ?", "a cat . are you married ?", "no ."]}) + "\n")
    out = tmp_path / "ctrl.jsonl"
    result = CliRunner().invoke(app, ["build-control-data", "--data", str(source), "--out", str(out),
                                      "--rules-only", "--per-goal", "5"])
    assert result.exit_code == 0, result.output
    assert "| ask about pets. | 1 | 1 |" in result.output and "| ask about marital status. | 1 | 1 |" in result.output
    records = load_control_records(out)
    assert {r.goal for r in records} == {"ask about pets.", "ask about marital status."}


def test_best_of_n_control_asks_the_labeler_first(tiny_model, fmt, monkeypatch):
    class AcceptsHalf:  # a stand-in labeler: a reply of an even number of characters fulfils any goal
        def accepts(self, text, goal):  # (about half of random samples, whatever the CPU's rounding)
            return len(text) % 2 == 0

        def label_many(self, texts, goals):
            return [set(goals) if self.accepts(t, None) else set() for t in texts]

    import personagpt.generate.best_of_n

    monkeypatch.setattr(personagpt.generate.best_of_n, "default_labeler", lambda: AcceptsHalf())
    dialogues = load_dialogues(PERSONACHAT / "valid_both_original_no_cands.txt")[:20]
    goals = ["ask about pets.", "talk about music."]
    torch.manual_seed(0)
    rates = [control_success(tiny_model, fmt, dialogues, AcceptsHalf(), goals, contexts=6,
                             sampling=SamplingConfig(max_new_tokens=6), progress=False, candidates=n)
             for n in (1, 4)]
    assert rates[1]["overall"]["success"] > rates[0]["overall"]["success"]
