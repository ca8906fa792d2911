"""``serve --upstream URL``: our API, page and self-play in front of an OpenAI-compatible engine (vLLM, llama.cpp's
server, Ollama) that serves a PersonaGPT export.

The export's chat template reads persona facts from system lines and a goal from a ``goal: TEXT`` system line
(README, "Export"), so a request's ``persona`` and ``goal`` become those lines and the turns go as they are.
Replies stream through as the upstream sends them, with our extensions added (``persona``, ``goal_accepted``).
What needs our own engine says so with a 400: best-of-N (it scores candidates with the model's probabilities) and
log-probabilities. An upstream that cannot be reached, fails or times out gives a 502, 503 or 504 in our error
shape, never a traceback.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import httpx

from personagpt.control.selfplay import Transcript
from personagpt.serve.errors import ApiError
from personagpt.text import for_people


class UpstreamJob:
    """One upstream completion as the job a :class:`~personagpt.serve.completions.Reply` reads: text pieces
    instead of token ids, and the counts the upstream reports."""

    cached_tokens = 0

    def __init__(self, response: httpx.Response, url: str) -> None:
        self.response, self.url = response, url
        self.submitted = time.perf_counter()
        self.first_token_at = self.finished_at = None
        self.finish_reason: str | None = None
        self.prompt: list[int] = []  # only counts are known: [0] * prompt_tokens once the upstream says
        self.tokens: list[int] = []
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    async def texts(self) -> AsyncIterator[str]:
        """The reply's text pieces, from the upstream's server-sent events."""
        try:
            async for line in self.response.aiter_lines():
                if self.cancelled:
                    break
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise ApiError(502, f"the upstream engine failed mid-reply: {_message(event)}",
                                   kind="server_error")
                self._count(event.get("usage"))
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    self.finish_reason = choice.get("finish_reason") or self.finish_reason
                    if piece:
                        self.first_token_at = self.first_token_at or time.perf_counter()
                        yield piece
        except httpx.TimeoutException:
            raise ApiError(504, f"the upstream engine at {self.url} stopped answering mid-reply",
                           kind="server_error") from None
        except httpx.HTTPError as error:
            raise ApiError(502, f"the upstream engine at {self.url} broke off: {error}", kind="server_error") from None
        finally:
            self.finished_at = time.perf_counter()
            await self.response.aclose()

    def _count(self, usage: dict | None) -> None:
        if usage:
            self.prompt = [0] * int(usage.get("prompt_tokens") or 0)
            self.tokens = [0] * int(usage.get("completion_tokens") or 0)


def _message(body) -> str:
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error)
    return str(body)


class Upstream:
    """An OpenAI-compatible engine at ``url`` (with or without ``/v1``) serving ``model`` (None: the first model
    its ``/v1/models`` lists)."""

    def __init__(self, url: str, model: str | None = None, timeout: float = 120.0,
                 api_key: str | None = None) -> None:
        base = url.rstrip("/")
        self.url = base if base.endswith("/v1") else base + "/v1"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0), headers=headers)

    async def close(self) -> None:
        await self.client.aclose()

    async def _request(self, method: str, path: str, stream: bool = False, **kwargs) -> httpx.Response:
        """A request to the upstream; failures become our errors (502 unreachable or failing, 503 busy, 504
        timed out)."""
        try:
            request = self.client.build_request(method, self.url + path, **kwargs)
            response = await self.client.send(request, stream=stream)
        except httpx.TimeoutException:
            raise ApiError(504, f"the upstream engine at {self.url} did not answer in time", kind="server_error",
                           headers={"Retry-After": "5"}) from None
        except httpx.HTTPError as error:
            raise ApiError(502, f"the upstream engine at {self.url} cannot be reached ({type(error).__name__}: "
                                f"{error})", kind="server_error", headers={"Retry-After": "5"}) from None
        if response.status_code >= 400:
            body = (await response.aread()).decode("utf-8", "replace")
            await response.aclose()
            try:
                detail = _message(json.loads(body))
            except ValueError:
                detail = body[:300]
            status = 503 if response.status_code in (429, 503) else 502
            raise ApiError(status, f"the upstream engine answered {response.status_code}: {detail}",
                           kind="server_error", headers={"Retry-After": "1"} if status == 503 else None)
        return response

    async def model_name(self) -> str:
        """The served model's name (asked once)."""
        if self.model is None:
            body = (await self._request("GET", "/models")).json()
            models = [m.get("id") for m in body.get("data", []) if m.get("id")]
            if not models:
                raise ApiError(502, f"the upstream engine at {self.url} lists no models", kind="server_error")
            self.model = models[0]
        return self.model

    async def health(self) -> dict:
        return {"status": "ok", "upstream": self.url, "model": await self.model_name(),
                "decoding": f"upstream engine at {self.url}"}

    @staticmethod
    def messages(facts: list[str], goal: str | None, turns: list[str]) -> list[dict]:
        """The chat template's convention: persona facts and the goal as system lines, then the turns."""
        system = list(facts) + ([f"goal: {goal}"] if goal else [])
        roles = ["user", "assistant"] if len(turns) % 2 else ["assistant", "user"]  # the last turn is the user's
        dialogue = [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
        return ([{"role": "system", "content": "\n".join(system)}] if system else []) + dialogue

    def _sampling(self, cfg) -> dict:
        body = {"max_tokens": cfg.max_new_tokens}
        if cfg.do_sample:
            body |= {"temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k}
        else:
            body["temperature"] = 0
        if cfg.repetition_penalty != 1.0:
            body["repetition_penalty"] = cfg.repetition_penalty
        if cfg.min_new_tokens:
            body["min_tokens"] = cfg.min_new_tokens
        return body

    async def chat(self, messages: list[dict], cfg, seed: int | None = None) -> UpstreamJob:
        """Start a streamed completion (the connection is made, and its status checked, before returning)."""
        body = {"model": await self.model_name(), "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}, **self._sampling(cfg)}
        if seed is not None:
            body["seed"] = seed
        return UpstreamJob(await self._request("POST", "/chat/completions", stream=True, json=body), self.url)

    async def reply(self, messages: list[dict], cfg, seed: int | None = None) -> str:
        """A whole reply's text."""
        job = await self.chat(messages, cfg, seed)
        return "".join([piece async for piece in job.texts()])

    async def forward(self, path: str, body: dict) -> httpx.Response:
        """A request passed through as it is (raw text completions), streamed back."""
        return await self._request("POST", path, stream=True, json=body | {"model": await self.model_name()})


async def selfplay_events(upstream: Upstream, persona: list[str], policy, turns: int, cfg,
                          seed: int | None = None) -> AsyncIterator[dict]:
    """Self-play through the upstream engine: the interviewer (goal lines, no persona) and the persona bot take
    turns, each turn one completion over the transcript so far. Yields the events of ``/v1/selfplay``."""
    transcript = Transcript(p2_facts=list(persona))
    for t in range(turns):
        goal = policy.next_goal(transcript)
        for role, facts, action in (("interviewer", [], goal), ("persona", persona, None)):
            turn_seed = None if seed is None else seed * 1000 + len(transcript.turns)
            text = (await upstream.reply(upstream.messages(facts, action, transcript.turns), cfg, turn_seed)).strip()
            transcript.turns.append(text)
            transcript.actions.append(action)
            yield {"turn": t + 1, "role": role, "goal": action, "text": for_people(text)}
    shown = transcript.to_json()
    shown["turns"] = [for_people(t) for t in shown["turns"]]
    yield {"transcript": shown}
