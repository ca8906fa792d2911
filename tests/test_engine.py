"""The engine on its own: prefix-cache reuse and its bound, cancellation, and a failing step that fails only the
requests it was running."""

import pytest
import torch

from personagpt.generate.engine import Engine
from personagpt.errors import PersonaGPTError
from personagpt.generate.kvcache import PrefixCache
from personagpt.models.load import build_gpt2
from personagpt.generate.sampling import SamplingConfig

GREEDY = SamplingConfig(do_sample=False, max_new_tokens=5, min_new_tokens=5)


@pytest.fixture()
def engine(tokenizer, fmt):
    model = build_gpt2(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=256)
    engine = Engine(model, fmt, max_batch=4, max_queue=8, capacity=256, prefix_cache_tokens=200)
    yield engine
    engine.close()


def test_a_later_turn_reuses_the_cached_prefix(engine, fmt):
    prompt = fmt.persona_prefix(["i like dogs."]) + fmt.history(["hi , how are you ?"])
    first = engine.submit(prompt, GREEDY)
    reply = list(first)
    assert first.cached_tokens == 0
    follow = prompt + reply + fmt.history(["what do you do ?"])
    second = engine.submit(follow, GREEDY)
    list(second)
    # everything but the reply's last token (sampled, never fed) came from the cache
    assert second.cached_tokens == len(prompt) + len(reply) - 1
    before = engine.forward_tokens
    again = engine.submit(follow, GREEDY)
    assert list(again) == second.tokens and again.cached_tokens == len(follow) - 1
    assert engine.forward_tokens - before == 1 + 4  # the last prompt token, then 4 decoding steps


def test_prefix_cache_stays_within_its_token_budget():
    cache = PrefixCache(max_tokens=10)
    kv = [(torch.zeros(1, 1, 4, 2), torch.zeros(1, 1, 4, 2))]
    cache.add([1, 2, 3, 4], kv)
    cache.add([1, 2, 3, 4, 5, 6], kv)  # supersedes its prefix
    assert list(cache.entries) == [(1, 2, 3, 4, 5, 6)] and cache.tokens == 6
    cache.add([7, 8, 9, 10], kv)
    cache.add([11, 12], kv)  # over budget: the least recently used goes
    assert (1, 2, 3, 4, 5, 6) not in cache.entries and cache.tokens <= 10
    assert cache.longest([7, 8, 9, 99], limit=10)[0] == 3


def test_cancel_frees_the_slot(engine, fmt):
    long = SamplingConfig(max_new_tokens=200, min_new_tokens=200)
    job = engine.submit(fmt.persona_prefix(["a."]), long)
    tokens = iter(job)
    next(tokens)
    job.cancel()
    rest = list(tokens)
    assert job.finish_reason == "cancelled" and len(rest) < 199


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(engine, fmt, monkeypatch):
    head = engine.model.get_output_embeddings()  # its hooks run on the fast path too
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")

    handle = head.register_forward_hook(hook)
    try:
        job = engine.submit(fmt.persona_prefix(["a."]), GREEDY)
        with pytest.raises(RuntimeError, match="boom"):
            list(job)
        assert job.finish_reason == "error"
    finally:
        handle.remove()
    assert len(engine.generate(fmt.persona_prefix(["b."]), GREEDY)) == 5


def test_bad_submissions(engine, fmt):
    with pytest.raises(PersonaGPTError):
        engine.submit([], GREEDY)
    with pytest.raises(PersonaGPTError):
        engine.submit([1] * 300, GREEDY)


def test_identical_prompts_admitted_together_are_encoded_once(engine, fmt):
    prompt = fmt.persona_prefix(["i like dogs."]) + fmt.history(["hi , how are you ?"])
    cfg = SamplingConfig(max_new_tokens=4, min_new_tokens=4)
    before = engine.forward_tokens
    with engine._lock:  # hold the scheduler back so that all four are admitted in one step
        jobs = [engine.submit(prompt, cfg, seed=i) for i in range(4)]
    replies = [list(job) for job in jobs]
    assert engine.forward_tokens - before == len(prompt) + 3 * 4  # one prefill, then 3 steps of 4 rows
    assert len({tuple(r) for r in replies}) > 1
    alone = engine.submit(prompt, cfg, seed=2)
    assert list(alone) == replies[2]  # a copy samples exactly what it would alone
    before_many = engine.forward_tokens
    many = engine.submit_many(prompt + [11], 3, cfg, torch.Generator().manual_seed(0))
    assert [len(list(job)) for job in many] == [4] * 3
    assert engine.forward_tokens - before_many == 1 + 3 * 3  # the new token once (the rest cached), 3 steps x 3
