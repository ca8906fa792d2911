"""The engine's llama.cpp backend: the same logits as torch on the same weights (f32 GGUF), so the engine gives the
same tokens on either backend for plain, guided and best-of-N requests; prefixes reused from its cache; no llama.cpp
sequence lost when the prefix cache evicts. Skipped where llama-cpp-python is not installed (an optional extra)."""

import importlib.util

import pytest
import torch

from personagpt.errors import SettingsError
from personagpt.generate import llamacpp
from personagpt.generate.engine import Engine
from personagpt.generate.sampling import SamplingConfig
from personagpt.generate.slots import choose_backend
from personagpt.models.load import build_gpt2

needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed (pip install 'personagpt[llamacpp]')")


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_gpt2(tokenizer, n_layer=2, n_embd=64, n_head=2, n_positions=256, seed=4)


@pytest.fixture()
def f32_cache(tmp_path, monkeypatch):
    """GGUF exports in a fresh cache directory, in f32: llama.cpp then computes what torch does, up to rounding."""
    monkeypatch.setenv("PERSONAGPT_CACHE", str(tmp_path))
    monkeypatch.setenv("PERSONAGPT_LLAMACPP_WEIGHTS", "f32")
    return tmp_path


def prompts(fmt):
    return [fmt.persona_prefix(["i have two dogs.", "i am a nurse."]) + fmt.history(["hi , do you have cats ?"]),
            fmt.persona_prefix(["i love hiking."]) + fmt.history(["hello !", "hi there .", "what do you do ?"]),
            fmt.persona_prefix(["i play the violin."]) + fmt.history(["do you play the piano ?"])]


def test_the_backend_is_chosen_by_what_is_installed(model, monkeypatch):
    monkeypatch.delenv("PERSONAGPT_BACKEND", raising=False)
    installed = importlib.util.find_spec("llama_cpp") is not None
    assert choose_backend(None, model)[0] == ("llama.cpp" if installed else "torch")
    assert choose_backend("torch", model) == ("torch", "asked for")
    assert choose_backend(None, model, rows=300)[0] == "torch"  # more rows than llama.cpp has sequences
    with pytest.raises(SettingsError, match="must be auto, torch, llama.cpp"):
        choose_backend("vulkan", model)
    monkeypatch.setattr(llamacpp.importlib.util, "find_spec", lambda name: None)
    assert choose_backend(None, model) == ("torch", "llama-cpp-python is not installed")
    with pytest.raises(SettingsError, match="cannot run here: llama-cpp-python is not installed"):
        choose_backend("llama.cpp", model)


@needs_llama
def test_llamacpp_gives_torchs_logits_on_the_same_weights(model, fmt, f32_cache):
    slots = llamacpp.LlamaCppSlots(model, fmt, max_batch=4, capacity=256, prefix_cache_tokens=512, weights="f32")
    ids = prompts(fmt)
    with torch.inference_mode():
        logits = slots.forward(0, ids, [0] * len(ids))  # three prompts prefilled in one batch
        expected = torch.stack([model(torch.tensor([p])).logits[0, -1] for p in ids])
        torch.testing.assert_close(logits, expected, atol=1e-3, rtol=1e-3)  # keys/values in f16
        step = slots.forward(0, [[7], [8], [9]], [len(p) for p in ids])  # one decoding step per slot
        expected = torch.stack([model(torch.tensor([p + [t]])).logits[0, -1] for p, t in zip(ids, (7, 8, 9))])
        torch.testing.assert_close(step, expected, atol=1e-3, rtol=1e-3)  # keys/values in f16
    assert slots.path.parent == f32_cache / "gguf" and slots.path.exists()
    slots.close()


@needs_llama
def test_the_engine_gives_the_same_tokens_on_either_backend(model, fmt, f32_cache):
    sampled = SamplingConfig(max_new_tokens=12)
    runs = {}
    for backend in ("torch", "llama.cpp"):
        engine = Engine(model, fmt, max_batch=8, capacity=256, prefix_cache_tokens=1024, backend=backend)
        assert engine.backend == backend
        requests = [engine.submit(p, sampled, seed=i) for i, p in enumerate(prompts(fmt))]  # decoded together
        guided = engine.submit(prompts(fmt)[0], sampled, seed=11, guide_prompt=prompts(fmt)[1], guidance=2.5)
        best = engine.submit_many(prompts(fmt)[2], 3, sampled, torch.Generator().manual_seed(5))
        runs[backend] = [list(r) for r in requests + [guided] + best]
        engine.close()
    assert runs["llama.cpp"] == runs["torch"]
    assert len({tuple(r) for r in runs["torch"][-3:]}) > 1  # the candidates differ: each has its own generator


@needs_llama
def test_a_later_turn_reuses_the_prefix_and_evicted_entries_free_their_sequences(model, fmt, f32_cache):
    greedy = SamplingConfig(do_sample=False, max_new_tokens=5, min_new_tokens=5)
    engine = Engine(model, fmt, max_batch=4, capacity=256, prefix_cache_tokens=400, backend="llama.cpp")
    reference = Engine(model, fmt, max_batch=4, capacity=256, prefix_cache_tokens=0, backend="torch")
    prompt = prompts(fmt)[0]
    reply = engine.generate(prompt, greedy)
    follow = prompt + reply + fmt.history(["what do you do ?"])
    second = engine.submit(follow, greedy)
    assert list(second) == reference.generate(follow, greedy)
    assert second.cached_tokens == len(prompt) + len(reply) - 1
    for i in range(40):  # far more finished sequences than the cache keeps: entries evicted, sequences reused
        engine.generate(fmt.persona_prefix([f"i am {i} years old."]) + fmt.history(["hi"]), greedy)
    slots = engine.slots
    assert slots.prefix_cache.tokens <= 400
    assert len(slots._free) + len(slots.prefix_cache.entries) == slots.cache_sequences
    engine.close()
    reference.close()


@needs_llama
def test_the_server_and_the_terminal_decode_on_llamacpp_when_it_is_installed(model, fmt, tokenizer, f32_cache,
                                                                              monkeypatch, tmp_path):
    import httpx

    from personagpt.models.load import save_checkpoint
    from personagpt.serve import ServerSettings, create_app

    from conftest import LiveServer
    from test_first_hour import run

    monkeypatch.delenv("PERSONAGPT_BACKEND")  # what a user gets: automatic
    app = create_app(ServerSettings(precision="no", max_context=256), loader=lambda: (model, fmt))
    with LiveServer(app) as live:
        health = httpx.get(live.url + "/health").json()
        assert health["backend"] == "llama.cpp" and health["decoding"].startswith("llama.cpp, f32 weights")
        reply = httpx.post(live.url + "/v1/chat/completions", json={
            "messages": [{"role": "system", "content": "i have two dogs."}, {"role": "user", "content": "hi"}],
            "goal": "talk about pets.", "max_tokens": 6})  # goal guidance on by default: a guide row beside it
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] > 0
    checkpoint = save_checkpoint(model, tokenizer, tmp_path / "model")
    chat = run(["interact", "--model", checkpoint, "--persona", "i have two dogs.", "-turns", "2",
                "--max-new-tokens", "4", "--seed", "3"], b"hello\ndo you have cats ?\n")
    assert chat.exit_code == 0, chat.output
    assert "Decoding: llama.cpp, f32 weights" in chat.output and chat.output.count("Bot:") == 2


@needs_llama
def test_a_llamacpp_that_fails_to_start_leaves_torch_serving_unless_it_was_asked_for(model, fmt, f32_cache,
                                                                                   monkeypatch):
    from personagpt.errors import PersonaGPTError

    def broken(*args, **kwargs):
        raise PersonaGPTError("llama.cpp could not load model.gguf")

    monkeypatch.setattr(llamacpp, "LlamaCppSlots", broken)
    monkeypatch.delenv("PERSONAGPT_BACKEND")
    engine = Engine(model, fmt, max_batch=2, capacity=256)  # chosen automatically: falls back, says why
    assert engine.backend == "torch" and "llama.cpp failed to start: llama.cpp could not load" in engine.describe()
    assert engine.generate(prompts(fmt)[0], SamplingConfig(max_new_tokens=3), seed=1)
    engine.close()
    with pytest.raises(PersonaGPTError, match="could not load"):
        Engine(model, fmt, max_batch=2, capacity=256, backend="llama.cpp")  # asked for: the error stands
