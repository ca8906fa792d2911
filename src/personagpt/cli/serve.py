"""``personagpt serve``: the OpenAI-compatible HTTP server (and the chat page)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from personagpt.cli.common import UserError, friendly_errors, quiet_libraries
from personagpt.cli.options import DeviceOpt, ModelOpt, PersonasPathOpt


def serve(
    model: ModelOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only; 0.0.0.0: everyone who "
                                           "can reach it, so set --api-key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", envvar="PERSONAGPT_API_KEY",
        help="Require 'Authorization: Bearer KEY' on every endpoint but /health and the page.")] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        "--cors-origin", help="Allow browsers on this origin to call the API (repeatable; none by default).")] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Conversations decoded together (1: no batching).")] = 16,
    max_queue: Annotated[int, typer.Option(min=0, help="Requests that may wait for a slot; more get 503.")] = 64,
    max_context: Annotated[int, typer.Option(min=64, help="Longest prompt + reply per conversation, in tokens; "
                                                          "older turns are dropped to fit.")] = 1024,
    prefix_cache_tokens: Annotated[int, typer.Option(min=0, help="Tokens of finished conversations kept for "
                                                                 "reuse by their next turn.")] = 8192,
    precision: Annotated[str, typer.Option(help="auto (bf16 weights where the CPU is fast at bf16) or no (fp32).")]
    = "auto",
    personas_path: PersonasPathOpt = None,
    device: DeviceOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No access log (one line per request); the "
                                                              "start-up lines and errors still show.")] = False,
    upstream: Annotated[Optional[str], typer.Option(
        "--upstream", metavar="URL", help="Generate with an OpenAI-compatible engine serving a PersonaGPT export "
        "(vLLM, llama.cpp's llama-server, Ollama), e.g. http://localhost:8001/v1; this server adds the persona and "
        "goal API, the page and self-play in front of it. No local model is loaded.")] = None,
    upstream_model: Annotated[Optional[str], typer.Option(
        "--upstream-model", metavar="NAME", help="The model name the upstream serves (default: the first one "
        "its /v1/models lists).")] = None,
) -> None:
    """Serve the bot over HTTP: OpenAI-compatible /v1/chat/completions (with persona and goal extensions,
    streaming), /v1/goals, /v1/personas/random, /v1/selfplay, /health, /metrics, API docs at /docs.

    Concurrent conversations are decoded together, and a conversation's next turn reuses its cached prefix.
    Ctrl-C stops the server after cancelling what is running.
    """
    with friendly_errors():
        import uvicorn

        from personagpt.models.heap import return_freed_memory
        from personagpt.serve import ServerSettings, create_app

        if upstream is not None:
            if model is not None:
                raise UserError("--model and --upstream exclude each other: the upstream engine holds the model")
            if not upstream.startswith(("http://", "https://")):
                raise UserError(f"--upstream must be an http(s) URL, e.g. http://localhost:8001/v1; not {upstream!r}")
        if upstream_model is not None and upstream is None:
            raise UserError("--upstream-model names the model of an --upstream engine; give --upstream too")
        if precision not in ("auto", "no", "bf16"):
            raise UserError("--precision must be auto, no or bf16")
        if personas_path is not None and not Path(personas_path).is_file():
            raise UserError(f"{personas_path}: no such file (--personas-path)")
        quiet_libraries()
        return_freed_memory()  # see personagpt.models.heap: a long-running server's memory stays flat
        settings = ServerSettings(model=model, device=device, precision=precision, max_batch=max_batch,
                                  max_queue=max_queue, max_context=max_context,
                                  prefix_cache_tokens=prefix_cache_tokens, api_key=api_key,
                                  cors_origins=list(cors_origin or []), personas_path=personas_path,
                                  upstream=upstream, upstream_model=upstream_model)
        shown = "localhost" if host in ("127.0.0.1", "::1") else host

        def ready(health: dict) -> None:
            typer.echo(f"Ready on http://{shown}:{port}/ - model {health['model']}, precision "
                       f"{health['precision']}, max batch {health['max_batch']}, context {health['max_context']} "
                       f"tokens; decoding: {health['decoding']}.", err=True)

        def access(line: str) -> None:
            typer.echo(f"{time.strftime('%H:%M:%S')} {line}", err=True)

        app = create_app(settings, on_ready=ready, access_log=None if quiet else access)
        loading = f"generating with {upstream}" if upstream else "Loading the model; /health answers 200 once it is ready"
        typer.echo(f"PersonaGPT server on http://{shown}:{port}/ (API docs: /docs). {loading}. Ctrl-C stops.",
                   err=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")
