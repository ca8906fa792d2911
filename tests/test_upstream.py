"""``serve --upstream``: our API in front of an OpenAI-compatible engine, tested against a small fake engine on a
loopback port (what it receives, what our clients get back, and how its failures reach them)."""

import asyncio
import json

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from typer.testing import CliRunner

from personagpt.cli import app as cli
from personagpt.serve import ServerSettings, create_app

from conftest import LiveServer, free_port

REPLY = ["yes", " , i have", " a dog", " named max ."]


def fake_engine(seen: list, mode: dict) -> FastAPI:
    """An engine serving "fake-export": it records request bodies and answers in OpenAI's shapes."""
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "fake-export", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        seen.append(body)
        if mode.get("fail"):
            return JSONResponse({"error": {"message": "the engine ran out of memory"}}, status_code=500)
        if mode.get("slow"):
            await asyncio.sleep(3)

        async def events():
            for piece in REPLY:
                chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece},
                                                                         "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            yield f"data: {json.dumps(done)}\n\n"
            usage = {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29}}
            yield f"data: {json.dumps(usage)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        seen.append(body)
        return {"object": "text_completion", "choices": [{"index": 0, "text": " i am a nurse .",
                                                          "finish_reason": "stop"}]}

    return app


@pytest.fixture
def fronted():
    seen, mode = [], {}
    with LiveServer(fake_engine(seen, mode)) as upstream:
        settings = ServerSettings(upstream=upstream.url + "/v1", upstream_timeout=1.0)
        with LiveServer(create_app(settings)) as ours:
            yield ours, seen, mode


def test_persona_and_goal_become_the_templates_system_lines(fronted):
    ours, seen, _ = fronted
    client = openai.OpenAI(base_url=ours.url + "/v1", api_key="unused")
    reply = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "Do you have a dog?"}],
                                           extra_body={"persona": ["i have a dog.", "i work as a nurse."]})
    assert reply.choices[0].message.content == "yes, i have a dog named max."  # spaced for people
    assert reply.usage.completion_tokens == 9 and reply.model_extra["persona"] == ["i have a dog.", "i work as a nurse."]
    sent = seen[-1]
    assert sent["model"] == "fake-export" and sent["stream"] is True
    assert sent["messages"] == [{"role": "system", "content": "i have a dog.\ni work as a nurse."},
                                {"role": "user", "content": "do you have a dog ?"}]  # the model's own style
    client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}],
                                   extra_body={"goal": "ask about pets."})
    assert seen[-1]["messages"][0] == {"role": "system", "content": "goal: ask about pets."}


def test_streaming_passes_through(fronted):
    ours, _, _ = fronted
    client = openai.OpenAI(base_url=ours.url + "/v1", api_key="unused")
    stream = client.chat.completions.create(model="any", stream=True, messages=[{"role": "user", "content": "hi"}],
                                            extra_body={"persona": ["i have a dog."]})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "yes, i have a dog named max." and len([c for c in chunks if c.choices and
                                                           c.choices[0].delta.content]) > 1
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_what_needs_the_local_engine_says_so(fronted):
    ours, _, _ = fronted
    body = {"messages": [{"role": "user", "content": "hi"}]}
    for extra, param in (({"candidates": 3}, "candidates"), ({"logprobs": True}, "logprobs")):
        answer = httpx.post(ours.url + "/v1/chat/completions", json=body | extra)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param
        assert "upstream" in answer.json()["error"]["message"]


def test_upstream_failures_are_our_errors(fronted):
    ours, _, mode = fronted
    body = {"messages": [{"role": "user", "content": "hi"}]}
    mode["fail"] = True
    answer = httpx.post(ours.url + "/v1/chat/completions", json=body)
    assert answer.status_code == 502 and "ran out of memory" in answer.json()["error"]["message"]
    mode.pop("fail")
    mode["slow"] = True
    answer = httpx.post(ours.url + "/v1/chat/completions", json=body, timeout=30)
    assert answer.status_code == 504 and answer.json()["error"]["type"] == "server_error"


def test_an_unreachable_upstream_is_a_502_and_health_says_so():
    closed = f"http://127.0.0.1:{free_port()}/v1"
    app = create_app(ServerSettings(upstream=closed))
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        for _ in range(50):  # the settings load in a thread
            if app.state.personagpt.upstream is not None:
                break
            asyncio.run(asyncio.sleep(0.05))
        health = client.get("/health")
        assert health.status_code == 503 and "cannot be reached" in health.json()["error"]
        answer = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 502 and "cannot be reached" in answer.json()["error"]["message"]


def test_selfplay_and_raw_completions_go_upstream(fronted):
    ours, seen, _ = fronted
    played = httpx.post(ours.url + "/v1/selfplay", json={"persona": ["i have a dog."], "turns": 2,
                                                          "goals": ["ask about pets."], "policy": "fixed"},
                        timeout=30).json()
    assert len(played["turns"]) == 4 and played["actions"] == ["ask about pets.", None, "ask about pets.", None]
    interviewer, persona = seen[-4]["messages"], seen[-3]["messages"]
    assert interviewer == [{"role": "system", "content": "goal: ask about pets."}]
    assert persona[0] == {"role": "system", "content": "i have a dog."} and persona[1]["role"] == "user"
    raw = httpx.post(ours.url + "/v1/completions", json={"prompt": "hello", "max_tokens": 5}).json()
    assert raw["choices"][0]["text"] == " i am a nurse ." and seen[-1]["model"] == "fake-export"


def test_the_serve_command_checks_its_upstream_flags():
    runner = CliRunner()
    both = runner.invoke(cli, ["serve", "--model", "x", "--upstream", "http://localhost:1/v1"])
    assert both.exit_code != 0 and "exclude each other" in both.output
    bad = runner.invoke(cli, ["serve", "--upstream", "localhost:8001"])
    assert bad.exit_code != 0 and "http(s) URL" in bad.output
    lone = runner.invoke(cli, ["serve", "--upstream-model", "m"])
    assert lone.exit_code != 0 and "give --upstream too" in lone.output
