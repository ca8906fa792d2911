import pytest

from personagpt.models.load import build_gpt2

from personagpt.generate.conversation import (GREEDY, ContextOverflowError, Conversation, SamplingConfig, fit_context,
                                   generate_batch)
from personagpt.generate.replay import Replay, generate_replays

FACTS = ["i like dogs.", "i am a nurse."]
USER_TURNS = ["hi there , how are you ?", "what do you do for work ?", "cool , me too .", "do you have pets ?"]
SHORT = SamplingConfig(do_sample=False, max_new_tokens=10)


class TokenCounter:
    """Counts the input tokens the model's forward sees (via a hook on the embedding)."""

    def __init__(self, model):
        self.seen = 0
        self.handle = model.get_input_embeddings().register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.seen += args[0].numel()

    def close(self):
        self.handle.remove()


def test_greedy_identical_with_and_without_cache(tiny_model, fmt):
    cached = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SHORT)
    fresh = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SHORT, use_cache=False)
    for text in USER_TURNS:
        cached.add_turn(text)
        fresh.add_turn(text)
        assert cached.respond() == fresh.respond()
    assert cached.turn_ids == fresh.turn_ids


def test_cache_means_a_turn_costs_only_new_tokens(tiny_model, fmt):
    conversation = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SHORT)
    counter = TokenCounter(tiny_model)
    try:
        conversation.add_turn(USER_TURNS[0])
        conversation.respond()
        for text in USER_TURNS[1:]:
            counter.seen = 0
            before = len(conversation.context_ids())
            conversation.add_turn(text)
            conversation.respond()
            new_input = len(fmt.utterance(text)) + 1  # + the previous reply's unseen eos
            generated = len(conversation.turn_ids[-1]) - 1
            # prefill of the new tokens, then one token per decoding step; never the old history
            assert counter.seen <= new_input + generated
            assert counter.seen < before
    finally:
        counter.close()


def test_action_mode_cache_matches_uncached(tiny_model, fmt):
    cached = Conversation.with_goal(tiny_model, fmt, "ask about pets.", sampling=SHORT)
    fresh = Conversation.with_goal(tiny_model, fmt, "ask about pets.", sampling=SHORT, use_cache=False)
    for goal, answer in zip(["ask about pets.", "talk about music.", "my own new goal."], USER_TURNS):
        for c in (cached, fresh):
            c.set_goal(goal)
        assert cached.respond() == fresh.respond()
        cached.add_turn(answer)
        fresh.add_turn(answer)


def test_oldest_turns_dropped_never_the_prefix(tiny_model, fmt):
    conversation = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SHORT, max_context=80)
    fresh = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SHORT, max_context=80, use_cache=False)
    prefix = fmt.persona_prefix(FACTS)
    for text in USER_TURNS * 2:
        conversation.add_turn(text)
        fresh.add_turn(text)
        assert conversation.respond() == fresh.respond()
        ids = conversation.context_ids()
        assert ids[: len(prefix)] == prefix
        assert len(ids) <= 80 - SHORT.max_new_tokens
    assert len(conversation.context_ids()) < len(prefix) + sum(map(len, conversation.turn_ids))


def test_fit_context_keeps_whole_turns():
    assert fit_context([9], [[1, 1], [2, 2], [3, 3]], 5) == [9, 2, 2, 3, 3]
    with pytest.raises(ContextOverflowError):
        fit_context([9, 9], [[1, 1, 1, 1]], 5)


def test_too_long_turn_is_refused_and_history_unchanged(tiny_model, fmt):
    conversation = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SHORT)
    with pytest.raises(ContextOverflowError):
        conversation.add_turn("word " * 10_000)
    assert conversation.turns == []


def test_token_loop_matches_transformers_generate(tiny_model, fmt):
    """The one token step (replayed batch) picks what transformers' generate picks, eos ban included."""
    import torch

    contexts = [fmt.persona_prefix(["i like cats."]) + fmt.utterance("hi"),
                fmt.persona_prefix(FACTS) + fmt.history(USER_TURNS)]
    cfg = SamplingConfig(do_sample=False, max_new_tokens=10, min_new_tokens=3)
    ours = generate_batch(tiny_model, fmt, contexts, cfg)
    for context, reply in zip(contexts, ours):
        with torch.inference_mode():
            out = tiny_model.generate(torch.tensor([context]), attention_mask=torch.ones(1, len(context), dtype=torch.long),
                                      **cfg.generate_kwargs(fmt))[0, len(context):].tolist()
        assert reply == (out[: out.index(fmt.eos_id)] if fmt.eos_id in out else out)
        assert len(reply) >= 3


def test_batch_matches_single(tiny_model, fmt):
    contexts = [fmt.persona_prefix(["i like cats."]) + fmt.utterance("hi"),
                fmt.goal_prefix("ask about kids."),
                fmt.persona_prefix(FACTS) + fmt.history(USER_TURNS)]
    batched = generate_batch(tiny_model, fmt, contexts, SHORT)
    single = [generate_batch(tiny_model, fmt, [c], SHORT)[0] for c in contexts]
    assert batched == single
    assert all(fmt.eos_id not in reply for reply in batched)


def test_replays_match_re_encoding_every_context(tiny_model, fmt):
    """Lockstep replay over a shared cache with masked holes gives the replies of re-encoding each context."""
    turns = [fmt.utterance(t) for t in USER_TURNS + ["yes , two cats .", "bye !"]]
    replays = [Replay(fmt.persona_prefix(FACTS, 2), turns, [1, 3, 5]),
               Replay(fmt.persona_prefix(["i like cats."], 1), turns[:3], [0, 2]),  # fewer replies than the others
               Replay(fmt.goal_prefix("ask about kids."), turns[:4], [2]),
               Replay(fmt.persona_prefix(FACTS, 1), [], [0])]
    replayed = generate_replays(tiny_model, fmt, replays, SHORT, batch_size=3)
    expected = [[generate_batch(tiny_model, fmt, [r.prefix + [i for t in r.turns[:at] for i in t]], SHORT)[0]
                 for at in r.reply_at] for r in replays]
    assert replayed == expected
    assert [len(r) for r in replayed] == [3, 2, 1, 1]


def test_replay_feeds_the_history_once(tiny_model, fmt):
    turns = [fmt.utterance(t) for t in USER_TURNS + ["yes , two cats .", "bye !"]]
    replay = Replay(fmt.persona_prefix(FACTS, 2), turns, list(range(len(turns))))
    counter = TokenCounter(tiny_model)
    generate_replays(tiny_model, fmt, [replay], SHORT)
    counter.close()
    generated = len(turns) * (SHORT.max_new_tokens - 1)  # at most, fed back one at a time
    assert counter.seen <= replay.length() + generated
    assert counter.seen < sum(len(replay.prefix) + sum(map(len, turns[:at])) for at in replay.reply_at)


def test_replays_refuse_what_does_not_fit(tiny_model, fmt):
    long = Replay(fmt.persona_prefix(FACTS), [fmt.utterance("word " * 300)] * 4, [3])
    with pytest.raises(ValueError, match="does not fit"):
        generate_replays(tiny_model, fmt, [long], SHORT)


def test_sampling_is_seeded_and_never_emits_control_tokens(tiny_model, fmt):
    sampling = SamplingConfig(max_new_tokens=20, top_k=50, top_p=1.0)
    runs = []
    for _ in range(2):
        c = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=sampling, seed=123)
        c.add_turn("hello")
        runs.append((c.respond(), c.turn_ids[-1]))
    assert runs[0] == runs[1]
    assert not set(runs[0][1]) & set(fmt.special_ids)


@pytest.mark.parametrize("bad", [dict(top_p=0), dict(temperature=0), dict(max_new_tokens=0), dict(top_k=-1)])
def test_bad_sampling_settings(bad):
    with pytest.raises(ValueError):
        SamplingConfig(**bad)


def test_greedy_drops_sampling_settings(fmt):
    kwargs = GREEDY.generate_kwargs(fmt)
    assert kwargs["do_sample"] is False and "top_k" not in kwargs and "top_p" not in kwargs
    assert kwargs["suppress_tokens"] == list(fmt.special_ids)


def test_session_decoder_matches_transformers_generate(tiny_model, fmt):
    conversation = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SHORT)
    for text in USER_TURNS[:2]:
        conversation.add_turn(text)
        context = conversation.context_ids()
        reply = conversation.respond()
        expected = generate_batch(tiny_model, fmt, [context], SHORT)[0]
        assert conversation.turn_ids[-1] == expected + [fmt.eos_id]
        assert reply == fmt.decode(expected)


def test_repetition_penalty_and_beams_run(tiny_model, fmt):
    conversation = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SHORT)
    conversation.add_turn("hello")
    penalised = conversation.respond(SamplingConfig(do_sample=False, max_new_tokens=10, repetition_penalty=1.5))
    context = conversation.context_ids()
    expected = generate_batch(tiny_model, fmt, [fmt.persona_prefix(FACTS) + fmt.utterance("hello")],
                              SamplingConfig(do_sample=False, max_new_tokens=10, repetition_penalty=1.5))[0]
    assert penalised == fmt.decode(expected)
    conversation.add_turn("and you ?")
    assert isinstance(conversation.respond(SamplingConfig(do_sample=False, num_beams=2, max_new_tokens=6)), str)
    assert len(conversation.context_ids()) > len(context)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the eager fallback warns: it must not be taken here
def test_compiled_decoding_matches_eager(tiny_model, fmt):
    """torch.compile over a static cache: same greedy turns as re-encoding, across context drops and cache sizes."""
    compiled = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SHORT, max_context=80, compile=True)
    fresh = Conversation.with_persona(tiny_model, fmt, FACTS, sampling=SHORT, max_context=80, use_cache=False)
    for text in USER_TURNS * 2:
        compiled.add_turn(text)
        fresh.add_turn(text)
        assert compiled.respond() == fresh.respond()
    assert compiled.turn_ids == fresh.turn_ids
    assert compiled._cache.get_max_length() == 80


def test_compile_failure_falls_back_to_eager(tokenizer, fmt, monkeypatch):
    import torch

    def broken(fn, **kwargs):
        def fail(*args):
            raise RuntimeError("no C++ compiler")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    model = build_gpt2(tokenizer, n_layer=1, n_embd=16, n_head=2, n_positions=128)
    compiled = Conversation.with_persona(model, fmt, FACTS, sampling=SHORT, compile=True)
    fresh = Conversation.with_persona(model, fmt, FACTS, sampling=SHORT, use_cache=False)
    with pytest.warns(RuntimeWarning, match="decoding eagerly"):
        compiled.add_turn(USER_TURNS[0])
        fresh.add_turn(USER_TURNS[0])
        assert compiled.respond() == fresh.respond()


def test_min_new_tokens_bans_eos_like_generate(tokenizer, fmt):
    model = build_gpt2(tokenizer, n_layer=1, n_embd=16, n_head=2, n_positions=128)

    def favour_eos(module, args, output):
        output[..., fmt.eos_id] += 100.0
        return output

    model.lm_head.register_forward_hook(favour_eos)
    context = fmt.persona_prefix(FACTS) + fmt.utterance(USER_TURNS[0])
    for minimum in (0, 5):
        cfg = SamplingConfig(do_sample=False, max_new_tokens=8, min_new_tokens=minimum)
        bot = Conversation(model, fmt, fmt.persona_prefix(FACTS), sampling=cfg)
        bot.add_turn(USER_TURNS[0])
        bot.respond()
        assert len(bot.turn_ids[-1]) - 1 == minimum  # eos right after the minimum
        assert bot.turn_ids[-1][:-1] == generate_batch(model, fmt, [context], cfg)[0]
        replay = Replay(fmt.persona_prefix(FACTS), [fmt.utterance(USER_TURNS[0])], reply_at=[1])
        assert generate_replays(model, fmt, [replay], cfg) == [[bot.turn_ids[-1][:-1]]]
