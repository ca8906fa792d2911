"""The library seams front ends build on: streaming, per-conversation randomness, stateless rebuilds,
policy-driven self-play, incremental persona ranking, the public loader and the error boundary."""

import dataclasses

import pytest
import torch
from typer.testing import CliRunner

from personagpt.cli import app
from personagpt.train.config import TrainConfig
from personagpt.generate.conversation import Conversation, SamplingConfig, TextStream
from personagpt.models.load import load_chat_model
from personagpt.scoring import rank_personas
from personagpt.control.selfplay import FixedPolicy, RandomPolicy, self_play

FACTS = ["i like dogs.", "i am a nurse."]
TURNS = ["hi there , how are you ?", "good , i just walked my dogs .", "what do you do for work ?",
         "i am a nurse at the hospital .", "do you have pets ?", "yes , two dogs ."]
SAMPLED = SamplingConfig(max_new_tokens=12)


def test_stream_pieces_join_to_the_recorded_reply(tiny_model, fmt):
    conversation = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SAMPLED, seed=3)
    conversation.add_turn("hello !")
    pieces = list(conversation.stream())
    assert len(pieces) > 1
    assert "".join(pieces) == conversation.turns[-1]
    again = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SAMPLED, seed=3)
    again.add_turn("hello !")
    assert again.respond() == conversation.turns[-1]


def test_text_stream_never_splits_a_character(fmt):
    text = "café 😀 naïve – 東京"
    ids = fmt.text(text)
    stream = TextStream(fmt)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == fmt.decode(ids) == text
    assert len(ids) > len([p for p in pieces if p])  # some tokens were held back mid-character


def test_same_seed_same_replies_however_turns_interleave(tiny_model, fmt):
    def alone(seed):
        c = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SAMPLED, seed=seed)
        out = []
        for text in TURNS[:3]:
            c.add_turn(text)
            out.append(c.respond())
        return out

    a_alone, b_alone = alone(1), alone(2)
    a = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SAMPLED, seed=1)
    b = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SAMPLED, seed=2)
    torch.manual_seed(123)  # the global RNG plays no part
    a_out, b_out = [], []
    for text in TURNS[:3]:
        a.add_turn(text)
        b.add_turn(text)
        b_out.append(b.respond())
        torch.rand(5)
        a_out.append(a.respond())
    assert a_out == a_alone and b_out == b_alone
    assert a_alone != b_alone


def test_from_turns_rebuilds_a_session(tiny_model, fmt):
    greedy = SamplingConfig(do_sample=False, max_new_tokens=8)
    live = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=greedy)
    for text in TURNS[:3]:
        live.add_turn(text)
    rebuilt = Conversation.from_turns(tiny_model, fmt, TURNS[:3], persona=FACTS, sampling=greedy)
    assert rebuilt.context_ids() == live.context_ids()
    assert rebuilt.respond() == live.respond()
    steered = Conversation.from_turns(tiny_model, fmt, TURNS[:2], goal="ask about pets.", sampling=greedy)
    assert steered.context_ids()[: len(fmt.goal_prefix("ask about pets."))] == fmt.goal_prefix("ask about pets.")


class RecordingPolicy:
    def __init__(self):
        self.seen = []

    def next_goal(self, transcript):
        self.seen.append(list(transcript.turns))
        return "talk about music."


def test_self_play_asks_the_policy_each_turn(tiny_model, fmt):
    policy = RecordingPolicy()
    transcripts = self_play(tiny_model, fmt, [FACTS], policy, num_turns=3,
                            sampling=SamplingConfig(max_new_tokens=5), seed=0)
    assert [len(s) for s in policy.seen] == [0, 2, 4]  # it saw the conversation so far, before each turn
    assert transcripts[0].actions == ["talk about music.", None] * 3
    fixed = self_play(tiny_model, fmt, [FACTS, FACTS], FixedPolicy(["ask about kids.", "talk about work."]), 3,
                      SamplingConfig(max_new_tokens=5), seed=0)
    assert fixed[0].actions[::2] == ["ask about kids.", "talk about work.", "ask about kids."]
    again = self_play(tiny_model, fmt, [FACTS, FACTS], FixedPolicy(["ask about kids.", "talk about work."]), 3,
                      SamplingConfig(max_new_tokens=5), seed=0)
    assert [t.turns for t in again] == [t.turns for t in fixed]  # seeded per conversation: reproducible
    goals = [RandomPolicy(seed=5).next_goal(fixed[0]) for _ in range(2)]
    assert goals[0] == goals[1]


def test_incremental_persona_ranking_equals_full_rescoring(tiny_model, fmt):
    candidates = [FACTS, ["i love jazz.", "i play the sax."], ["i have three kids."]]
    full = rank_personas(tiny_model, fmt, candidates, TURNS, speaker=2)
    incremental = rank_personas(tiny_model, fmt, candidates, [], speaker=2)
    for text in TURNS:
        incremental.add_turn(text)
    assert incremental.scored_turns == full.scored_turns == [1, 3, 5]
    assert torch.allclose(torch.stack(incremental.turn_scores), torch.stack(full.turn_scores), atol=1e-4)
    assert incremental.tokens_encoded == sum(len(fmt.utterance(t)) for t in TURNS)  # each token encoded once
    # and both equal a direct forward pass of each candidate alone
    for k, facts in enumerate(candidates):
        ids = fmt.persona_prefix(facts, 2) + fmt.history(TURNS)
        with torch.no_grad():
            logprobs = torch.log_softmax(tiny_model(torch.tensor([ids])).logits[0].float(), -1)
        start = len(fmt.persona_prefix(facts, 2)) + len(fmt.utterance(TURNS[0]))
        reply = fmt.utterance(TURNS[1])
        direct = sum(float(logprobs[start - 1 + j, tok]) for j, tok in enumerate(reply))
        assert float(full.turn_scores[0][k]) == pytest.approx(direct, abs=1e-3)
    assert sorted(full.ranking()) == [0, 1, 2]
    assert float(full.probabilities().sum()) == pytest.approx(1.0)


def test_ranking_past_the_context_window_drops_old_turns(tiny_model, fmt):
    ranker = rank_personas(tiny_model, fmt, [FACTS, ["i have three kids."]], TURNS * 8, speaker=1, max_context=96)
    assert len(ranker.turn_scores) == len(TURNS) * 4
    assert all(torch.isfinite(s).all() for s in ranker.turn_scores)


def test_load_chat_model_random_spec():
    model, fmt = load_chat_model("random:2x64")
    assert model.config.n_layer == 2 and model.config.n_embd == 64
    assert fmt.tokenizer.convert_tokens_to_ids("<|act|>") == 50262


def test_train_flags_come_from_the_config_fields():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("cli", True):
            assert "--" + f.name.replace("_", "-") in result.output, f.name
    assert "--lr" in result.output and "--full" in result.output


def test_a_library_bug_is_one_line_or_a_traceback_with_debug(monkeypatch, tiny_checkpoint):
    def broken(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr("personagpt.models.load.load_model", broken)
    runner = CliRunner()
    plain = runner.invoke(app, ["interact", "--model", str(tiny_checkpoint), "--persona", "i like dogs."])
    assert plain.exit_code == 1 and "Internal error (KeyError" in plain.output and "--debug" in plain.output
    debug = runner.invoke(app, ["--debug", "interact", "--model", str(tiny_checkpoint), "--persona", "i like dogs."])
    assert isinstance(debug.exception, KeyError)
