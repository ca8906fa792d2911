"""The fast decoding path: exact over fp32 weights, close over int8, chosen by the CPU, used by every front end."""

import httpx
import pytest
import torch

from personagpt.models import fastpath
from personagpt.generate.engine import Engine
from personagpt.errors import SettingsError
from personagpt.models.fastpath import FastDecoder, choose_fast_path, fast_decoder
from personagpt.generate.conversation import Conversation
from personagpt.generate.kvcache import ReservedCache
from personagpt.models.load import build_gpt2
from personagpt.generate.sampling import GREEDY, SamplingConfig
from personagpt.serve import ServerSettings, create_app

from conftest import LiveServer

FACTS = ["i like dogs.", "i am a nurse."]
TURNS = ["hi , how are you ?", "what do you do for fun ?", "do you have pets ?"]


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return build_gpt2(tokenizer, n_layer=2, n_embd=64, n_head=4, n_positions=256).eval()


def chat(model, fmt, fast):
    conversation = Conversation.with_persona(model, fmt, FACTS, sampling=SamplingConfig(do_sample=False,
                                                                                        max_new_tokens=12), fast=fast)
    replies = []
    for text in TURNS:
        conversation.add_turn(text)
        replies.append(conversation.respond())
    return replies


def test_fp32_fast_path_gives_the_reference_tokens_and_logits(model, fmt):
    assert isinstance(Conversation.with_persona(model, fmt, FACTS, fast="fp32").decoder, FastDecoder)
    assert Conversation.with_persona(model, fmt, FACTS, fast="off").decoder is model
    assert chat(model, fmt, "fp32") == chat(model, fmt, "off")
    ids = torch.tensor([fmt.persona_prefix(FACTS) + fmt.history(TURNS)])
    with torch.inference_mode():
        reference = model(ids).logits
        fast = FastDecoder(model)(ids, cache=ReservedCache()).logits
    assert torch.allclose(reference, fast, atol=1e-5)  # the same products; attention masks differ in form only


def test_int8_fast_path_stays_close_to_the_reference(model, fmt):
    """Stated tolerance on the tiny random model: logits within 0.02 of the reference, argmax agreeing on 90% of
    positions (its logits are nearly flat; bench/fastpath_quality.py measures the bundled model)."""
    ids = torch.tensor([fmt.persona_prefix(FACTS) + fmt.history(TURNS * 6)])
    with torch.inference_mode():
        reference = model(ids).logits[0]
        fast = FastDecoder(model, int8=True)(ids, cache=ReservedCache()).logits[0]
    assert (reference - fast).abs().max() < 0.02
    assert (reference.argmax(-1) == fast.argmax(-1)).float().mean() >= 0.9 and len(reference) >= 100


def test_step_by_step_equals_one_pass(model, fmt):
    """The cached single-token steps (chat) give the logits of one pass over the whole sequence."""
    ids = fmt.persona_prefix(FACTS) + fmt.history(TURNS)
    decoder = FastDecoder(model, int8=True)
    with torch.inference_mode():
        whole = decoder(torch.tensor([ids]), cache=ReservedCache()).logits[0, -5:]
        cache = ReservedCache()
        decoder(torch.tensor([ids[:-5]]), cache=cache)
        steps = torch.stack([decoder(torch.tensor([[t]]), cache=cache).logits[0, -1] for t in ids[-5:]])
    assert torch.allclose(whole, steps, atol=1e-2)  # bf16 products: rounding depends on the batch shape


def test_the_choice_follows_the_cpu(model, monkeypatch):
    monkeypatch.delenv("PERSONAGPT_FAST_PATH", raising=False)
    monkeypatch.setattr("personagpt.models.fastpath.cpu_has_fast_bf16", lambda: True)
    assert choose_fast_path(None, model).mode == "int8"
    monkeypatch.setattr("personagpt.models.fastpath.cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr("personagpt.models.fastpath.cpu_has_avx2", lambda: True)
    assert choose_fast_path(None, model).mode == "int8"  # measured faster on an AVX2-only EPYC too
    monkeypatch.setattr("personagpt.models.fastpath.cpu_has_avx2", lambda: False)
    choice = choose_fast_path(None, model)
    assert choice.mode == "fp32" and "lacks AVX2" in choice.describe()
    monkeypatch.setenv("PERSONAGPT_FAST_PATH", "off")
    assert choose_fast_path(None, model).mode == "off"
    with pytest.raises(SettingsError):
        choose_fast_path("int4", model)
    assert choose_fast_path("int8", torch.nn.Linear(2, 2)).mode == "off"  # no fast forward for it


def test_engine_batches_on_the_fast_path_with_the_sessions_tokens(model, fmt):
    engine = Engine(model, fmt, max_batch=4, capacity=256, fast="int8")
    try:
        assert isinstance(engine.decoder, FastDecoder) and engine.fast_path.mode == "int8"
        prompts = [fmt.persona_prefix([f]) + fmt.history(TURNS[:1]) for f in FACTS + ["i swim.", "i paint."]]
        jobs = [engine.submit(p, SamplingConfig(do_sample=False, max_new_tokens=8)) for p in prompts]
        batched = [list(job) for job in jobs]
        for prompt, tokens in zip(prompts, batched):
            session = Conversation(model, fmt, prompt, sampling=SamplingConfig(do_sample=False, max_new_tokens=8),
                                   fast="int8")
            assert session.respond() == fmt.decode(tokens)  # alone or in a batch: the same reply
    finally:
        engine.close()


def test_server_and_selfplay_decode_on_the_fast_path(model, fmt):
    app = create_app(ServerSettings(precision="no", max_context=256), loader=lambda: (model, fmt))
    with LiveServer(app) as live:
        assert isinstance(live.engine.decoder, FastDecoder)
        health = httpx.get(live.url + "/health").json()
        assert health["decoding"].startswith("fast path, fp32 weights")  # the suite pins fp32 (conftest)
        reply = httpx.post(live.url + "/v1/selfplay", json={"turns": 1, "persona": FACTS, "max_tokens": 4})
        assert reply.status_code == 200
    assert fast_decoder(model, "fp32") is fast_decoder(model, "fp32")  # built once per model and mode
    assert fastpath.supported(model)
