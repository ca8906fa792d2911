"""The HTTP server: an OpenAI-compatible chat API with persona and goal extensions, over one Engine.

The API is stateless: every request carries the whole conversation (persona, goal, messages), so any replica can
serve any turn; the engine's prefix cache makes resending the history cheap. The routes are in ``routes.py``,
what the app holds in ``state.py``, the error bodies in ``handlers.py``.
"""

from __future__ import annotations

import threading

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from personagpt.serve.access import AccessLog
from personagpt.serve.docs import mount_docs
from personagpt.serve.guard import Guard
from personagpt.serve.handlers import add_error_handlers
from personagpt.serve.page import mount_page
from personagpt.serve.routes import router
from personagpt.serve.schemas import MAX_REPLY_TOKENS
from personagpt.serve.state import AppState, ServerSettings

__all__ = ["API_DESCRIPTION", "ServerSettings", "create_app"]

API_DESCRIPTION = f"""Persona-conditioned, controllable chat: an OpenAI-compatible API over one persona bot.

* `POST /v1/chat/completions`: the bot's next reply. Its persona comes from the system message (one fact per line
  or sentence) or the `persona` field (up to 5 facts); without either it gets one from the packaged Persona-Chat
  list, the same for every turn of a conversation (chosen by its first message), named in the response's
  `persona` field. A `goal` (an action code's text, its index 0-10, or free text) steers the reply. Replies use
  natural spacing; what you send back is converted to the model's training style. A yes/no question about the
  persona (or about a thing of the same kind it does not have) is answered as its facts say, yes or no first
  (`consistent_answers`, `yes_no_first`); a goal is followed with guidance 1.5 (`goal_guidance`). `candidates: N`
  (best-of-N) samples N replies side by side and streams the best after `commit_tokens` (8) tokens; `n: N` returns
  N replies.
* `POST /v1/completions`: raw text completion of a prompt in the model's own format (special tokens such as
  `<|p2|>` are read as such).
* What chat front ends send is taken as meant: system messages anywhere give persona facts (the first five
  are used; the response's `persona` says which); consecutive messages of one role are one turn; a last assistant
  message is continued (the reply extends it); `tools` offered with `tool_choice` absent, "auto" or "none" are
  ignored (the model answers in plain text; "required" or a named function is a 400); a `max_tokens` above
  {MAX_REPLY_TOKENS} is clamped to it (`max_tokens_used` in the response; the reply ends with `finish_reason`
  "length" when cut).
* Limits: prompt plus reply within the server's context (`--max-context`, 1024 by default; older turns are dropped
  to fit); `n` = 1; `top_logprobs` at most 20; `candidates` (best-of-N) at most 8; request bodies up to 1 MiB;
  `logit_bias` and response formats are refused with a 400 naming the field rather than silently
  ignored.
* Errors are OpenAI-shaped: `{{"error": {{"message", "type", "param", "code"}}}}`; 503 with `Retry-After` while
  the model loads or the queue is full."""


def create_app(settings: ServerSettings | None = None, loader=None, on_ready=None, access_log=None) -> FastAPI:
    """The FastAPI app. ``loader()`` returns ``(model, PromptFormat)`` (default: :func:`load_chat_model` of
    ``settings.model``); it runs in a background thread, and ``/health`` answers 503 until it is done. Then
    ``on_ready(health)`` is called with what ``/health`` reports (model, precision, max batch). ``access_log(line)``
    gets one line per request."""
    settings = settings or ServerSettings()
    state = AppState(settings)

    async def lifespan(app):
        threading.Thread(target=state.load, args=(loader, on_ready), name="personagpt-load", daemon=True).start()
        yield
        if state.engine is not None:
            state.engine.close()
        if state.upstream is not None:
            await state.upstream.close()

    app = FastAPI(title="PersonaGPT", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=API_DESCRIPTION)
    app.state.personagpt = state
    app.add_middleware(Guard, api_key=settings.api_key, max_body=settings.max_body_bytes, metrics=state.metrics)
    if access_log is not None:
        app.add_middleware(AccessLog, write=access_log)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    add_error_handlers(app)
    app.include_router(router)
    mount_docs(app)  # /docs, offline
    mount_page(app)  # the chat page at /, when the package ships it
    return app
