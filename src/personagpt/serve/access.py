"""One access-log line per request: method, path, status, milliseconds and, for generations, tokens."""

from __future__ import annotations

import time
from collections.abc import Callable


class AccessLog:
    """ASGI middleware that calls ``write(line)`` once a response has been sent in full (a stream: at its end).

    Handlers that generate put ``completion_tokens`` into the request's state (``request.state``)."""

    def __init__(self, app, write: Callable[[str], None]) -> None:
        self.app, self.write = app, write

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = {"code": 500, "logged": False}

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._log(scope, status, started, state)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            self._log(scope, status, started, state)  # a client that went away mid-stream is logged too

    def _log(self, scope, status: dict, started: float, state: dict) -> None:
        if status["logged"]:
            return
        status["logged"] = True
        ms = 1000 * (time.perf_counter() - started)
        tokens = state.get("completion_tokens")
        line = f'{scope["method"]} {scope["path"]} {status["code"]} {ms:.0f} ms'
        self.write(line + (f" {tokens} tokens" if tokens is not None else ""))
