"""One chat completion being generated: text pieces with stop strings applied, as SSE chunks or one body."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import Request

from personagpt.generation import TextStream
from personagpt.serve.metrics import Metrics


class Envelope:
    """The identity of one completion (id, creation time, model) and the two shapes it is sent in."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model

    def chunk(self, delta: dict, finish: str | None = None, **extra) -> str:
        """One server-sent ``chat.completion.chunk`` event."""
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    def whole(self, content: str, finish: str, **extra) -> dict:
        """A ``chat.completion`` response body."""
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": finish}], **extra}


def cut_at_stops(text: str, stops: list[str]) -> str:
    """A whole reply cut at its first stop string."""
    scanner = StopScanner(stops)
    kept = scanner.feed(text)
    return kept if scanner.stopped else kept + scanner.flush()


class StopScanner:
    """Cuts the reply at the first stop string, holding back text that may be the start of one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.held, self.stopped = stops, "", False

    def feed(self, piece: str) -> str:
        text = self.held + piece
        hits = [text.find(s) for s in self.stops if s in text]
        if hits:
            self.stopped, self.held = True, ""
            return text[: min(hits)]
        keep = max((len(s) - 1 for s in self.stops), default=0)
        keep = max((k for k in range(keep, 0, -1) if any(s.startswith(text[-k:]) for s in self.stops)), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


class Reply:
    """One chat completion being generated: as SSE chunks or as one response body."""

    def __init__(self, job, fmt, stops: list[str], model: str, metrics: Metrics, goal_check=None) -> None:
        self.job, self.fmt, self.metrics, self.goal_check = job, fmt, metrics, goal_check
        self.scanner = StopScanner(stops)
        self.envelope = Envelope(model)

    async def pieces(self):
        """Text pieces, stop strings applied; cancels the job when the consumer goes away."""
        text = TextStream(self.fmt)
        try:
            async for token in self.job.stream():
                piece = self.scanner.feed(text.push(token))
                if piece:
                    yield piece
                if self.scanner.stopped:
                    self.job.cancel()
                    return
            piece = self.scanner.feed(text.flush())
            if not self.scanner.stopped:
                piece += self.scanner.flush()
            if piece:
                yield piece
        finally:
            self.job.cancel()

    def finish_reason(self) -> str:
        return "length" if self.job.finish_reason == "length" and not self.scanner.stopped else "stop"

    def usage(self) -> dict:
        job = self.job
        return {"prompt_tokens": len(job.prompt), "completion_tokens": len(job.tokens),
                "total_tokens": len(job.prompt) + len(job.tokens)}

    def timings(self) -> dict:
        """As llama.cpp's server reports them: prompt tokens computed and reused, decoding speed."""
        job = self.job
        decoded = max(len(job.tokens) - 1, 0)
        return {"prompt_n": len(job.prompt) - job.cached_tokens, "cache_n": job.cached_tokens,
                "prompt_ms": round(1000 * job.prefill_seconds, 2), "predicted_n": len(job.tokens),
                "predicted_ms": round(1000 * job.decode_seconds, 2),
                "predicted_per_second": round(decoded / job.decode_seconds, 2) if job.decode_seconds else None,
                "queue_ms": round(1000 * ((job.first_token_at or job.submitted) - job.submitted - job.prefill_seconds), 2)}

    async def extras(self, content: str) -> dict:
        """Extension fields of the final chunk or response: usage, timings, and for a goal whether the goal
        labeler accepts the reply as pursuing it."""
        extra = {"usage": self.usage(), "timings": self.timings()}
        if self.goal_check is not None:
            extra["goal_accepted"] = await asyncio.to_thread(self.goal_check, content)
        return extra

    async def events(self):
        yield self.envelope.chunk({"role": "assistant", "content": ""})
        content = ""
        async for piece in self.pieces():
            content += piece
            yield self.envelope.chunk({"content": piece})
        self.metrics.observe(self.job)
        yield self.envelope.chunk({}, self.finish_reason(), **await self.extras(content))
        yield "data: [DONE]\n\n"

    async def whole(self, http: Request) -> dict:
        async def watch():  # a client that hangs up cancels its generation
            while True:
                await asyncio.sleep(0.2)
                if await http.is_disconnected():
                    self.job.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            content = "".join([piece async for piece in self.pieces()])
        finally:
            watcher.cancel()
        self.metrics.observe(self.job)
        return self.envelope.whole(content, self.finish_reason(), **await self.extras(content))
