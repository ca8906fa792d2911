"""Best-of-N decoding: N = 1 is plain decoding, N candidates share one prefix computation, and the scores point
the right way on hand-made cases (with the bundled model, a real language model)."""

import pytest
import torch

from personagpt.generate.conversation import Conversation, SamplingConfig
from personagpt.models.load import default_model, load_chat_model
from personagpt.generate.best_of_n import RerankWeights, rank_candidates, repetition, sample_candidates

FACTS = ["i have two dogs.", "i work as a nurse."]


def test_one_candidate_is_plain_decoding(tiny_model, fmt):
    replies = []
    for cfg in (SamplingConfig(max_new_tokens=10), SamplingConfig(max_new_tokens=10, num_candidates=1)):
        c = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=cfg, seed=4)
        c.add_turn("hello , how are you ?")
        replies.append(c.respond())
    assert replies[0] == replies[1]


def test_candidates_share_one_prefix_computation(tiny_model, fmt):
    seen = []
    handle = tiny_model.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        ids = fmt.persona_prefix(FACTS) + fmt.history(["hello , how are you ?"])
        cfg = SamplingConfig(max_new_tokens=6, min_new_tokens=6)
        replies = sample_candidates(tiny_model, fmt, ids, 4, cfg, torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert [len(r) for r in replies] == [6] * 4
    assert seen[0] == (1, len(ids))  # the prompt, once
    assert seen[1:] == [(4, 1)] * 5  # then one token per candidate per step
    assert len({tuple(r) for r in replies}) > 1  # and they are different samples


def test_repetition_counts_said_ngrams():
    assert repetition("i have two dogs and a cat .", ["yes , i have two dogs and a cat ."]) == 1.0
    assert repetition("i like to swim in the lake .", ["i have two dogs ."]) == 0.0
    assert repetition("i like it i like it i like it", []) == 0.5  # 3 of its 6 four-grams repeat it
    assert repetition("ok", ["ok"]) == 0.0  # no 4-grams


@pytest.mark.skipif(default_model() is None, reason="needs the bundled model")
def test_scores_prefer_the_persona_and_punish_repeats():
    model, fmt = load_chat_model(None)
    history = ["hi ! do you have any pets ?"]
    prompt = fmt.persona_prefix(FACTS) + fmt.history(history)
    reference = fmt.persona_prefix([]) + fmt.history(history)
    replies = [fmt.text("yes , i have two dogs ."), fmt.text("no , i do not .")]
    ranked = rank_candidates(model, fmt, prompt, reference, replies, [], weights=RerankWeights(fluency=0))
    assert ranked[0].text == "yes , i have two dogs ."  # the persona explains it: higher PMI
    by_text = {c.text: c for c in ranked}
    assert by_text["yes , i have two dogs ."].scores["pmi"] > by_text["no , i do not ."].scores["pmi"]
    said = "i work as a nurse at the hospital ."
    replies = [fmt.text(said), fmt.text("i work as a nurse in a big city .")]
    ranked = rank_candidates(model, fmt, prompt, reference, replies, [said])
    assert ranked[0].text != said and ranked[-1].scores["repetition"] == 1.0


def test_best_of_n_in_a_steered_conversation(tiny_model, fmt):
    c = Conversation.with_goal(tiny_model, fmt, "ask about pets.",
                                 sampling=SamplingConfig(max_new_tokens=6, num_candidates=3), seed=2)
    text = c.respond()
    assert c.turns == [text] and c.turn_ids[-1][-1] == fmt.eos_id


def test_eval_and_server_take_candidates(tiny_checkpoint, tokenizer, fmt):
    import httpx
    from typer.testing import CliRunner

    from personagpt.cli import app
    from personagpt.models.load import build_gpt2
    from personagpt.serve import ServerSettings, create_app

    from conftest import LiveServer

    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_checkpoint), "--limit", "1", "--metrics", "f1",
                                      "--decode", "sample", "--candidates", "3", "--markdown"])
    assert result.exit_code == 0, result.output
    assert "| F1 |" in result.output or "F1" in result.output.splitlines()[0]
    model = build_gpt2(tokenizer, n_layer=1, n_embd=16, n_head=1, n_positions=128)
    with LiveServer(create_app(ServerSettings(precision="no", max_context=128), loader=lambda: (model, fmt))) as live:
        body = {"messages": [{"role": "user", "content": "hi"}], "persona": ["i like dogs."], "max_tokens": 6,
                "candidates": 3, "seed": 1}
        whole = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=60).json()
        assert whole["candidates"] == 3 and whole["choices"][0]["message"]["role"] == "assistant"
        with httpx.stream("POST", live.url + "/v1/chat/completions", json=body | {"stream": True}, timeout=60) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        streamed = "".join(__import__("json").loads(x[6:])["choices"][0]["delta"].get("content", "") for x in lines[:-1])
        assert streamed == whole["choices"][0]["message"]["content"]  # same seed, same best reply
        too_many = httpx.post(live.url + "/v1/chat/completions", json=body | {"candidates": 9})
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "candidates"
