"""The HTTP server: an OpenAI-compatible chat API with persona and action-code extensions, over one Engine.

The API is stateless: every request carries the whole conversation (persona, goal, messages), so any replica can
serve any turn; the engine's prefix cache makes resending the history cheap.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from personagpt.engine import Engine, QueueFullError
from personagpt.errors import PersonaGPTError
from personagpt.format import DEFAULT_ACTIONS
from personagpt.generation import Conversation
from personagpt.sampling import SamplingConfig
from personagpt.serve.completions import Envelope, Reply, cut_at_stops
from personagpt.serve.errors import ApiError, error_body
from personagpt.serve.guard import Guard
from personagpt.serve.metrics import Metrics
from personagpt.serve.schemas import ChatRequest, SelfPlayRequest, resolve_goal, split_system


@dataclass
class ServerSettings:
    """How ``personagpt serve`` runs; every field is a flag of the command."""

    model: str | None = None
    device: str | None = None
    precision: str = "auto"  # auto: bf16 weights on CPUs fast at bf16; no: fp32
    max_batch: int = 16
    max_queue: int = 64
    max_context: int = 1024
    prefix_cache_tokens: int = 16384
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 1 << 20
    personas_path: Path | None = None


class _State:
    """What the app holds: the engine once the model is loaded, or why it failed."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.model_name = "personagpt"
        self.load_error: str | None = None
        self.personas: list[list[str]] = []
        self._labeler = None
        self._labeler_lock = threading.Lock()

    def goal_accepted(self, goal: str, text: str) -> bool | None:
        """Whether the goal labeler accepts ``text`` as pursuing ``goal`` (the semantic labeler when its encoder
        is installed, else the rules); None when it cannot tell."""
        from personagpt.control import GoalLabeler, minilm_path

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


def create_app(settings: ServerSettings | None = None, loader=None) -> FastAPI:
    """The FastAPI app. ``loader()`` returns ``(model, PromptFormat)`` (default: :func:`load_chat_model` of
    ``settings.model``); it runs in a background thread, and ``/health`` answers 503 until it is done."""
    settings = settings or ServerSettings()
    state = _State()
    metrics = Metrics(lambda: state.engine)

    def load() -> None:
        try:
            from personagpt.data import load_personas, resolve_personas_path
            from personagpt.models import load_chat_model, serving_model

            model, fmt = loader() if loader else load_chat_model(settings.model, device=settings.device)
            model = serving_model(model, settings.precision)
            state.personas = load_personas(resolve_personas_path(settings.personas_path))
            state.model_name = Path(settings.model).name if settings.model else "personagpt-bundled"
            state.engine = Engine(model, fmt, max_batch=settings.max_batch, max_queue=settings.max_queue,
                                  capacity=settings.max_context, prefix_cache_tokens=settings.prefix_cache_tokens)
        except Exception as error:  # reported by /health; the process stays up to say so
            state.load_error = f"{type(error).__name__}: {error}"

    async def lifespan(app):
        threading.Thread(target=load, name="personagpt-load", daemon=True).start()
        yield
        if state.engine is not None:
            state.engine.close()

    app = FastAPI(title="PersonaGPT", version="0.1.0", lifespan=lifespan,
                  description="Persona-conditioned, controllable chat. OpenAI-compatible `/v1/chat/completions` "
                              "with `persona` and `goal` extensions.")
    app.state.personagpt = state
    app.add_middleware(Guard, api_key=settings.api_key, max_body=settings.max_body_bytes, metrics=metrics)
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

    @app.get("/health", summary="200 once the model is loaded, 503 before")
    def health():
        if state.engine is None:
            status = "loading" if state.load_error is None else "error"
            return JSONResponse({"status": status, "error": state.load_error}, status_code=503)
        return {"status": "ok", "model": state.model_name}

    @app.get("/v1/models")
    def models():
        engine()
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": 0,
                                            "owned_by": "personagpt"}]}

    @app.get("/v1/goals", summary="The action space: the 11 action codes a goal index refers to")
    def goals():
        return {"goals": [{"index": i, "goal": g} for i, g in enumerate(DEFAULT_ACTIONS)]}

    @app.get("/v1/personas/random", summary="A random Persona-Chat training persona")
    def random_persona(seed: int | None = Query(None)):
        engine()
        if not state.personas:
            raise ApiError(404, "no personas file is available", kind="not_found_error")
        return {"persona": random.Random(seed).choice(state.personas)}

    @app.post("/v1/chat/completions", summary="A reply of the persona bot (streamed with stream=true)")
    async def chat(body: ChatRequest, http: Request):
        eng = engine()
        facts, turns = _conversation(body)
        cfg = _sampling(body)
        try:
            conversation = Conversation.from_turns(eng.model, eng.fmt, turns, persona=facts, goal=body.goal,
                                                   sampling=cfg, engine=eng, seed=body.seed)
            prompt = conversation.context_ids(cfg.max_new_tokens)
        except PersonaGPTError as e:
            raise ApiError(400, f"the conversation does not fit the {eng.capacity}-token context: {e}",
                           param="messages") from None
        if cfg.num_candidates > 1:
            return await _best_of_n(conversation, body, prompt, state.model_name, metrics)
        try:
            job = eng.submit(prompt, cfg, conversation.generator, loop=asyncio.get_running_loop())
        except QueueFullError as e:
            metrics.rejected.inc()
            raise ApiError(503, str(e), kind="server_error", headers={"Retry-After": "1"}) from None
        reply = Reply(job, eng.fmt, body.stop or [], state.model_name, metrics,
                       goal_check=(lambda text: state.goal_accepted(body.goal, text)) if body.goal else None)
        if body.stream:
            return StreamingResponse(reply.events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await reply.whole(http)

    @app.post("/v1/selfplay", summary="An action-driven interviewer talks with a persona bot")
    async def selfplay(body: SelfPlayRequest, http: Request):
        eng = engine()
        persona = body.persona or random.Random(body.seed).choice(state.personas)
        return await _selfplay(eng, body, persona, http)

    @app.get("/metrics", summary="Prometheus metrics")
    def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    from personagpt.serve.page import mount_page

    mount_page(app)  # the chat page at /, when the package ships it
    return app


async def _best_of_n(conversation: Conversation, body: ChatRequest, prompt: list[int], model: str, metrics):
    """A best-of-N reply (the N samples go through the engine; scoring runs in a worker thread), whole."""
    if conversation.engine.queue_depth + body.candidates > conversation.engine.max_queue:
        metrics.rejected.inc()
        raise ApiError(503, "too many requests are waiting; try again shortly", kind="server_error",
                       headers={"Retry-After": "1"})
    text = cut_at_stops(await asyncio.to_thread(conversation.respond), body.stop or [])
    envelope = Envelope(model)
    completion = len(conversation.turn_ids[-1]) - 1
    usage = {"prompt_tokens": len(prompt), "completion_tokens": completion, "total_tokens": len(prompt) + completion}
    if not body.stream:
        return envelope.whole(text, "stop", usage=usage, candidates=body.candidates)

    async def events():
        yield envelope.chunk({"role": "assistant", "content": ""})
        yield envelope.chunk({"content": text})
        yield envelope.chunk({}, "stop", usage=usage)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _conversation(body: ChatRequest) -> tuple[list[str], list[str]]:
    """(persona facts, turns) from the messages; wrong shapes are 400s naming the problem."""
    system = [m for m in body.messages if m.role == "system"]
    dialogue = [m for m in body.messages if m.role != "system"]
    parsed = [split_system(m.content) for m in system]
    written_goal = next((goal for _, goal in parsed if goal), None)
    if body.goal is None and written_goal:  # the chat template's "goal: TEXT" system line
        try:
            body.goal = resolve_goal(written_goal)
        except ValueError as e:
            raise ApiError(400, str(e), param="messages") from None
    if not body.messages and body.goal is None:
        raise ApiError(400, "messages must not be empty (only a request with a goal may open the conversation)",
                       param="messages")
    if any(m.role == "system" for m in body.messages[len(system):]):
        raise ApiError(400, "system messages go first", param="messages")
    for a, b in zip(dialogue, dialogue[1:]):
        if a.role == b.role:
            raise ApiError(400, f"user and assistant messages must alternate (two {a.role} messages in a row)",
                           param="messages")
    if dialogue and dialogue[-1].role != "user":
        raise ApiError(400, "the last message must be the user's: the assistant speaks next", param="messages")
    if not dialogue and body.goal is None:
        raise ApiError(400, "no user message (without a goal the bot answers a user)", param="messages")
    if any(not m.content.strip() for m in dialogue):
        raise ApiError(400, "messages must not be empty", param="messages")
    facts = body.persona if body.persona is not None else [f for lines, _ in parsed for f in lines]
    if len(facts) > 5:
        raise ApiError(400, f"at most 5 persona facts, got {len(facts)}", param="persona")
    if not facts and body.goal is None:
        raise ApiError(400, "the bot needs a persona: a system message with its facts, or the persona field",
                       param="persona")
    return [f.strip() for f in facts], [m.content for m in dialogue]


def _sampling(body) -> SamplingConfig:
    defaults = SamplingConfig()
    greedy = body.temperature == 0
    min_tokens = getattr(body, "min_tokens", 0)
    if min_tokens > (body.max_tokens or defaults.max_new_tokens):
        raise ApiError(400, "min_tokens must not exceed max_tokens", param="min_tokens")
    return SamplingConfig(do_sample=not greedy, top_k=defaults.top_k if body.top_k is None else body.top_k,
                          top_p=body.top_p or defaults.top_p,
                          temperature=body.temperature if body.temperature else defaults.temperature,
                          repetition_penalty=getattr(body, "repetition_penalty", None) or defaults.repetition_penalty,
                          max_new_tokens=body.max_tokens or defaults.max_new_tokens, min_new_tokens=min_tokens,
                          num_candidates=getattr(body, "candidates", 1))


async def _selfplay(engine: Engine, body: SelfPlayRequest, persona: list[str], http: Request):
    from personagpt.selfplay import FixedPolicy, RandomPolicy, self_play

    if body.policy == "fixed" and not body.goals:
        raise ApiError(400, "the fixed policy needs goals", param="goals")
    policy = FixedPolicy(body.goals) if body.goals and body.policy != "random" else RandomPolicy(seed=body.seed)
    cfg = _sampling(body)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def on_turn(_, transcript) -> None:
        if stop.is_set():
            raise PersonaGPTError("self-play cancelled")
        role = "interviewer" if transcript.actions[-1] else "persona"
        event = {"turn": (len(transcript.turns) + 1) // 2, "role": role, "goal": transcript.actions[-1],
                 "text": transcript.turns[-1]}
        loop.call_soon_threadsafe(events.put_nowait, event)

    def run():
        try:
            result = self_play(engine.model, engine.fmt, [persona], policy, body.turns, cfg, seed=body.seed,
                               on_turn=on_turn, engine=engine)[0]
            loop.call_soon_threadsafe(events.put_nowait, {"transcript": result.to_json()})
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
    async def invalid(_, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body("the request body is not valid JSON", "invalid_request_error"), 400)
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request").removeprefix("Value error, ")
        return JSONResponse(error_body(f"{param}: {message}" if param else message, "invalid_request_error",
                                       param), status_code=400)

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
