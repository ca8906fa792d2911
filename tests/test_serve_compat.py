"""What plain OpenAI clients send, and what a person running the server sees (issue 25's second walk)."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from personagpt.models.load import build_gpt2
from personagpt.serve import ServerSettings, create_app
from personagpt.serve.completions import Reply
from personagpt.serve.metrics import Metrics

from conftest import LiveServer, free_port

LOG: list[str] = []
READY: list[dict] = []


@pytest.fixture(scope="module")
def server(tokenizer, fmt):
    model = build_gpt2(tokenizer, n_layer=2, n_embd=32, n_head=2, n_positions=256)
    app = create_app(ServerSettings(precision="no", max_batch=4, max_context=256), loader=lambda: (model, fmt),
                     on_ready=READY.append, access_log=LOG.append)
    with LiveServer(app) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_a_plain_client_gets_a_persona_that_lasts_the_conversation(client, server):
    first = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi! what do you do?"}],
                                           max_tokens=6, seed=1)
    persona = first.model_extra["persona"]
    assert persona and persona in server.app.state.personagpt.personas  # the packaged list
    follow_up = client.chat.completions.create(model="m", max_tokens=6, messages=[
        {"role": "user", "content": "hi! what do you do?"},
        {"role": "assistant", "content": first.choices[0].message.content or "ok."},
        {"role": "user", "content": "cool, and your hobbies?"}])
    assert follow_up.model_extra["persona"] == persona  # same conversation, same bot
    other = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "good evening."}],
                                           max_tokens=4)
    given = client.chat.completions.create(model="m", max_tokens=4, messages=[
        {"role": "system", "content": "i like dogs."}, {"role": "user", "content": "hi"}])
    assert given.model_extra["persona"] == ["i like dogs."]
    assert other.model_extra["persona"] != persona or len(server.app.state.personagpt.personas) == 1
    assert READY and READY[0]["max_batch"] == 4 and READY[0]["precision"] == "float32"


def test_max_completion_tokens_is_honoured(client):
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                           max_completion_tokens=3, extra_body={"min_tokens": 3})
    assert reply.usage.completion_tokens == 3 and reply.choices[0].finish_reason == "length"
    both = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                          max_completion_tokens=2, extra_body={"min_tokens": 2})
    assert both.usage.completion_tokens == 2


def test_text_parts_and_the_developer_role(client):
    plain = client.chat.completions.create(model="m", temperature=0, max_tokens=6, messages=[
        {"role": "system", "content": "i like dogs."}, {"role": "user", "content": "hi there"}])
    parts = client.chat.completions.create(model="m", temperature=0, max_tokens=6, messages=[
        {"role": "developer", "content": [{"type": "text", "text": "i like dogs."}]},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]}])
    assert parts.choices[0].message.content == plain.choices[0].message.content


def test_logprobs_whole_and_streamed(client):
    kwargs = dict(model="m", temperature=0, max_tokens=5, logprobs=True, top_logprobs=3,
                  messages=[{"role": "system", "content": "i like dogs."}, {"role": "user", "content": "hi"}],
                  extra_body={"min_tokens": 5})
    whole = client.chat.completions.create(**kwargs)
    content = whole.choices[0].logprobs.content
    assert len(content) == 5
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob >= item.logprob - 1e-5
        assert bytes(item.bytes).decode() == item.token
    streamed = [c for chunk in client.chat.completions.create(stream=True, **kwargs)
                if chunk.choices and chunk.choices[0].logprobs for c in chunk.choices[0].logprobs.content]
    assert [c.token for c in streamed] == [c.token for c in content]
    assert [round(c.logprob, 4) for c in streamed] == [round(c.logprob, 4) for c in content]


def test_text_completions_with_the_openai_client(client):
    prompt = "<|p2|>i like dogs.<|endoftext|><|sep|><|start|>hi !<|endoftext|>"
    whole = client.completions.create(model="m", prompt=prompt, max_tokens=6, temperature=0,
                                      extra_body={"min_tokens": 6})
    assert whole.object == "text_completion" and whole.usage.completion_tokens == 6
    text = whole.choices[0].text
    assert text and "<|" not in text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="m", prompt=prompt, max_tokens=6, temperature=0, stream=True, extra_body={"min_tokens": 6}))
    assert streamed == text
    echoed = client.completions.create(model="m", prompt="hello there", max_tokens=3, temperature=0, echo=True,
                                       logprobs=2)
    assert echoed.choices[0].text.startswith("hello there")
    assert len(echoed.choices[0].logprobs.tokens) == len(echoed.choices[0].logprobs.top_logprobs)
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="m", prompt="hi", max_tokens=3, best_of=3)
    assert bad.value.body["param"] == "best_of"


def error_of(response):
    assert response.status_code == 400, response.text
    return response.json()["error"]


def test_errors_name_the_field_and_say_what_to_send(server):
    url = server.url + "/v1/chat/completions"
    no_body = error_of(httpx.post(url))
    assert no_body["param"] == "body" and "JSON object" in no_body["message"] and "messages" in no_body["message"]
    text_body = error_of(httpx.post(url, content=b"hello", headers={"Content-Type": "text/plain"}))
    assert text_body["param"] == "body" and "application/json" in text_body["message"]
    no_messages = error_of(httpx.post(url, json={"model": "m"}))
    assert no_messages["param"] == "messages" and "required" in no_messages["message"]
    assert '"role": "user"' in no_messages["message"]
    empty = error_of(httpx.post(url, json={"messages": [{"role": "user", "content": ""}]}))
    assert empty["param"] == "messages[0].content" and "user's text" in empty["message"]


def test_replies_reach_people_with_natural_spacing(fmt):
    """The bot writes "i am a nurse , you ?" (the training style); the API sends "i am a nurse, you?"."""

    class Job:  # what the engine hands the reply: token ids, then done
        prompt, cached_tokens, finish_reason, logprobs, token_logprobs = [1, 2], 0, "stop", None, []
        submitted = first_token_at = finished_at = 0.0
        prefill_seconds = 0.0
        decode_seconds = 0.0

        def __init__(self, ids):
            self.ids, self.tokens = ids, []

        async def stream(self):
            for token in self.ids:
                self.tokens.append(token)
                yield token

        def cancel(self):
            pass

    ids = fmt.text("i am a nurse , do you like it ? i do !") + [fmt.eos_id]

    async def both():
        metrics = Metrics(lambda: None)
        whole = await Reply(Job(ids), fmt, [], "m", metrics).whole(type("H", (), {"is_disconnected": _never})())
        events = [e async for e in Reply(Job(ids), fmt, [], "m", metrics).events()]
        return whole, events

    whole, events = asyncio.run(both())
    assert whole["choices"][0]["message"]["content"] == "i am a nurse, do you like it? i do!"
    streamed = "".join(__import__("json").loads(e[6:])["choices"][0]["delta"].get("content", "")
                       for e in events if e.startswith("data: {"))
    assert streamed == "i am a nurse, do you like it? i do!"


async def _never():
    return False


def test_access_log_lines(client):
    LOG.clear()
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                   extra_body={"min_tokens": 3})
    list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                        stream=True, extra_body={"min_tokens": 2}))
    client.models.list()
    deadline = time.monotonic() + 10
    while len(LOG) < 3 and time.monotonic() < deadline:  # a stream's line follows its last byte
        time.sleep(0.05)
    assert LOG[0].startswith("POST /v1/chat/completions 200 ") and LOG[0].endswith(" ms 3 tokens"), LOG
    assert any(line.endswith(" ms 2 tokens") for line in LOG[1:]), LOG
    assert any(line.startswith("GET /v1/models 200 ") for line in LOG[1:]), LOG


def test_serve_says_when_it_is_ready_and_logs_requests(tiny_checkpoint):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "personagpt.cli", "serve", "--model", str(tiny_checkpoint),
                             "--port", str(port), "--precision", "no"], stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(line.startswith("Ready on") for line in lines):
            lines.append(proc.stderr.readline())
        ready = next(line for line in lines if line.startswith("Ready on"))
        assert f"http://localhost:{port}/" in ready and "precision float32" in ready and "max batch 16" in ready
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        line = proc.stderr.readline()
        assert "GET /health 200" in line and " ms" in line
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
