"""The HTTP server, live on a loopback port, driven by the official OpenAI client and raw HTTP."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from personagpt.models.load import build_gpt2
from personagpt.generate.sampling import SamplingConfig
from personagpt.serve import ServerSettings, create_app

from conftest import LiveServer, no_eos

PERSONAS = [["i like dogs.", "i am a nurse."], ["i love jazz."], ["i have three kids.", "i live in ohio."],
            ["i hate snow."], ["i am a pilot."], ["i paint."], ["i grow tomatoes.", "i am retired."], ["i swim."]]


@pytest.fixture(scope="module")
def server(tokenizer, fmt):
    model = build_gpt2(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=256)
    settings = ServerSettings(precision="no", max_batch=8, max_queue=16, max_context=256)
    with LiveServer(create_app(settings, loader=lambda: (model, fmt))) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def chat(client, persona, text="hi , how are you ?", **kwargs):
    messages = [{"role": "system", "content": "\n".join(persona)}, {"role": "user", "content": text}]
    return client.chat.completions.create(model="personagpt", messages=messages, **kwargs)


def test_plain_and_streamed_chat_with_the_openai_client(client, server):
    plain = chat(client, PERSONAS[0], temperature=0, max_tokens=12)
    assert plain.object == "chat.completion" and plain.choices[0].message.role == "assistant"
    assert plain.choices[0].finish_reason in ("stop", "length")
    assert plain.usage.prompt_tokens > 0 and plain.usage.completion_tokens >= 1
    timings = plain.model_extra["timings"]
    assert {"prompt_n", "cache_n", "predicted_per_second"} <= timings.keys()
    stream = chat(client, PERSONAS[0], temperature=0, max_tokens=12, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    # the streamed request repeated the plain one's prompt: all of it but the last token came from the cache
    assert chunks[-1].model_extra["timings"]["cache_n"] == plain.usage.prompt_tokens - 1


def test_persona_by_extension_and_a_goal(client):
    by_system = chat(client, PERSONAS[1], temperature=0, max_tokens=8)
    by_field = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi , how are you ?"}],
                                              temperature=0, max_tokens=8, extra_body={"persona": PERSONAS[1]})
    assert by_field.choices[0].message.content == by_system.choices[0].message.content
    steered = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello !"}],
                                             temperature=0, max_tokens=8, extra_body={"goal": 1})
    by_text = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello !"}],
                                             temperature=0, max_tokens=8, extra_body={"goal": "ask about pets."})
    assert steered.choices[0].message.content == by_text.choices[0].message.content
    by_line = client.chat.completions.create(model="m", temperature=0, max_tokens=8, messages=[
        {"role": "system", "content": "i like dogs.\ngoal: ask about pets."}, {"role": "user", "content": "hello !"}])
    by_fields = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello !"}],
                                              temperature=0, max_tokens=8,
                                              extra_body={"goal": 1, "persona": ["i like dogs."]})
    assert by_line.choices[0].message.content == by_fields.choices[0].message.content  # the template's convention
    opening = client.chat.completions.create(model="m", messages=[], max_tokens=5, extra_body={"goal": "talk about work."})
    assert opening.choices[0].message.role == "assistant"


def test_parallel_greedy_conversations_match_each_alone(client):
    def ask(persona):
        return chat(client, persona, temperature=0, max_tokens=16).choices[0].message.content

    alone = [ask(p) for p in PERSONAS]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, PERSONAS))
    assert together == alone


def test_same_seed_same_sampled_reply(client):
    a = chat(client, PERSONAS[2], seed=7, max_tokens=12, temperature=1.2).choices[0].message.content
    b = chat(client, PERSONAS[2], seed=7, max_tokens=12, temperature=1.2).choices[0].message.content
    assert a == b


def error_of(response):
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "param"}, body
    return body["error"]


@pytest.mark.parametrize("payload, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": 42}], "persona": ["a."]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "  "}], "persona": ["a."]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({"messages": [{"role": "robot", "content": "hi"}], "persona": ["a."]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "hi"}], "persona": ["a.", " "]}, "persona"),
    ({"messages": [{"role": "user", "content": "hi"}], "goal": 11}, "goal"),
    ({"messages": [{"role": "user", "content": "hi"}], "persona": ["a."], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "persona": ["a."], "temperature": 3}, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "persona": ["a."], "top_p": 0}, "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}], "tool_choice": "required"},
     "tool_choice"),
    ({"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"50256": -100}}, "logit_bias"),
    ({"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}},
     "response_format"),
    ({"messages": [{"role": "user", "content": "word " * 400}], "persona": ["a."]}, "messages"),
])
def test_bad_requests_are_4xx_with_an_openai_error_body(server, payload, param):
    response = httpx.post(server.url + "/v1/chat/completions", json=payload)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "Traceback" not in response.text


def test_malformed_json_oversized_body_and_unknown_path(server):
    bad = httpx.post(server.url + "/v1/chat/completions", content=b"{not json",
                     headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in error_of(bad)["message"]
    huge = httpx.post(server.url + "/v1/chat/completions", content=b"x" * (2 << 20),
                      headers={"content-type": "application/json"})
    assert huge.status_code == 413 and error_of(huge)
    missing = httpx.get(server.url + "/v1/nothing")
    assert missing.status_code == 404 and error_of(missing)


def test_a_long_history_drops_its_oldest_turns(client):
    turns = []
    for i in range(30):
        turns += [{"role": "user", "content": f"tell me about thing number {i} please ."},
                  {"role": "assistant", "content": f"thing {i} is nice , i like it a lot ."}]
    turns.append({"role": "user", "content": "and the last one ?"})
    reply = client.chat.completions.create(model="m", messages=[{"role": "system", "content": "i like dogs."}] + turns,
                                           max_tokens=8)
    assert reply.usage.prompt_tokens + 8 <= 256


def test_goals_personas_models_selfplay_and_metrics(server):
    goals = httpx.get(server.url + "/v1/goals").json()["goals"]
    assert len(goals) == 11 and goals[1] == {"index": 1, "goal": "ask about pets."}
    persona = httpx.get(server.url + "/v1/personas/random", params={"seed": 3}).json()["persona"]
    assert 3 <= len(persona) <= 5
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["object"] == "model"
    played = httpx.post(server.url + "/v1/selfplay", json={"turns": 2, "goals": [1, "talk about cats."],
                                                           "max_tokens": 5, "seed": 1}, timeout=60).json()
    assert played["actions"] == ["ask about pets.", None, "talk about cats.", None] and len(played["turns"]) == 4
    with httpx.stream("POST", server.url + "/v1/selfplay", json={"turns": 2, "max_tokens": 5, "stream": True,
                                                                  "persona": ["i like dogs."]}, timeout=60) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    turns = [json.loads(e) for e in events[:-2]]
    assert [t["role"] for t in turns] == ["interviewer", "persona"] * 2
    assert json.loads(events[-2])["transcript"]["p2_facts"] == ["i like dogs."]
    metrics = httpx.get(server.url + "/metrics").text
    for name in ("personagpt_requests_total", "personagpt_completion_tokens_total", "personagpt_queue_depth",
                 "personagpt_active_sequences", "personagpt_time_to_first_token_seconds_bucket",
                 "personagpt_turn_seconds_bucket"):
        assert name in metrics
    assert 'status="400"' in metrics or 'status="200"' in metrics


def test_api_key_guards_everything_but_health(tokenizer, fmt):
    model = build_gpt2(tokenizer, n_layer=1, n_embd=16, n_head=1, n_positions=128)
    settings = ServerSettings(precision="no", max_context=128, api_key="s3cret")
    with LiveServer(create_app(settings, loader=lambda: (model, fmt))) as live:
        assert httpx.get(live.url + "/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            denied = httpx.get(live.url + "/v1/models", headers=headers)
            assert denied.status_code == 401 and error_of(denied)["type"] == "authentication_error"
        assert httpx.get(live.url + "/metrics").status_code == 401
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="s3cret", max_retries=0)
        assert chat(client, ["i like dogs."], max_tokens=3).choices[0].message.content is not None
        with pytest.raises(openai.AuthenticationError):
            chat(openai.OpenAI(base_url=live.url + "/v1", api_key="nope", max_retries=0), ["a."], max_tokens=3)
        # no CORS unless asked for
        preflight = httpx.options(live.url + "/v1/chat/completions", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers


def test_full_queue_is_503_and_a_disconnect_cancels(tokenizer, fmt):
    model = no_eos(build_gpt2(tokenizer, n_layer=1, n_embd=16, n_head=1, n_positions=256), fmt)
    settings = ServerSettings(precision="no", max_batch=1, max_queue=1, max_context=256)
    with LiveServer(create_app(settings, loader=lambda: (model, fmt))) as live:
        engine = live.engine
        long = SamplingConfig(max_new_tokens=200, min_new_tokens=200)
        busy = engine.submit(fmt.persona_prefix(["a."]), long)  # takes the only slot
        while engine.active == 0:
            time.sleep(0.01)
        waiting = engine.submit(fmt.persona_prefix(["b."]), long)  # fills the queue
        full = httpx.post(live.url + "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "persona": ["a."]})
        assert full.status_code == 503 and full.headers["retry-after"] == "1"
        assert error_of(full)["type"] == "server_error"
        busy.cancel()
        waiting.cancel()
        while engine.active or engine.queue_depth:
            time.sleep(0.01)
        # a streaming client that hangs up frees its slot long before its 200 tokens are done
        with httpx.stream("POST", live.url + "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "persona": ["a."], "max_tokens": 200,
                "stream": True}) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            while engine.active == 0:
                time.sleep(0.01)
        deadline = time.monotonic() + 10
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.active == 0
        cancelled = [k for k in engine.prefix_cache.entries if len(k) < len(fmt.persona_prefix(["a."])) + 150]
        assert cancelled  # its keys were kept after fewer than 150 of the 200 tokens


def test_health_is_503_while_loading_and_a_failed_load_says_why(tokenizer, fmt):
    release = threading.Event()
    model = build_gpt2(tokenizer, n_layer=1, n_embd=16, n_head=1, n_positions=128)

    def slow_loader():
        release.wait(30)
        return model, fmt

    app = create_app(ServerSettings(precision="no", max_context=128), loader=slow_loader)
    live = LiveServer(app)
    live.thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                loading = httpx.get(live.url + "/health")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        early = httpx.post(live.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                                    "persona": ["a."]})
        assert early.status_code == 503 and early.headers["retry-after"] and error_of(early)
        release.set()
        while httpx.get(live.url + "/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(live.url + "/health").json()["status"] == "ok"
    finally:
        release.set()
        live.__exit__()

    def broken():
        raise OSError("no such checkpoint")

    failed = LiveServer(create_app(ServerSettings(), loader=broken))
    failed.thread.start()
    try:
        deadline, health = time.monotonic() + 30, None
        while time.monotonic() < deadline:
            try:
                health = httpx.get(failed.url + "/health")
                if health.json()["status"] == "error":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        assert health.status_code == 503 and "no such checkpoint" in health.json()["error"]
    finally:
        failed.__exit__()


def test_cors_only_for_the_origins_given(tokenizer, fmt):
    model = build_gpt2(tokenizer, n_layer=1, n_embd=16, n_head=1, n_positions=128)
    settings = ServerSettings(precision="no", max_context=128, cors_origins=["http://app.example"])
    with LiveServer(create_app(settings, loader=lambda: (model, fmt))) as live:
        ok = httpx.options(live.url + "/v1/chat/completions", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST"})
        assert ok.headers.get("access-control-allow-origin") == "http://app.example"
        other = httpx.options(live.url + "/v1/chat/completions", headers={
            "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers
