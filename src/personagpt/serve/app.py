"""The HTTP server: an OpenAI-compatible chat API with persona and action-code extensions, over one Engine.

The API is stateless: every request carries the whole conversation (persona, goal, messages), so any replica can
serve any turn; the engine's prefix cache makes resending the history cheap.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from personagpt.generate.engine import Engine, QueueFullError
from personagpt.errors import PersonaGPTError
from personagpt.format import DEFAULT_ACTIONS
from personagpt.generate.conversation import Conversation
from personagpt.generate.sampling import SamplingConfig
from personagpt.serve.access import AccessLog
from personagpt.generate.best_of_n import RerankWeights
from personagpt.serve.completions import BestOfNJob, Reply, TextReply, UpstreamReply
from personagpt.serve.errors import ApiError, error_body
from personagpt.serve.guard import Guard
from personagpt.serve.metrics import Metrics
from personagpt.serve.requests import (conversation_of, policy_of, refuse_local_only, refuse_unsupported,
                                       sampling_of)
from personagpt.serve.schemas import MAX_REPLY_TOKENS, ChatRequest, CompletionRequest, SelfPlayRequest
from personagpt.text import for_people

API_DESCRIPTION = f"""Persona-conditioned, controllable chat: an OpenAI-compatible API over one persona bot.

* `POST /v1/chat/completions`: the bot's next reply. Its persona comes from the system message (one fact per line
  or sentence) or the `persona` field (up to 5 facts); without either it gets one from the packaged Persona-Chat
  list, the same for every turn of a conversation (chosen by its first message), named in the response's
  `persona` field. A `goal` (an action code's text, its index 0-10, or free text) steers the reply. Replies use
  natural spacing; what you send back is converted to the model's training style. Replies are best-of-4 by
  default (`candidates`): 4 samples side by side, the best for persona consistency and the goal chosen after
  `commit_tokens` (8) tokens, then streamed; `candidates: 1` samples once.
* `POST /v1/completions`: raw text completion of a prompt in the model's own format (special tokens such as
  `<|p2|>` are read as such).
* Limits: `max_tokens` (or `max_completion_tokens`) at most {MAX_REPLY_TOKENS}; prompt plus reply within the
  server's context (`--max-context`, 1024 by default; older turns are dropped to fit); `n` = 1; `top_logprobs` at
  most 20; `candidates` (best-of-N) at most 8; request bodies up to 1 MiB; tools, `logit_bias`, penalties and
  response formats are refused with a 400 naming the field rather than silently ignored.
* Errors are OpenAI-shaped: `{{"error": {{"message", "type", "param", "code"}}}}`; 503 with `Retry-After` while
  the model loads or the queue is full."""


@dataclass
class ServerSettings:
    """How ``personagpt serve`` runs; every field is a flag of the command."""

    model: str | None = None
    device: str | None = None
    precision: str = "auto"  # auto: bf16 weights on CPUs fast at bf16; no: fp32
    max_batch: int = 16
    max_queue: int = 64
    max_context: int = 1024
    prefix_cache_tokens: int = 8192
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 1 << 20
    personas_path: Path | None = None
    upstream: str | None = None  # an OpenAI-compatible engine's URL: it generates, we serve (serve/upstream.py)
    upstream_model: str | None = None
    upstream_timeout: float = 120.0  # seconds without an answer before a 504


class _State:
    """What the app holds: the engine once the model is loaded, or why it failed."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.upstream = None  # serve --upstream: a serve.upstream.Upstream instead of the engine
        self.model_name = "personagpt"
        self.load_error: str | None = None
        self.personas: list[list[str]] = []
        self.precision = ""
        self._labeler = None
        self._labeler_lock = threading.Lock()

    def health(self) -> dict:
        return {"status": "ok", "model": self.model_name, "precision": self.precision,
                "decoding": self.engine.fast_path.describe(), "max_batch": self.engine.max_batch,
                "max_context": self.engine.capacity}

    def goal_accepted(self, goal: str, text: str) -> bool | None:
        """Whether the goal labeler accepts ``text`` as pursuing ``goal`` (the semantic labeler when its encoder
        is installed, else the rules); None when it cannot tell."""
        from personagpt.control.goals import GoalLabeler, minilm_path

        with self._labeler_lock:
            if self._labeler is None:
                try:
                    minilm_path()
                    self._labeler = GoalLabeler(semantic=True)
                except PersonaGPTError:
                    self._labeler = GoalLabeler(semantic=False)
            try:
                return bool(self._labeler.accepts(text, goal)) if text.strip() else False
            except PersonaGPTError:
                return None


def create_app(settings: ServerSettings | None = None, loader=None, on_ready=None, access_log=None) -> FastAPI:
    """The FastAPI app. ``loader()`` returns ``(model, PromptFormat)`` (default: :func:`load_chat_model` of
    ``settings.model``); it runs in a background thread, and ``/health`` answers 503 until it is done. Then
    ``on_ready(health)`` is called with what ``/health`` reports (model, precision, max batch). ``access_log(line)``
    gets one line per request."""
    settings = settings or ServerSettings()
    state = _State()
    metrics = Metrics(lambda: state.engine)

    def load() -> None:
        try:
            from personagpt.data.dialogues import load_personas, resolve_personas_path
            from personagpt.models.load import load_chat_model
            from personagpt.models.precision import serving_model

            state.personas = load_personas(resolve_personas_path(settings.personas_path))
            if settings.upstream:
                from personagpt.serve.upstream import Upstream

                state.model_name = settings.upstream_model or "personagpt-upstream"
                state.upstream = Upstream(settings.upstream, settings.upstream_model, settings.upstream_timeout)
                if on_ready is not None:
                    on_ready({"model": f"{state.model_name} (upstream)", "precision": "the upstream's",
                              "max_batch": "the upstream's", "max_context": settings.max_context,
                              "decoding": f"the upstream engine at {state.upstream.url}"})
                return
            model, fmt = loader() if loader else load_chat_model(settings.model, device=settings.device)
            model = serving_model(model, settings.precision)
            state.model_name = Path(settings.model).name if settings.model else "personagpt-bundled"
            state.precision = str(model.dtype).removeprefix("torch.")
            state.engine = Engine(model, fmt, max_batch=settings.max_batch, max_queue=settings.max_queue,
                                  capacity=settings.max_context, prefix_cache_tokens=settings.prefix_cache_tokens)
        except Exception as error:  # reported by /health; the process stays up to say so
            state.load_error = f"{type(error).__name__}: {error}"
            return
        if on_ready is not None:
            on_ready(state.health())

    async def lifespan(app):
        threading.Thread(target=load, name="personagpt-load", daemon=True).start()
        yield
        if state.engine is not None:
            state.engine.close()
        if state.upstream is not None:
            await state.upstream.close()

    app = FastAPI(title="PersonaGPT", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=API_DESCRIPTION)
    app.state.personagpt = state
    app.add_middleware(Guard, api_key=settings.api_key, max_body=settings.max_body_bytes, metrics=metrics)
    if access_log is not None:
        app.add_middleware(AccessLog, write=access_log)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    _error_handlers(app)

    def engine() -> Engine:
        if state.engine is None:
            raise ApiError(503, "the model is still loading" if state.load_error is None else
                           f"the model failed to load: {state.load_error}", kind="server_error",
                           headers={"Retry-After": "5"})
        return state.engine

    def ready() -> None:
        """503 until the model (or the upstream's settings) is loaded."""
        if state.upstream is None:
            engine()

    def submit(eng: Engine, prompt: list[int], cfg: SamplingConfig, generator, logprobs: int | None):
        try:
            return eng.submit(prompt, cfg, generator, loop=asyncio.get_running_loop(), logprobs=logprobs)
        except QueueFullError as e:
            metrics.rejected.inc()
            raise ApiError(503, str(e), kind="server_error", headers={"Retry-After": "1"}) from None

    def submit_best_of_n(eng: Engine, prompt: list[int], cfg: SamplingConfig, conversation: Conversation):
        """The N requests of a best-of-N turn, as one job (they count against the batch like N users)."""
        try:
            requests = eng.submit_many(prompt, cfg.num_candidates, cfg, conversation.generator,
                                       loop=asyncio.get_running_loop())
        except QueueFullError as e:
            metrics.rejected.inc()
            raise ApiError(503, str(e), kind="server_error", headers={"Retry-After": "1"}) from None
        # Without the persona/goal PMI: a stateless request has no reference cache from its previous turn, so that
        # pass would re-encode the whole history in a worker thread beside the engine (16 users at best of 4: a
        # turn's p95 went to 48 s; bench/README.md, "Best replies by default"). Consistency, goal, repetition and
        # fluency cost no model pass.
        conversation.weights = RerankWeights(persona=0.0, goal=0.0)
        return BestOfNJob(requests, cfg.commit_tokens, eng.fmt.eos_id,
                          lambda replies, finished: conversation.choose(prompt, replies, finished))

    async def upstream_chat(body: ChatRequest, http: Request):
        """The chat completion generated by the upstream engine (persona and goal as the template's system
        lines)."""
        refuse_unsupported(body)
        refuse_local_only(body)
        facts, turns = conversation_of(body, state.personas)
        job = await state.upstream.chat(state.upstream.messages(facts, body.goal, turns), sampling_of(body), body.seed)
        reply = UpstreamReply(job, None, body.stop or [], state.model_name, metrics,
                              goal_check=(lambda text: state.goal_accepted(body.goal, text)) if body.goal else None,
                              extra={"persona": facts}, http=http)
        return await respond(reply, body.stream, http)

    async def respond(reply: Reply, stream: bool, http: Request):
        if stream:
            return StreamingResponse(reply.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await reply.whole(http)

    @app.get("/health", summary="200 once the model is loaded, 503 before")
    async def health():
        if state.upstream is not None:
            try:
                return await state.upstream.health()
            except ApiError as error:
                return JSONResponse({"status": "upstream unavailable", "error": error.message}, status_code=503)
        if state.engine is None:
            status = "loading" if state.load_error is None else "error"
            return JSONResponse({"status": status, "error": state.load_error}, status_code=503)
        return state.health()

    @app.get("/v1/models")
    def models():
        ready()
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": 0,
                                            "owned_by": "personagpt"}]}

    @app.get("/v1/goals", summary="The action space: the 11 action codes a goal index refers to")
    def goals():
        return {"goals": [{"index": i, "goal": g} for i, g in enumerate(DEFAULT_ACTIONS)]}

    @app.get("/v1/personas/random", summary="A random Persona-Chat training persona")
    def random_persona(seed: int | None = Query(None)):
        ready()
        if not state.personas:
            raise ApiError(404, "no personas file is available", kind="not_found_error")
        return {"persona": random.Random(seed).choice(state.personas)}

    @app.post("/v1/chat/completions", summary="A reply of the persona bot (streamed with stream=true)")
    async def chat(body: ChatRequest, http: Request):
        if state.upstream is not None:
            return await upstream_chat(body, http)
        eng = engine()
        refuse_unsupported(body)
        facts, turns = conversation_of(body, state.personas)
        cfg = sampling_of(body)
        if cfg.num_candidates > min(eng.max_batch, eng.max_queue):  # N rows must fit the batch side by side
            cfg = replace(cfg, num_candidates=min(eng.max_batch, eng.max_queue))
        busy = eng.active + eng.queue_depth + cfg.num_candidates > eng.max_batch
        if cfg.num_candidates > 1 and busy and "candidates" not in body.model_fields_set:
            cfg = replace(cfg, num_candidates=1)  # the default best-of-N uses spare rows only, never queues for them
        try:
            conversation = Conversation.from_turns(eng.model, eng.fmt, turns, persona=facts, goal=body.goal,
                                                   sampling=cfg, engine=eng, seed=body.seed)
            prompt = conversation.context_ids(cfg.max_new_tokens)
        except PersonaGPTError as e:
            raise ApiError(400, f"the conversation does not fit the {eng.capacity}-token context: {e}",
                           param="messages") from None
        if cfg.num_candidates > 1:
            if body.logprobs:
                raise ApiError(400, "logprobs are not available with candidates > 1 (best-of-N)", param="logprobs")
            job = submit_best_of_n(eng, prompt, cfg, conversation)
        else:
            job = submit(eng, prompt, cfg, conversation.generator,
                         (body.top_logprobs or 0) if body.logprobs else None)
        reply = Reply(job, eng.fmt, body.stop or [], state.model_name, metrics,
                      goal_check=(lambda text: state.goal_accepted(body.goal, text)) if body.goal else None,
                      extra={"persona": facts} | ({"candidates": cfg.num_candidates} if cfg.num_candidates > 1 else {}),
                      http=http)
        return await respond(reply, body.stream, http)

    @app.post("/v1/completions", summary="Raw text completion of a prompt in the model's own format")
    async def completions(body: CompletionRequest, http: Request):
        if state.upstream is not None:  # the model's own text format: passed through as it is
            response = await state.upstream.forward("/completions", body.model_dump(exclude_none=True))
            return StreamingResponse(response.aiter_raw(), status_code=response.status_code,
                                     media_type=response.headers.get("content-type"), background=response.aclose)
        eng = engine()
        refuse_unsupported(body)
        cfg = sampling_of(body)
        if isinstance(body.prompt, str):
            prompt = eng.fmt.tokenizer.encode(body.prompt, add_special_tokens=False)
            echo = body.prompt if body.echo else ""
        else:
            prompt = list(body.prompt)
            if max(prompt) >= len(eng.fmt.tokenizer) or min(prompt) < 0:
                raise ApiError(400, f"prompt: token ids must be in 0-{len(eng.fmt.tokenizer) - 1}", param="prompt")
            echo = eng.fmt.tokenizer.decode(prompt) if body.echo else ""
        if len(prompt) + cfg.max_new_tokens > eng.capacity:
            raise ApiError(400, f"the prompt ({len(prompt)} tokens) and max_tokens ({cfg.max_new_tokens}) exceed "
                                f"the {eng.capacity}-token context", param="prompt")
        generator = torch.Generator(device=eng.device)
        generator.manual_seed(body.seed) if body.seed is not None else generator.seed()
        job = submit(eng, prompt, cfg, generator, body.logprobs)
        reply = TextReply(job, eng.fmt, body.stop or [], state.model_name, metrics, echo=echo, http=http)
        return await respond(reply, body.stream, http)

    @app.post("/v1/selfplay", summary="An action-driven interviewer talks with a persona bot")
    async def selfplay(body: SelfPlayRequest, http: Request):
        ready()
        persona = body.persona or random.Random(body.seed).choice(state.personas)
        if state.upstream is None:
            return await _selfplay(engine(), body, persona, http)
        from personagpt.serve.upstream import selfplay_events

        refuse_local_only(body)
        events = selfplay_events(state.upstream, persona, policy_of(body), body.turns, sampling_of(body), body.seed)
        if body.stream:
            async def stream():
                async for event in events:
                    yield f"data: {json.dumps(event)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(stream(), media_type="text/event-stream")
        async for event in events:
            if "transcript" in event:
                return {"persona": persona, **event["transcript"]}

    @app.get("/metrics", summary="Prometheus metrics")
    def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    from personagpt.serve.docs import mount_docs
    from personagpt.serve.page import mount_page

    mount_docs(app)  # /docs, offline
    mount_page(app)  # the chat page at /, when the package ships it
    return app


async def _selfplay(engine: Engine, body: SelfPlayRequest, persona: list[str], http: Request):
    from personagpt.control.selfplay import self_play

    policy = policy_of(body)
    cfg = sampling_of(body)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def on_turn(_, transcript) -> None:
        if stop.is_set():
            raise PersonaGPTError("self-play cancelled")
        role = "interviewer" if transcript.actions[-1] else "persona"
        event = {"turn": (len(transcript.turns) + 1) // 2, "role": role, "goal": transcript.actions[-1],
                 "text": for_people(transcript.turns[-1])}
        loop.call_soon_threadsafe(events.put_nowait, event)

    def run():
        try:
            result = self_play(engine.model, engine.fmt, [persona], policy, body.turns, cfg, seed=body.seed,
                               on_turn=on_turn, engine=engine)[0]
            shown = result.to_json()
            shown["turns"] = [for_people(t) for t in shown["turns"]]
            loop.call_soon_threadsafe(events.put_nowait, {"transcript": shown})
        except Exception as error:
            loop.call_soon_threadsafe(events.put_nowait, {"error": str(error)})

    threading.Thread(target=run, name="personagpt-selfplay", daemon=True).start()

    async def stream():
        try:
            while True:
                event = await events.get()
                yield f"data: {json.dumps(event)}\n\n"
                if "transcript" in event or "error" in event:
                    yield "data: [DONE]\n\n"
                    return
        finally:
            stop.set()

    if body.stream:
        return StreamingResponse(stream(), media_type="text/event-stream")
    try:
        while True:
            event = await events.get()
            if "transcript" in event:
                return {"persona": persona, **event["transcript"]}
            if "error" in event:
                raise ApiError(500, f"self-play failed: {event['error']}", kind="server_error")
    finally:
        stop.set()


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_, error: ApiError):
        return JSONResponse(error_body(error.message, error.kind, error.param), status_code=error.status,
                            headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        message, param = _explain(error.errors()[0] if error.errors() else {}, request.url.path)
        return JSONResponse(error_body(message, "invalid_request_error", param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, error: StarletteHTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(error.detail), kind), status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.exception_handler(PersonaGPTError)
    async def user_error(_, error: PersonaGPTError):
        return JSONResponse(error_body(str(error), "invalid_request_error"), status_code=400)

    @app.exception_handler(Exception)
    async def bug(_, error: Exception):
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)


EXAMPLES = {"/v1/chat/completions": '{"messages": [{"role": "user", "content": "hi!"}]}',
            "/v1/completions": '{"prompt": "<|p2|>i like dogs.<|endoftext|><|sep|><|start|>hi !<|endoftext|>"}',
            "/v1/selfplay": '{"turns": 4}'}


def _explain(first: dict, path: str) -> tuple[str, str | None]:
    """A validation error as one sentence that names the field and says what to send."""
    kind = first.get("type", "")
    example = EXAMPLES.get(path, "{...}")
    if kind == "json_invalid":
        return f"the request body is not valid JSON; send a JSON object such as {example}", "body"
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
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
