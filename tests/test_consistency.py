"""Persona consistency: facts turned into questions and negations, the contrast score's sign on hand-made
contradictions (bundled model), best-of-N that commits early and streams, and the front ends' default N."""

import subprocess
import sys
import time

import pytest
import torch

from personagpt.personas.facts import answer_polarity, negate, question
from personagpt.generate.conversation import Conversation, SamplingConfig
from personagpt.models.load import default_model, load_chat_model
from personagpt.generate.best_of_n import best_of_n_lockstep, candidates_loop, contradiction, contrast_facts
from personagpt.generate.sampling import DEFAULT_CANDIDATES, DEFAULT_COMMIT_TOKENS, DEFAULT_GOAL_CANDIDATES

FACTS = ["i have a dog.", "i work as a nurse."]


def test_facts_become_questions_and_negations():
    assert question("i have a dog.") == ("do you have a dog ?", True)
    assert question("i'm a nurse.") == ("are you a nurse ?", True)
    assert question("i do not drink soda.") == ("do you drink soda ?", False)
    assert question("my favorite color is blue.") == ("is your favorite color blue ?", True)
    assert question("i moved to texas last year.") == ("did you move to texas last year ?", True)
    assert question("i like to read about my family.") == ("do you like to read about your family ?", True)
    assert question("cheeseburgers are my favorite food.") is None  # no rule: callers skip it
    assert negate("i have a dog.") == "i do not have a dog."
    assert negate("i am a nurse.") == "i am not a nurse."
    assert negate("i do not drink soda.") == "i drink soda."
    assert negate("my favorite color is blue.") == "my favorite color is not blue."
    assert negate("i went to college.") == "i did not go to college."
    assert contrast_facts(["i have a dog.", "cheeseburgers are my favorite food."]) == [
        "i do not have a dog.", "cheeseburgers are my favorite food."]
    assert contrast_facts(["cheeseburgers are my favorite food."]) is None


def test_answer_polarity():
    assert answer_polarity("yes , i do . he is a lab .") is True
    assert answer_polarity("i have two of them !") is True
    assert answer_polarity("no , i do not .") is False
    assert answer_polarity("i don't , i am allergic .") is False
    assert answer_polarity("what about you ?") is None


@pytest.mark.skipif(default_model() is None, reason="needs the bundled model")
def test_contradictions_score_above_zero_and_agreements_below():
    model, fmt = load_chat_model(None)
    asked = ["hi ! do you have a dog ?"]
    assert contradiction(model, fmt, FACTS, asked, "no , i do not have any pets .") > 0
    assert contradiction(model, fmt, FACTS, asked, "yes , i have a dog .") < 0
    job = ["what do you do for a living ?"]
    assert contradiction(model, fmt, FACTS, job, "i am not a nurse , i am a teacher .") > 0
    assert contradiction(model, fmt, FACTS, job, "i work as a nurse at the hospital .") < 0


def test_the_checker_finds_the_asked_fact_and_a_denial():
    from personagpt.generate.consistency import ConsistencyChecker, last_yes_no_question

    assert last_yes_no_question("cool . so do you have a dog ?") == "do you have a dog ?"
    assert last_yes_no_question("what do you do for work ?") is None
    assert last_yes_no_question("i have a dog .") is None
    checker = ConsistencyChecker()  # shared words, no encoder
    persona = ["i have a german shepherd dog.", "i do not drink soda.", "i work as a nurse."]
    asked = checker.asked_fact("hi ! do you have a german shepherd ?", persona)
    assert asked.fact == "i have a german shepherd dog." and asked.expected is True
    assert checker.denies("no , i do not have any pets .", asked)
    assert not checker.denies("yes , he is a good boy .", asked)
    assert not checker.denies("what about you ?", asked)  # no answer either way
    soda = checker.asked_fact("do you drink soda ?", persona)
    assert soda.fact == "i do not drink soda." and soda.expected is False
    assert not checker.denies("no , never .", soda) and checker.denies("yes , i love it .", soda)
    assert checker.asked_fact("do you like soup ?", persona) is None  # no two shared words: no match


def test_a_denial_ranks_last(tiny_model, fmt):
    from personagpt.generate.consistency import ConsistencyChecker
    from personagpt.generate.best_of_n import rank_candidates

    checker = ConsistencyChecker()
    history = ["do you have a german shepherd ?"]
    asked = checker.asked_fact(history[0], ["i have a german shepherd dog."])
    prompt = fmt.persona_prefix(["i have a german shepherd dog."]) + fmt.history(history)
    replies = [fmt.text("no , i do not ."), fmt.text("yes , i do .")]
    ranked = rank_candidates(tiny_model, fmt, prompt, fmt.persona_prefix([]) + fmt.history(history), replies, [],
                             checker=checker, asked=asked)
    assert ranked[0].text == "yes , i do ." and ranked[1].scores["denies_fact"] == 1.0


def test_the_control_module_does_not_import_generation():
    code = "import sys, personagpt.control.goals, personagpt.generate.best_of_n; assert 'personagpt.generate.conversation' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lockstep_commits_then_decodes_one_row(tiny_model, fmt):
    ids = fmt.persona_prefix(FACTS) + fmt.history(["hello , how are you ?"])
    cfg = SamplingConfig(max_new_tokens=10, min_new_tokens=10)
    seen = []
    lockstep = candidates_loop(tiny_model, fmt, ids, 3, cfg, torch.Generator().manual_seed(0))

    def choose(replies, finished):
        seen.append([list(r) for r in replies])
        assert [len(r) for r in replies] == [4] * 3 and finished == [False] * 3
        return 2

    tokens = list(best_of_n_lockstep(lockstep, 4, choose))
    assert len(tokens) == 10 and tokens[:4] == seen[0][2]  # the chosen row's start, then the rest of it
    assert lockstep.rows == [2] and lockstep.cache.layers[0].keys.shape[0] == 1


def test_best_of_n_streams_and_records(tiny_model, fmt):
    cfg = SamplingConfig(max_new_tokens=12, min_new_tokens=12, num_candidates=3, commit_tokens=4)
    c = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=cfg, seed=3)
    c.add_turn("do you have a dog ?")
    pieces = list(c.stream())
    assert len(pieces) > 4  # after the commitment the reply goes on token by token
    assert "".join(pieces) == c.turns[-1] and len(c.turn_ids[-1]) == 13  # 12 tokens and eos


def test_greedy_samples_once(tiny_model, fmt):
    replies = []
    for n in (1, 4):
        c = Conversation.with_persona(tiny_model, fmt, FACTS, seed=1,
                                      sampling=SamplingConfig(do_sample=False, max_new_tokens=8, num_candidates=n))
        c.add_turn("hello !")
        replies.append(c.respond())
    assert replies[0] == replies[1]


def test_best_of_n_through_the_engine(tiny_model, fmt):
    from personagpt.generate.engine import Engine

    engine = Engine(tiny_model, fmt, max_batch=8)
    try:
        cfg = SamplingConfig(max_new_tokens=10, min_new_tokens=10, num_candidates=4, commit_tokens=3)
        c = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=cfg, engine=engine, seed=0)
        c.add_turn("hello , how are you ?")
        text = c.respond()
        assert text == c.turns[-1] and len(c.turn_ids[-1]) == 11
        deadline = time.monotonic() + 5
        while engine.active and time.monotonic() < deadline:  # the candidates not kept were cancelled
            time.sleep(0.01)
        assert engine.active == 0
    finally:
        engine.close()


def test_front_ends_share_the_best_of_n_defaults():
    import typer

    from personagpt.cli import app
    from personagpt.serve.schemas import ChatRequest, SelfPlayRequest

    assert DEFAULT_CANDIDATES >= 1 and DEFAULT_COMMIT_TOKENS > 0
    command = typer.main.get_command(app)
    for name in ("interact", "selfplay"):
        params = {p.name: p.default for p in command.commands[name].params}
        assert params["num_candidates"] == DEFAULT_CANDIDATES, name
        assert params["goal_candidates"] == DEFAULT_GOAL_CANDIDATES, name
        assert params["commit_tokens"] == DEFAULT_COMMIT_TOKENS, name
    body = ChatRequest(messages=[{"role": "user", "content": "hi"}])
    assert body.candidates == DEFAULT_CANDIDATES and body.commit_tokens == DEFAULT_COMMIT_TOKENS
    assert SelfPlayRequest().candidates == DEFAULT_CANDIDATES
