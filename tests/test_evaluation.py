"""Each metric pinned on hand-computed cases, plus an end-to-end run and the CLI."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from personagpt.cli import app
from personagpt.data.dialogues import Dialogue, load_dialogues
from personagpt.eval.evaluate import (Targets, distinct_n, evaluate, examples_for, markdown_table,
                                   normalize_answer, original_tf_f1, perplexities, persona_hits,
                                   segments, teacher_forced_f1, word_f1)

from personagpt.scoring import TurnScore, score_examples

from conftest import PERSONACHAT

EOS = 99


def test_normalize_and_word_f1():
    assert normalize_answer("The cat, a DOG!  An  apple.") == "cat dog apple"
    assert word_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)  # p = 2/2, r = 2/3
    assert word_f1("dogs dogs", "dogs") == pytest.approx(2 * 0.5 * 1 / 1.5)  # multiset overlap: 1
    assert word_f1("hello", "bye") == 0.0
    assert word_f1("", "bye") == 0.0


def test_segments_and_original_token_f1():
    assert segments([1, 2, EOS, EOS, 3], EOS) == [[1, 2], [3]]
    # prediction segments [[5, 6, 6], [9]], gold [[5, 7]]: one pair, hits {5}: p = 1/3, r = 1/2
    expected = 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2 + 1e-3)
    assert teacher_forced_f1([5, 6, 6, EOS, 9], [5, 7, EOS], EOS) == pytest.approx(expected)
    assert teacher_forced_f1([EOS, EOS], [5, EOS], EOS) == 0.0  # the original would give NaN here


def test_distinct_n():
    assert distinct_n(["a b a", "a b"], 1) == pytest.approx(2 / 5)
    assert distinct_n(["a b a", "a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n([""], 2) == 0.0


def test_perplexity_definitions():
    scores = [TurnScore(0, 0, [1.0, 2.0], [], [], 1), TurnScore(0, 3, [2.0, 4.0, 6.0], [], [], 2)]
    result = perplexities(scores)
    assert result["ppl_token"] == pytest.approx(math.exp(15 / 5))
    assert result["ppl_word"] == pytest.approx(math.exp(15 / 3))
    # per example: the opening turn keeps all tokens (1.5), later turns skip their first token (5.0)
    assert result["ppl_orig"] == pytest.approx(math.exp((1.5 + 5.0) / 2))


def test_tf_f1_skips_first_token_after_the_opening_turn():
    opening = TurnScore(0, 0, [0, 0, 0], predicted=[5, 7, EOS], gold=[5, 7, EOS], words=2)
    later = TurnScore(0, 1, [0, 0, 0], predicted=[1, 8, EOS], gold=[5, 7, EOS], words=2)  # 8 vs 7: miss
    assert original_tf_f1([opening], EOS) == pytest.approx(2 / (2 + 1e-3))
    assert original_tf_f1([later], EOS) == 0.0
    assert original_tf_f1([opening, later], EOS) == pytest.approx(1 / (2 + 1e-3))


def test_persona_hits():
    # log-likelihoods [candidates, scored turns], row 0 the true persona (higher is better)
    conversation_0 = torch.tensor([[-1.0, -5.0], [-2.0, -4.0], [-3.0, -9.0]])
    conversation_1 = torch.tensor([[-2.0], [-2.0], [-3.0]])
    hits = persona_hits([conversation_0, conversation_1])
    # responses: (0,1) hit; (0,3) loses to a; (1,0) ties with a: miss
    assert hits["hits1_response"] == pytest.approx(1 / 3)
    # conversation 0: 6 vs 6 (a) -> tie, miss; conversation 1: tie, miss
    assert hits["hits1_conversation"] == 0.0


def test_scores_match_a_direct_forward_pass(tiny_model, fmt):
    dialogue = Dialogue(turns=["hi there !", "hello , how are you ?", "good , thanks ."],
                        p1_facts=["i like cats."], p2_facts=["i am a nurse."])
    targets = Targets.of([dialogue])
    scores = score_examples(tiny_model, fmt, examples_for(targets, fmt, 256), targets.words, batch_size=2)
    assert [(s.conversation, s.turn) for s in scores] == [(0, 0), (0, 2), (1, 1)]
    ids = fmt.persona_prefix(dialogue.p2_facts, 2) + fmt.history(dialogue.turns)
    with torch.no_grad():
        logprobs = torch.log_softmax(tiny_model(torch.tensor([ids])).logits[0], -1)
    start = len(fmt.persona_prefix(dialogue.p2_facts, 2)) + len(fmt.utterance(dialogue.turns[0]))
    reply = fmt.utterance(dialogue.turns[1])
    direct = [-float(logprobs[start - 1 + k, tok]) for k, tok in enumerate(reply)]
    assert scores[2].gold == reply
    assert scores[2].nll == pytest.approx(direct, abs=1e-4)
    assert scores[2].words == 6  # whitespace words: "hello , how are you ?"


def test_evaluate_end_to_end(tiny_model, fmt):
    dialogues = load_dialogues(PERSONACHAT / "valid_both_original_no_cands.txt")[:3]
    result = evaluate(tiny_model, fmt, dialogues, distractors=3, metrics=("ppl", "f1", "hits"), progress=False)
    assert result["conversations"] == 6
    assert result["responses"] == sum(len(d.turns) for d in dialogues)
    assert result["ppl_token"] > 1000  # a random model is close to uniform over 50k tokens
    for key in ("f1", "tf_f1", "hits1_response", "hits1_conversation"):
        assert 0 <= result[key] <= 100
    table = markdown_table([{"model": "tiny", **result}, {"model": "missing", "error": "not found"}])
    assert table.splitlines()[0].startswith("| Model | PPL/token | PPL/word | PPL (orig) | tf-F1 | F1 |")
    assert "| missing | error |" in table


def test_eval_cli_keeps_going_after_a_bad_model(tiny_checkpoint, tmp_path):
    out = tmp_path / "results.json"
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_checkpoint), "--model", str(tmp_path / "nope"),
                                      "--limit", "2", "--distractors", "2", "--metrics", "ppl,f1", "--markdown",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| PPL/token |" in result.output and "error" in result.output
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["responses"] > 0 and "error" in rows[1]
    bad = CliRunner().invoke(app, ["eval", "--model", str(tiny_checkpoint), "--metrics", "bleu"])
    assert bad.exit_code == 2 and "unknown metric" in bad.output
    only_bad = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "nope"), "--limit", "2"])
    assert only_bad.exit_code == 2 and "Error:" in only_bad.output and "| Model |" not in only_bad.output


def test_hits_limit_ranks_only_the_first_dialogues(tiny_model, fmt):
    dialogues = load_dialogues(PERSONACHAT / "valid_both_original_no_cands.txt")[:4]
    result = evaluate(tiny_model, fmt, dialogues, distractors=3, metrics=("ppl", "hits"), progress=False,
                      hits_dialogues=1, precision="no")
    assert result["conversations"] == 8 and result["hits_conversations"] == 2
    assert result["hits1_conversation"] in (0.0, 50.0, 100.0)
    # the perplexities still cover every dialogue
    full = evaluate(tiny_model, fmt, dialogues, metrics=("ppl",), progress=False, precision="no")
    assert result["ppl_token"] == pytest.approx(full["ppl_token"])


def test_bf16_generation_uses_a_copy(tiny_model, monkeypatch):
    """On the reference path only; the fast path needs no copy (its int8 weights are its own)."""
    from personagpt.models.precision import generation_model

    fast, _ = generation_model(tiny_model, "bf16")
    assert fast is tiny_model
    monkeypatch.setenv("PERSONAGPT_FAST_PATH", "off")
    copy, _ = generation_model(tiny_model, "bf16")
    assert copy is not tiny_model and copy.dtype == torch.bfloat16 and tiny_model.dtype == torch.float32
    same, _ = generation_model(tiny_model, "no")
    assert same is tiny_model


@pytest.mark.parametrize("decode", ["greedy", "beam"])
def test_generate_replies_gives_one_reply_per_gold_response(tiny_model, fmt, decode):
    """Greedy replays the conversations through one cache; beams (and over-long ones) re-encode each context."""
    from personagpt.eval.evaluate import DECODING, generate_replies

    targets = Targets.of(load_dialogues(PERSONACHAT / "valid_both_original_no_cands.txt")[:2])
    replies, gold = generate_replies(tiny_model, fmt, targets, DECODING[decode], batch_size=4)
    assert len(replies) == len(gold) == sum(len(d.turns) for d in targets.dialogues)
