"""ASGI middleware in front of the app: the API key, the body size limit, and request counting."""

from __future__ import annotations

import hmac
import json

from personagpt.serve.errors import ApiError, error_body
from personagpt.serve.metrics import Metrics


class Guard:
    """ASGI middleware: the API key (every path but /health, the page and the API docs), the body size limit,
    request counts."""

    @staticmethod
    def is_open(path: str) -> bool:
        return path in ("/health", "/", "/docs", "/openapi.json") or path.startswith(("/static/", "/docs-assets/"))

    def __init__(self, app, api_key: str | None, max_body: int, metrics: Metrics) -> None:
        self.app, self.api_key, self.max_body, self.metrics = app, api_key, max_body, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        status = {"code": 500}

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            headers = dict(scope["headers"])
            # a browser's CORS preflight (OPTIONS) never carries the key: answering it reveals nothing
            if self.api_key and not self.is_open(path) and scope.get("method") != "OPTIONS":
                given = headers.get(b"authorization", b"").decode("latin-1")
                token = given[7:] if given.startswith("Bearer ") else ""
                if not hmac.compare_digest(token.encode(), self.api_key.encode()):
                    return await _reply(send_counted, 401, error_body(
                        "a valid API key is required (Authorization: Bearer KEY)", "authentication_error"))
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                return await _reply(send_counted, 413, error_body(
                    f"the request body is larger than {self.max_body} bytes", "invalid_request_error"))
            await self.app(scope, _limited(receive, self.max_body), send_counted)
        finally:
            self.metrics.count(path, status["code"])


def _limited(receive, limit: int):
    """Refuse chunked bodies that grow past ``limit`` (no Content-Length to check up front)."""
    seen = {"bytes": 0}

    async def wrapped():
        message = await receive()
        if message["type"] == "http.request":
            seen["bytes"] += len(message.get("body", b""))
            if seen["bytes"] > limit:
                raise ApiError(413, f"the request body is larger than {limit} bytes")
        return message

    return wrapped


async def _reply(send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
