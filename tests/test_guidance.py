"""Classifier-free guidance in the one token loop: off at g = 1 (today's tokens), the steered pick at g > 1, the
guide row in the same batched engine step as its prompt's row, and scales validated at every front end."""

from dataclasses import replace

import pytest
import torch

from personagpt.errors import SettingsError
from personagpt.generate import best_of_n
from personagpt.generate.best_of_n import recorded_scores, reply_logprobs
from personagpt.generate.conversation import Conversation
from personagpt.generate.engine import Engine
from personagpt.generate.sampling import MAX_GUIDANCE, SamplingConfig
from personagpt.models.load import build_gpt2

FACTS = ["i like dogs.", "i am a nurse."]
TURNS = ["hi , how are you ?", "good , you ?", "fine . what do you do ?"]
GOAL = "ask about pets."


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_gpt2(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=256, seed=3)


@pytest.fixture()
def engine(model, fmt):
    engine = Engine(model, fmt, max_batch=4, max_queue=8, capacity=256, fast="off")
    yield engine
    engine.close()


def conversation(model, fmt, cfg, **kwargs):
    return Conversation.from_turns(model, fmt, TURNS, persona=FACTS, goal=GOAL, sampling=cfg, fast="off", **kwargs)


def test_guidance_one_gives_exactly_the_unguided_tokens(model, fmt, engine):
    plain = SamplingConfig(max_new_tokens=12)
    for guided in (SamplingConfig(max_new_tokens=12, goal_guidance=1.0, persona_guidance=1.0),):
        assert conversation(model, fmt, guided, seed=5).respond() == conversation(model, fmt, plain, seed=5).respond()
    bot = conversation(model, fmt, plain, seed=1)
    prompt = bot.context_ids()
    alone = list(engine.submit(prompt, plain, seed=9))
    with_guide = engine.submit(prompt, plain, seed=9, guide_prompt=bot.guide_ids(prompt), guidance=1.0)
    assert list(with_guide) == alone and not with_guide.guided


def test_the_guided_pick_is_the_argmax_of_guide_plus_scaled_difference(model, fmt):
    scale = 2.5
    cfg = SamplingConfig(do_sample=False, max_new_tokens=1, goal_guidance=scale)
    bot = conversation(model, fmt, cfg)
    prompt = bot.context_ids()
    guide = bot.guide_ids(prompt)
    assert guide[:2] == [fmt.act_id, fmt.p1_id] and guide[2:2 + 3] != prompt[2:5]  # the goal left out
    with torch.inference_mode():
        cond = model(torch.tensor([prompt])).logits[0, -1].float()
        uncond = model(torch.tensor([guide])).logits[0, -1].float()
    steered = uncond + scale * (cond - uncond)
    steered[list(fmt.special_ids) + [fmt.eos_id]] = float("-inf")
    token = bot.respond()
    assert bot.turn_ids[-1][0] == int(steered.argmax())
    assert token == fmt.decode([int(steered.argmax())])


def test_the_engine_decodes_the_guide_row_in_the_same_step(model, fmt, engine):
    cfg = SamplingConfig(do_sample=False, max_new_tokens=6, min_new_tokens=6, goal_guidance=3.0)
    bot = conversation(model, fmt, cfg)
    prompt = bot.context_ids()
    guide = bot.guide_ids(prompt)
    list(engine.submit([fmt.eos_id], SamplingConfig(max_new_tokens=1)))  # the engine sizes its slots first
    rows = []
    handle = engine.decoder.get_input_embeddings().register_forward_hook(
        lambda module, args, out: rows.append(args[0].shape[0]))
    try:
        steps = engine.steps
        request = engine.submit(prompt, cfg, seed=0, guide_prompt=guide, guidance=3.0)
        tokens = list(request)
    finally:
        handle.remove()
    assert request.guided and len(tokens) == 6
    assert engine.steps - steps == 5 and rows == [2] * 6  # one admission and five steps, each over both rows
    # the local loop steers the same way (greedy: the same tokens)
    local = conversation(model, fmt, cfg)
    local.respond()
    assert local.turn_ids[-1][:6] == tokens[:6]
    assert engine.active == 0  # both rows left their slots


def test_persona_mode_guides_away_from_the_persona(model, fmt):
    bot = Conversation.from_turns(model, fmt, TURNS[:1], persona=FACTS, fast="off",
                                  sampling=SamplingConfig(persona_guidance=2.0))
    prompt = bot.context_ids()
    assert bot.guidance() == 2.0 and bot.guide_ids(prompt) == fmt.persona_prefix([]) + fmt.history(TURNS[:1])
    assert Conversation.with_persona(model, fmt, [], fast="off", sampling=SamplingConfig(persona_guidance=2.0)) \
        .guidance() == 1.0  # no facts: nothing to guide toward


def test_best_of_n_candidates_are_guided(model, fmt, engine):
    cfg = SamplingConfig(max_new_tokens=8, num_candidates=3, commit_tokens=4, goal_guidance=2.0)
    local = conversation(model, fmt, cfg, seed=2).respond()
    served = conversation(model, fmt, cfg, seed=2, engine=engine).respond()
    assert isinstance(local, str) and isinstance(served, str)
    assert engine.active == 0


@pytest.mark.parametrize("value", [-0.5, MAX_GUIDANCE + 1])
def test_scales_are_validated(value):
    with pytest.raises(SettingsError, match="guidance"):
        SamplingConfig(goal_guidance=value)
    with pytest.raises(SettingsError, match="guidance"):
        SamplingConfig(persona_guidance=value)


def test_the_api_takes_and_validates_the_scales(tokenizer, fmt, model):
    import openai

    from conftest import LiveServer
    from personagpt.serve import ServerSettings, create_app

    settings = ServerSettings(precision="no", max_batch=4, max_queue=8, max_context=256)
    with LiveServer(create_app(settings, loader=lambda: (model, fmt))) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "system", "content": "\n".join(FACTS)}, {"role": "user", "content": "hi !"}]
        reply = client.chat.completions.create(model="personagpt", messages=messages, max_tokens=8, seed=1,
                                               extra_body={"goal": 1, "goal_guidance": 2.0, "candidates": 1})
        assert reply.choices[0].finish_reason in ("stop", "length")
        reply = client.chat.completions.create(model="personagpt", messages=messages, max_tokens=8, seed=1,
                                               extra_body={"persona_guidance": 1.5})
        assert reply.choices[0].message.content is not None
        for field, value in (("goal_guidance", -1), ("persona_guidance", 100)):
            with pytest.raises(openai.BadRequestError) as error:
                client.chat.completions.create(model="personagpt", messages=messages, extra_body={field: value})
            assert error.value.body["param"] == field
        assert live.engine.active == 0


def test_front_ends_use_the_default_scales_and_answer_rule():
    import typer

    from personagpt.cli import app
    from personagpt.generate.sampling import FRONT_END_DEFAULTS
    from personagpt.serve.requests import sampling_of
    from personagpt.serve.schemas import ChatRequest, SelfPlayRequest

    command = typer.main.get_command(app)
    for name in ("interact", "selfplay", "teach"):
        params = {p.name: p.default for p in command.commands[name].params}
        assert params["goal_guidance"] == FRONT_END_DEFAULTS.goal_guidance, name
        assert params["persona_guidance"] == FRONT_END_DEFAULTS.persona_guidance, name
        assert params["consistent_answers"] is FRONT_END_DEFAULTS.consistent_answers is True, name
    chat = sampling_of(ChatRequest(messages=[{"role": "user", "content": "hi"}]))
    selfplay = sampling_of(SelfPlayRequest())
    for cfg in (chat, selfplay):
        assert (cfg.goal_guidance, cfg.persona_guidance, cfg.consistent_answers) == (
            FRONT_END_DEFAULTS.goal_guidance, FRONT_END_DEFAULTS.persona_guidance, True)


def test_best_of_n_ranks_by_the_scores_its_rows_recorded_without_a_model_pass(model, fmt, engine, monkeypatch):
    cfg = SamplingConfig(max_new_tokens=6, goal_guidance=2.0, num_candidates=3, commit_tokens=4)
    bot = conversation(model, fmt, cfg)
    prompt = bot.context_ids()
    guide = bot.guide_ids(prompt)
    requests = engine.submit_many(prompt, 3, cfg, torch.Generator().manual_seed(4), guide_prompt=guide, guidance=2.0)
    tokens = [list(r) for r in requests]
    finished = [t[-1] == fmt.eos_id for t in tokens]
    replies = [t[:-1] if end else t for t, end in zip(tokens, finished)]
    for heads, ends in ((replies, finished), ([r[:2] for r in replies], [False] * 3)):  # whole, and begun
        conditioned, unconditioned = recorded_scores(requests, heads, ends)
        assert conditioned == pytest.approx(reply_logprobs(model, prompt, heads, fmt.eos_id, finished=ends).tolist(),
                                            abs=1e-3)
        assert unconditioned == pytest.approx(reply_logprobs(model, guide, heads, fmt.eos_id, finished=ends).tolist(),
                                              abs=1e-3)
    unguided = engine.submit_many(prompt, 2, cfg, torch.Generator().manual_seed(4))
    assert recorded_scores(unguided, [list(r) for r in unguided], [False] * 2)[1] is None
    # a scored request's guide row at guidance 1 steers nothing: it only records the reference's scores
    reference = bot.reference_ids(prompt)
    scoring = engine.submit_many(prompt, 2, cfg, torch.Generator().manual_seed(4), guide_prompt=reference)
    assert [list(r) for r in scoring] == [r.tokens for r in unguided] and all(r.guided for r in scoring)
    heads = [r.tokens[:3] for r in scoring]
    assert recorded_scores(scoring, heads, [False] * 2)[1] == pytest.approx(
        reply_logprobs(model, reference, heads, fmt.eos_id, finished=[False] * 2).tolist(), abs=1e-3)

    def no_pass(*args, **kwargs):
        raise AssertionError("best-of-N scored its candidates again")

    monkeypatch.setattr(best_of_n, "reply_logprobs", no_pass)
    for decoder in (engine, None):  # through the engine, and on the session's own loop
        assert conversation(model, fmt, cfg, seed=1, engine=decoder).respond() is not None
    persona = Conversation.from_turns(model, fmt, TURNS, persona=FACTS, sampling=cfg, fast="off", engine=engine)
    assert persona.respond() is not None  # unguided: the reference rides as a row of the engine


def test_a_goal_turn_takes_the_goal_candidates(model, fmt):
    from personagpt.generate.sampling import DEFAULT_GOAL_CANDIDATES, FRONT_END_DEFAULTS

    persona = Conversation.from_turns(model, fmt, TURNS, persona=FACTS, sampling=FRONT_END_DEFAULTS, fast="off")
    assert persona.turn_sampling().num_candidates == FRONT_END_DEFAULTS.num_candidates == 1
    assert conversation(model, fmt, FRONT_END_DEFAULTS).turn_sampling().num_candidates == DEFAULT_GOAL_CANDIDATES
    for told in (replace(FRONT_END_DEFAULTS, goal_candidates=1), replace(FRONT_END_DEFAULTS, do_sample=False),
                 SamplingConfig()):  # one sample when told so, when greedy, and in the library's plain settings
        assert conversation(model, fmt, told).turn_sampling().num_candidates == 1
    with pytest.raises(SettingsError):
        SamplingConfig(goal_candidates=0)


def test_the_auth_interviewer_asks_with_the_default_goal_guidance(model, fmt, monkeypatch):
    import personagpt.auth.commands  # noqa: F401 (imported before SelfPlay is replaced: it keeps the real one)
    from personagpt.auth import interview
    from personagpt.cli import auth
    from personagpt.generate.sampling import FRONT_END_DEFAULTS

    made = {}
    monkeypatch.setattr(auth, "load", lambda name, device: (model, fmt))
    monkeypatch.setattr(interview, "SelfPlay", lambda *args, **kwargs: made.setdefault("sampling", args[4]))
    auth._self_play(None, None, None, 2, 8, 1, embedding=False)
    assert made["sampling"].goal_guidance == FRONT_END_DEFAULTS.goal_guidance != 1
