"""Every error as an OpenAI-shaped body: ``{"error": {"message", "type", "param", "code"}}`` that names the field
and says what to send, never a traceback."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from personagpt.errors import PersonaGPTError
from personagpt.serve.errors import ApiError, error_body

EXAMPLES = {"/v1/chat/completions": '{"messages": [{"role": "user", "content": "hi!"}]}',
            "/v1/completions": '{"prompt": "<|p2|>i like dogs.<|endoftext|><|sep|><|start|>hi !<|endoftext|>"}',
            "/v1/selfplay": '{"turns": 4}'}


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_, error: ApiError):
        return JSONResponse(error_body(error.message, error.kind, error.param), status_code=error.status,
                            headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        message, param = explain(error.errors()[0] if error.errors() else {}, request.url.path)
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if error.status_code == 400 and str(error.detail).startswith("There was an error parsing the body"):
            # FastAPI's words for a body it cannot decode (e.g. not UTF-8): say what to send, and where
            example = EXAMPLES.get(request.url.path, "{...}")
            return JSONResponse(error_body(f"the request body could not be read as JSON text (UTF-8); send a JSON "
                                           f"object such as {example}", "invalid_request_error", "body"),
                                status_code=400)
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(error.detail), kind), status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(PersonaGPTError)
    async def user_error(_, error: PersonaGPTError):
        return JSONResponse(error_body(str(error), "invalid_request_error"), status_code=400)

    @app.exception_handler(Exception)
    async def bug(_, error: Exception):
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)


def _union_tag(part: str) -> bool:
    return part in ("str", "int", "float", "bool", "dict") or part.startswith(("list[", "function-", "tagged-union"))


def explain(first: dict, path: str) -> tuple[str, str | None]:
    """A validation error as one sentence that names the field and says what to send."""
    kind = first.get("type", "")
    example = EXAMPLES.get(path, "{...}")
    if kind == "json_invalid":
        return f"the request body is not valid JSON; send a JSON object such as {example}", "body"
    # pydantic names the member of a union it tried ("goal.str", "prompt.list[int]"): not a field a client sent
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _union_tag(str(p))]
    param = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".") or None
    if param is None:  # the body as a whole
        if kind == "missing":
            return (f"the request has no body; send a JSON object (Content-Type: application/json) such as "
                    f"{example}"), "body"
        return (f"the request body must be a JSON object (Content-Type: application/json) such as {example}",
                "body")
    if kind == "missing":
        what = {"messages": 'the conversation, e.g. [{"role": "user", "content": "hi!"}]',
                "role": "system, user or assistant", "content": "the message's text", "prompt": "the text to "
                "continue"}.get(loc[-1], "a value")
        return f"{param} is required: send {what}", param
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return f"{param}: {message}", param
