"""The server's routes, one function each over the app's :class:`~personagpt.serve.state.AppState`: chat and
text completions, self-play, goals, personas, health, models and metrics."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from dataclasses import replace

import torch
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from personagpt.control.selfplay import self_play
from personagpt.errors import DataError, PersonaGPTError
from personagpt.format import DEFAULT_ACTIONS
from personagpt.generate.conversation import Conversation
from personagpt.generate.engine import Engine
from personagpt.personas.cards import card_from_bytes
from personagpt.serve.completions import Choices, Reply, TextReply, UpstreamReply
from personagpt.serve.errors import ApiError
from personagpt.serve.requests import (continues, conversation_of, policy_of, refuse_local_only,
                                       refuse_unsupported, sampling_of)
from personagpt.serve.schemas import ChatRequest, CompletionRequest, SelfPlayRequest
from personagpt.serve.state import AppState
from personagpt.text import for_people

router = APIRouter()


def state_of(http: Request) -> AppState:
    return http.app.state.personagpt


async def respond(reply: Reply, stream: bool, http: Request):
    if stream:
        return StreamingResponse(reply.events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await reply.whole(http)


@router.get("/health", summary="200 once the model is loaded, 503 before")
async def health(http: Request):
    state = state_of(http)
    if state.upstream is not None:
        try:
            return await state.upstream.health()
        except ApiError as error:
            return JSONResponse({"status": "upstream unavailable", "error": error.message}, status_code=503)
    if state.engine is None:
        status = "loading" if state.load_error is None else "error"
        return JSONResponse({"status": status, "error": state.load_error}, status_code=503)
    return state.health()


@router.get("/v1/models")
def models(http: Request):
    state = state_of(http)
    state.ready()
    return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": 0,
                                        "owned_by": "personagpt"}]}


@router.get("/v1/models/{model_id:path}")
def model(model_id: str, http: Request):
    state = state_of(http)
    state.ready()
    if model_id != state.model_name:
        raise ApiError(404, f"no model {model_id!r} here; this server serves {state.model_name!r}",
                       kind="not_found_error", param="model")
    return {"id": state.model_name, "object": "model", "created": 0, "owned_by": "personagpt"}


@router.get("/v1/goals", summary="The goals a goal index refers to: the 11 action codes")
def goals():
    return {"goals": [{"index": i, "goal": g} for i, g in enumerate(DEFAULT_ACTIONS)]}


@router.get("/v1/personas/random", summary="A random Persona-Chat training persona")
def random_persona(http: Request, seed: int | None = Query(None)):
    state = state_of(http)
    state.ready()
    if not state.personas:
        raise ApiError(404, "no personas file is available", kind="not_found_error")
    return {"persona": random.Random(seed).choice(state.personas)}


@router.post("/v1/cards", summary="A character card (its file's bytes: JSON, or PNG) read into persona facts")
async def read_card(http: Request):
    """What the page's Import does with a card: the persona facts its prose gives (as a system prompt's would),
    what was left out, and its greetings ({{user}} as "there"). Nothing is kept."""
    try:
        card = card_from_bytes(await http.body(), "the card")
        taken = card.persona()
    except DataError as e:
        raise ApiError(400, str(e), param="card") from None
    return {"name": card.name, "persona": taken.facts, "persona_left_out": taken.left_out,
            "greetings": [for_people(g) for g in card.greetings()]}  # spaced as every reply the page shows


@router.post("/v1/chat/completions", summary="A reply of the persona bot (streamed with stream=true)")
async def chat(body: ChatRequest, http: Request):
    state = state_of(http)
    if state.upstream is not None:
        return await upstream_chat(state, body, http)
    eng = state.ready_engine()
    refuse_unsupported(body)
    facts, turns, left_out = conversation_of(body, state.personas)
    cfg = sampling_of(body)
    if body.goal is not None:
        cfg = cfg.for_goal()  # goal mode's own default number of samples unless the request says how many
    scale = "goal_guidance" if body.goal is not None else "persona_guidance"  # the one this turn uses
    per_candidate = 2 if getattr(cfg, scale) != 1 else 1  # guidance: a guide row beside each candidate
    if per_candidate > eng.max_batch:
        if scale in body.model_fields_set:
            raise ApiError(400, "guidance needs two rows of the batch; this server decodes one (--max-batch 1)",
                           param=scale)
        cfg, per_candidate = replace(cfg, **{scale: 1.0}), 1  # the default guidance needs a row it does not have
    fits = min(eng.max_batch // per_candidate, eng.max_queue)
    if body.n > 1:  # OpenAI's n: n plain samples side by side (each guided and answer-checked as one would be)
        if body.n > fits:
            raise ApiError(400, f"n must be at most {fits} on this server (its batch holds {eng.max_batch} rows"
                                f"{', two per guided reply' if per_candidate > 1 else ''})", param="n")
        cfg = replace(cfg, num_candidates=1)
    if cfg.num_candidates > fits:  # N rows (and their guides) must fit the batch side by side
        cfg = replace(cfg, num_candidates=fits)
    busy = eng.active + eng.queue_depth + cfg.num_candidates * per_candidate > eng.max_batch
    if cfg.num_candidates > 1 and busy and "candidates" not in body.model_fields_set:
        cfg = replace(cfg, num_candidates=1)  # the default best-of-N uses spare rows only, never queues for them
    try:
        conversation = Conversation.from_turns(eng.model, eng.fmt, turns, persona=facts, goal=body.goal,
                                               sampling=cfg, engine=eng, seed=body.seed)
        prompt = conversation.context_ids(cfg.max_new_tokens)
        if continues(body):  # the reply extends the assistant's last message: its end of turn goes
            prompt = prompt[:-1]
        else:
            cfg = conversation.turn_sampling(cfg)
    except PersonaGPTError as e:
        raise ApiError(400, f"the conversation does not fit the {eng.capacity}-token context: {e}",
                       param="messages") from None
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    if cfg.num_candidates > 1:
        jobs = [state.submit_best_of_n(prompt, cfg, conversation, logprobs)]
    else:
        jobs = []
        try:
            for generator in choice_generators(conversation.generator, body.n, body.seed):
                jobs.append(state.submit(prompt, cfg, generator, logprobs, **conversation.guide_request(prompt, cfg)))
        except ApiError:  # no room for every choice: none is generated
            for job in jobs:
                job.cancel()
            raise
    replies = [Reply(job, eng.fmt, body.stop or [], state.model_name, state.metrics,
                     goal_check=(lambda text: state.goal_accepted(body.goal, text)) if body.goal else None,
                     extra={"persona": facts} | ({"persona_left_out": left_out} if left_out else {})
                     | ({"candidates": cfg.num_candidates} if cfg.num_candidates > 1 else {})
                     | ({"max_tokens_used": cfg.max_new_tokens} if (body.asked_limit or 0) > cfg.max_new_tokens
                        else {}),
                     http=http) for job in jobs]
    last = body.messages[-1].content if body.messages else None
    for one in replies:  # a continued message that ends in a word or a stop gets its space from us
        one.continuing = continues(body) and isinstance(last, str) and not last[-1:].isspace()
    reply = replies[0] if len(replies) == 1 else Choices(replies)
    options = (body.model_extra or {}).get("stream_options") or {}
    reply.include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    return await respond(reply, body.stream, http)


def choice_generators(first: torch.Generator, n: int, seed: int | None) -> list[torch.Generator]:
    """One generator per choice: the conversation's for the first, then ``seed + i`` (or fresh) for the others."""
    others = [torch.Generator(device=first.device) for _ in range(n - 1)]
    for i, generator in enumerate(others, 1):
        generator.manual_seed(seed + i) if seed is not None else generator.seed()
    return [first, *others]


async def upstream_chat(state: AppState, body: ChatRequest, http: Request):
    """The chat completion generated by the upstream engine (persona and goal as the template's system lines)."""
    refuse_unsupported(body)
    refuse_local_only(body)
    facts, turns, _ = conversation_of(body, state.personas)
    job = await state.upstream.chat(state.upstream.messages(facts, body.goal, turns), sampling_of(body), body.seed)
    reply = UpstreamReply(job, None, body.stop or [], state.model_name, state.metrics,
                          goal_check=(lambda text: state.goal_accepted(body.goal, text)) if body.goal else None,
                          extra={"persona": facts}, http=http)
    return await respond(reply, body.stream, http)


@router.post("/v1/completions", summary="Raw text completion of a prompt in the model's own format")
async def completions(body: CompletionRequest, http: Request):
    state = state_of(http)
    if state.upstream is not None:  # the model's own text format: passed through as it is
        response = await state.upstream.forward("/completions", body.model_dump(exclude_none=True))
        return StreamingResponse(response.aiter_raw(), status_code=response.status_code,
                                 media_type=response.headers.get("content-type"), background=response.aclose)
    eng = state.ready_engine()
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
    job = state.submit(prompt, cfg, generator, body.logprobs)
    reply = TextReply(job, eng.fmt, body.stop or [], state.model_name, state.metrics, echo=echo, http=http)
    return await respond(reply, body.stream, http)


@router.post("/v1/selfplay", summary="An interviewer driven by goals talks with a persona bot")
async def selfplay(body: SelfPlayRequest, http: Request):
    state = state_of(http)
    state.ready()
    persona = body.persona or random.Random(body.seed).choice(state.personas)
    if state.upstream is None:
        return await local_selfplay(state.ready_engine(), body, persona)
    from personagpt.serve.upstream import selfplay_events  # httpx, needed only in front of another engine

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


async def local_selfplay(engine: Engine, body: SelfPlayRequest, persona: list[str]):
    """Self-play on the engine in a worker thread, its turns handed to the event loop as they come."""
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


@router.get("/metrics", summary="Prometheus metrics")
def prometheus(http: Request):
    metrics = state_of(http).metrics
    return Response(metrics.render(), media_type=metrics.content_type)
