"""One chat completion being generated: text pieces with stop strings applied, as SSE chunks or one body."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import Request

from personagpt.generate.conversation import TextStream
from personagpt.generate.loop import Commitment
from personagpt.serve.metrics import Metrics
from personagpt.text import DisplayStream


class Envelope:
    """The identity of one completion (id, creation time, model) and the two shapes it is sent in."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model

    def chunk(self, delta: dict, finish: str | None = None, choice: dict | None = None, index: int = 0,
              **extra) -> str:
        """One server-sent ``chat.completion.chunk`` event (``choice``: more fields of the choice)."""
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": index, "delta": delta, "finish_reason": finish, **(choice or {})}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    def usage_chunk(self, usage: dict) -> dict:
        """The last chunk of a stream asked for with ``stream_options.include_usage``: no choices, the usage."""
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [], "usage": usage}

    def whole(self, content: str, finish: str, choice: dict | None = None, **extra) -> dict:
        """A ``chat.completion`` response body."""
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": finish, **(choice or {})}], **extra}


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


class BestOfNJob:
    """Best-of-N as one job for :class:`Reply`: N engine requests for one prompt are read until
    ``commit_tokens`` tokens each (0: to their ends), ``choose`` (run in a worker thread: it scores on the model)
    keeps one, the others are cancelled and the kept one streams on (its log-probabilities with it)."""

    def __init__(self, requests: list, commit_tokens: int, eos_id: int, choose) -> None:
        self.requests, self.commit_tokens, self.eos_id, self.choose = requests, commit_tokens, eos_id, choose
        self.chosen = None

    def __getattr__(self, name: str):
        """Timings, tokens and finish reason: the kept request's (the first one's before the choice)."""
        if name in ("requests", "chosen"):
            raise AttributeError(name)
        return getattr(self.chosen if self.chosen is not None else self.requests[0], name)

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel()

    async def stream(self):
        """The kept candidate's tokens, by the rule every best-of-N driver shares
        (:class:`~personagpt.generate.loop.Commitment`)."""
        commitment = Commitment(len(self.requests), self.commit_tokens, self.eos_id)
        for i, request in enumerate(self.requests):
            async for token in request.stream():
                if not commitment.take(i, token):
                    break
        row = await asyncio.to_thread(commitment.choose, self.choose)
        for i, request in enumerate(self.requests):
            if i != row:
                request.cancel()
        self.chosen = self.requests[row]
        for token in commitment.head():
            yield token
        if commitment.goes_on():
            async for token in self.chosen.stream():
                yield token


class Reply:
    """One chat completion being generated: as SSE chunks or as one response body.

    Text reaches the client with natural spacing (:class:`~personagpt.text.DisplayStream`), then stop strings
    apply. ``extra`` fields (e.g. the persona the bot spoke with) go into the response body or the final chunk.
    """

    display = True  # natural spacing for people (the raw text completion keeps the model's text)

    def __init__(self, job, fmt, stops: list[str], model: str, metrics: Metrics, goal_check=None,
                 extra: dict | None = None, http: Request | None = None) -> None:
        self.job, self.fmt, self.metrics, self.goal_check = job, fmt, metrics, goal_check
        self.scanner = StopScanner(stops)
        self.envelope = Envelope(model)
        self.extra, self.http = extra or {}, http
        self.sent_tokens = 0  # tokens whose log-probabilities went out
        self.read_tokens = 0  # tokens whose text has been taken into the pieces so far
        self.include_usage = False  # stream_options.include_usage: the usage in a last chunk of its own
        self.index = 0  # the choice's index (n > 1: see Choices)
        self.continuing = False  # the reply extends the client's last assistant message: it opens with a space

    async def pieces(self):
        """Text pieces, stop strings applied; cancels the job when the consumer goes away."""
        text, shown = TextStream(self.fmt, raw=not self.display), DisplayStream() if self.display else None
        show = shown.push if shown else (lambda piece: piece)
        lead = self.continuing  # a front end appends the reply to the message as it is: "manager." + " i am ..."
        try:
            async for token in self.job.stream():
                self.read_tokens += 1
                piece = self.scanner.feed(show(text.push(token)))
                if piece and lead:
                    piece, lead = (piece if piece[0].isspace() or piece[0] in ".,!?;:'\")" else " " + piece), False
                if piece:
                    yield piece
                if self.scanner.stopped:
                    self.job.cancel()
                    return
            piece = self.scanner.feed(show(text.flush()) + (shown.flush() if shown else ""))
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

    def logprobs(self, upto: int | None = None) -> dict | None:
        """OpenAI's ``logprobs`` object for the tokens sent since the last call (eos left out)."""
        job = self.job
        if job.logprobs is None:
            return None
        upto = len(job.token_logprobs) if upto is None else upto
        content = []
        for token, (logprob, top) in zip(job.tokens[self.sent_tokens:upto], job.token_logprobs[self.sent_tokens:upto]):
            if token != self.fmt.eos_id:
                content.append({**self._token(token, logprob),
                                "top_logprobs": [self._token(t, lp) for t, lp in top]})
        self.sent_tokens = upto
        return {"content": content}

    def _token(self, token: int, logprob: float) -> dict:
        text = self.fmt.tokenizer.decode([token])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

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
        """Extension fields of the final chunk or response: usage, timings, the persona, and for a goal whether
        the goal labeler accepts the reply as pursuing it."""
        extra = {"usage": self.usage(), "timings": self.timings(), **self.extra}
        if self.goal_check is not None:
            extra["goal_accepted"] = await asyncio.to_thread(self.goal_check, content)
        if self.http is not None:  # for the access log
            self.http.state.completion_tokens = len(self.job.tokens)
        return extra

    def _choice_extra(self, upto: int | None = None) -> dict:
        logprobs = self.logprobs(upto)
        return {} if logprobs is None else {"logprobs": logprobs}

    async def events(self):
        async for event in self.choice_events():
            yield event
        if self.include_usage:  # as OpenAI sends it: the finish chunk, then one with no choices and the usage
            yield f"data: {json.dumps(self.envelope.usage_chunk(self.usage()))}\n\n"
        yield "data: [DONE]\n\n"

    async def choice_events(self):
        """This choice's chunks: the role, the text pieces, the finish with the extension fields."""
        index = self.index
        yield self.envelope.chunk({"role": "assistant", "content": ""}, index=index)
        content = ""
        async for piece in self.pieces():
            content += piece
            yield self.envelope.chunk({"content": piece}, choice=self._choice_extra(self.read_tokens), index=index)
        self.metrics.observe(self.job)
        extra = await self.extras(content)
        if self.include_usage:  # the usage comes in a last chunk of its own (events)
            extra["usage"] = None
        yield self.envelope.chunk({}, self.finish_reason(), choice=self._choice_extra(), index=index, **extra)

    async def text(self, http: Request) -> str:
        """The whole text (stop strings applied); a client that hangs up meanwhile cancels the generation."""
        async def watch():
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
        return content

    async def whole(self, http: Request) -> dict:
        content = await self.text(http)
        return self.envelope.whole(content, self.finish_reason(), choice=self._choice_extra(),
                                   **await self.extras(content))


class Choices:
    """OpenAI's ``n`` > 1: several replies to one request, each its own job, streamed side by side as the choices
    0 .. n-1 of one completion (one id); the usage counts the prompt once and every choice's tokens."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        for i, reply in enumerate(replies):
            reply.envelope, reply.index = replies[0].envelope, i
        self.include_usage = False

    def usage(self) -> dict:
        each = [reply.usage() for reply in self.replies]
        prompt, completion = each[0]["prompt_tokens"], sum(u["completion_tokens"] for u in each)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def events(self):
        queue: asyncio.Queue = asyncio.Queue()
        for reply in self.replies:
            reply.include_usage = self.include_usage

        async def run(reply: Reply) -> None:
            try:
                async for event in reply.choice_events():
                    await queue.put(event)
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(run(reply)) for reply in self.replies]
        try:
            running = len(tasks)
            while running:
                event = await queue.get()
                if event is None:
                    running -= 1
                else:
                    yield event
            for task in tasks:
                task.result()  # a choice that failed fails the stream
        finally:
            for task in tasks:
                task.cancel()
            for reply in self.replies:
                reply.job.cancel()
        if self.include_usage:
            yield f"data: {json.dumps(self.replies[0].envelope.usage_chunk(self.usage()))}\n\n"
        yield "data: [DONE]\n\n"

    async def whole(self, http: Request) -> dict:
        bodies = await asyncio.gather(*(reply.whole(http) for reply in self.replies))
        body = bodies[0]
        body["choices"] = [dict(b["choices"][0], index=i) for i, b in enumerate(bodies)]
        body["usage"] = self.usage()
        return body


class TextReply(Reply):
    """A raw text completion (``/v1/completions``): the model's own text, in the legacy ``text_completion``
    shapes; ``echo`` puts the prompt's text in front."""

    display = False

    def __init__(self, *args, echo: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.echo = echo
        self.envelope.id = self.envelope.id.replace("chatcmpl-", "cmpl-")

    def _body(self, text: str, finish: str | None, logprobs: dict | None, **extra) -> dict:
        return {"id": self.envelope.id, "object": "text_completion", "created": self.envelope.created,
                "model": self.envelope.model,
                "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}], **extra}

    def logprobs(self, upto: int | None = None) -> dict | None:
        chat = super().logprobs(upto)
        if chat is None:
            return None
        tokens = chat["content"]
        offsets, at = [], len(self.echo)
        for item in tokens:
            offsets.append(at)
            at += len(item["token"])
        return {"tokens": [t["token"] for t in tokens], "token_logprobs": [t["logprob"] for t in tokens],
                "top_logprobs": [{a["token"]: a["logprob"] for a in t["top_logprobs"]} for t in tokens],
                "text_offset": offsets}

    async def events(self):
        if self.echo:
            yield f"data: {json.dumps(self._body(self.echo, None, None))}\n\n"
        async for piece in self.pieces():
            yield f"data: {json.dumps(self._body(piece, None, self.logprobs(self.read_tokens)))}\n\n"
        self.metrics.observe(self.job)
        extra = await self.extras("")
        yield f"data: {json.dumps(self._body('', self.finish_reason(), self.logprobs(), **extra))}\n\n"
        yield "data: [DONE]\n\n"

    async def whole(self, http: Request) -> dict:
        content = await self.text(http)
        return self._body(self.echo + content, self.finish_reason(), self.logprobs(), **await self.extras(content))


class UpstreamReply(Reply):
    """A chat completion generated by an upstream engine (``serve --upstream``): its text pieces, with our
    spacing for people, stop strings and extension fields."""

    async def pieces(self):
        shown, job = DisplayStream(), self.job
        try:
            async for text in job.texts():
                self.read_tokens += 1
                piece = self.scanner.feed(shown.push(text))
                if piece:
                    yield piece
                if self.scanner.stopped:
                    job.cancel()
                    return
            piece = self.scanner.feed(shown.flush())
            if not self.scanner.stopped:
                piece += self.scanner.flush()
            if piece:
                yield piece
        finally:
            job.cancel()

    def logprobs(self, upto: int | None = None) -> dict | None:
        return None

    def timings(self) -> dict:
        job = self.job
        return {"upstream_ms": round(1000 * ((job.finished_at or job.submitted) - job.submitted), 2)}
