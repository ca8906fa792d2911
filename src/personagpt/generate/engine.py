"""One model, many concurrent conversations: continuous batching of decoding steps and a prefix cache.

A background thread owns the model. Requests (a prompt, sampling settings, a random generator) wait in a bounded
queue; between two decoding steps the scheduler admits waiting requests into free *slots* and drops finished
or cancelled ones, so requests join and leave the running batch at any step.

* **Slots.** A request owns one slot and its own length; a decoding step feeds one token per active row at its own
  position. Active rows are kept contiguous (a finished row's slot takes the last row). Where a slot's keys/values
  live and how rows run forward is the backend's (:mod:`personagpt.generate.slots`: torch buffers, or llama.cpp).
* **Prefix cache.** A finished request's keys/values are kept (LRU, bounded by tokens). A new prompt reuses the
  longest cached prefix it starts with: clients resend the whole history each turn, so a late turn costs only its
  new tokens.
* **Sampling** is per request, with the rules and the generator of
  :class:`~personagpt.generate.conversation.Conversation`:
  a request gives the same tokens whether it runs alone or in a full batch (up to float rounding).

Transformers' own continuous batching (``generate_batch``) was measured first and is far slower on a CPU (see
bench/README.md, "Serving").
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from personagpt.errors import PersonaGPTError, QueueFullError, RequestCancelled
from personagpt.format import PromptFormat
from personagpt.generate.loop import Row, Sampler, guided_logits
from personagpt.generate.sampling import SamplingConfig
from personagpt.generate.slots import TorchSlots, choose_backend
from personagpt.models.load import context_limit


_DONE = object()


@dataclass
class Request:
    """A generation request and its results. Iterate it (threads) or ``async for`` it (asyncio) for token ids."""

    prompt: list[int]
    sampling: SamplingConfig
    generator: torch.Generator
    loop: asyncio.AbstractEventLoop | None = None
    id: int = 0
    tokens: list[int] = field(default_factory=list)
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache
    finish_reason: str | None = None  # "stop" (eos), "length", "cancelled", "error"
    error: BaseException | None = None
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    prefill_seconds: float = 0.0
    finished_at: float | None = None
    cancelled: bool = False
    logprobs: int | None = None  # record each token's log-probability and this many top alternatives
    guide_prompt: list[int] | None = None  # guidance: the same prompt without the goal (or the persona)
    guidance: float = 1.0  # logits = guide + guidance * (prompt - guide); 1: the prompt's own
    token_logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)
    # best-of-N's reranker reads these instead of scoring the candidates again: each sampled token's log-probability
    # under the prompt and, when guided, under the guide prompt (the reference its PMI is taken against)
    scored: bool = False
    scores: list[float] = field(default_factory=list)
    guide_scores: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._events: deque = deque()
        self._ready = threading.Condition()
        self._async_queue: asyncio.Queue | None = asyncio.Queue() if self.loop is not None else None

    @property
    def guided(self) -> bool:
        """A second slot row holds ``guide_prompt`` and its tokens: to steer by (classifier-free guidance), or
        with ``guidance`` 1 in a scored request only as the reference best-of-N's scores are taken against."""
        return self.guide_prompt is not None and (self.guidance != 1.0 or self.scored)

    @property
    def slots(self) -> int:
        return 2 if self.guided else 1

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next step."""
        self.cancelled = True

    def _emit(self, item) -> None:
        if self._async_queue is not None:
            self.loop.call_soon_threadsafe(self._async_queue.put_nowait, item)
        with self._ready:
            self._events.append(item)
            self._ready.notify_all()

    def __iter__(self) -> Iterator[int]:
        while True:
            with self._ready:
                while not self._events:
                    self._ready.wait()
                item = self._events.popleft()
            if item is _DONE:
                if self.error is not None:
                    raise self.error
                return
            yield item

    async def stream(self):
        """Token ids as they are produced (needs ``loop`` set at submission)."""
        while True:
            item = await self._async_queue.get()
            if item is _DONE:
                if self.error is not None:
                    raise self.error
                return
            yield item

    @property
    def decode_seconds(self) -> float:
        if self.first_token_at is None or self.finished_at is None:
            return 0.0
        return self.finished_at - self.first_token_at


@dataclass
class _Active:
    request: Request
    prompt: list[int]  # what the slot was filled with (the request's prompt, or its guide prompt)
    length: int  # tokens whose keys/values are in the slot
    last: int  # the token to feed next
    row: Row | None  # its sampling state (settings, generator, seen ids; its tokens are the request's); None: a guide
    guide: _Active | None = None  # the guide row whose logits steer this row's (classifier-free guidance)

    @property
    def is_guide(self) -> bool:
        return self.row is None


class Engine:
    """Runs generation requests from many sessions on one model, batched step by step.

    ``max_batch`` rows decode together (1 turns batching off); at most ``max_queue`` requests wait, beyond that
    :meth:`submit` raises :class:`QueueFullError`. ``capacity`` is the longest sequence (prompt + reply) a slot
    holds; ``prefix_cache_tokens`` bounds the prefix cache.
    """

    def __init__(self, model, fmt: PromptFormat, *, max_batch: int = 16, max_queue: int = 64,
                 capacity: int | None = None, prefix_cache_tokens: int = 16384, fast: str | None = None,
                 backend: str | None = None) -> None:
        """``backend`` runs the model (:func:`~personagpt.generate.slots.choose_backend`: llama.cpp where it is
        installed, else torch; None: automatic); ``fast`` picks torch's decoding path
        (:func:`~personagpt.models.fastpath.choose_fast_path`; None: by the CPU)."""
        self.model, self.fmt = model, fmt
        self.max_batch, self.max_queue = max_batch, max_queue
        self.capacity = min(capacity or 1024, context_limit(model))
        self.device = model.device
        self.backend, why = choose_backend(backend, model, max_batch)
        self.slots = None
        if self.backend == "llama.cpp":
            from personagpt.generate.llamacpp import LlamaCppSlots

            try:
                self.slots = LlamaCppSlots(model, fmt, max_batch, self.capacity, prefix_cache_tokens)
            except (PersonaGPTError, OSError) as error:  # chosen for speed, not asked for: torch still serves
                if why == "asked for":
                    raise
                self.backend, why = "torch", f"llama.cpp failed to start: {error}"
        if self.slots is None:
            self.slots = TorchSlots(model, fmt, max_batch, self.capacity, prefix_cache_tokens, fast)
        self.backend_reason = why
        self.prefix_cache = self.slots.prefix_cache
        self.sampler = Sampler(fmt, self.device)
        self._waiting: deque[Request] = deque()
        self._active: list[_Active] = []
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._stopping = False
        self.steps = 0  # decoding steps run (each over all active rows)
        self.forward_tokens = 0  # tokens fed through the model (prefills and steps)
        self._thread = threading.Thread(target=self._run, name="personagpt-engine", daemon=True)
        self._thread.start()

    # ---- the public side ---------------------------------------------------------------------------------------

    def submit(self, prompt: Sequence[int], sampling: SamplingConfig | None = None,
               generator: torch.Generator | None = None, seed: int | None = None,
               loop: asyncio.AbstractEventLoop | None = None, logprobs: int | None = None,
               guide_prompt: Sequence[int] | None = None, guidance: float = 1.0, scored: bool = False) -> Request:
        """Queue a request; iterate the returned :class:`Request` for its tokens (eos included when produced).
        ``logprobs`` (0-20) records each token's log-probability under the model and that many alternatives;
        ``scored`` records each token's log-probability under the prompt and the guide prompt (``Request.scores``,
        ``Request.guide_scores``), which best-of-N ranks by.
        ``guidance`` != 1 with a ``guide_prompt`` (the prompt without its goal or persona) decodes with
        classifier-free guidance: the guide prompt takes a second slot row, decoded in the same batched steps, and
        each token is sampled from ``guide + guidance * (prompt - guide)`` (logprobs stay the model's own); a
        ``scored`` request's guide row at ``guidance`` 1 steers nothing and only records ``guide_scores``."""
        cfg = sampling or SamplingConfig()
        if cfg.num_beams > 1:
            raise PersonaGPTError("the engine samples or decodes greedily; beam search is not served")
        if not prompt:
            raise PersonaGPTError("an empty prompt")
        if len(prompt) + cfg.max_new_tokens > self.capacity:
            raise PersonaGPTError(f"prompt ({len(prompt)} tokens) + reply ({cfg.max_new_tokens}) exceed the "
                                  f"engine's {self.capacity}-token capacity")
        if generator is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed) if seed is not None else generator.seed()
        if guide_prompt is not None and len(guide_prompt) + cfg.max_new_tokens > self.capacity:
            raise PersonaGPTError(f"guide prompt ({len(guide_prompt)} tokens) + reply ({cfg.max_new_tokens}) exceed "
                                  f"the engine's {self.capacity}-token capacity")
        request = Request(list(prompt), cfg, generator, loop, next(self._ids), logprobs=logprobs, scored=scored,
                          guide_prompt=list(guide_prompt) if guide_prompt is not None else None, guidance=guidance)
        if request.guided and self.max_batch < 2:
            raise PersonaGPTError("guidance needs two rows of the batch; this engine has one")
        with self._lock:
            if self._stopping:
                raise PersonaGPTError("the engine is shut down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting; try again shortly")
            self._waiting.append(request)
            self._lock.notify_all()
        return request

    def submit_many(self, prompt: Sequence[int], count: int, sampling: SamplingConfig | None = None,
                    generator: torch.Generator | None = None,
                    loop: asyncio.AbstractEventLoop | None = None, guide_prompt: Sequence[int] | None = None,
                    guidance: float = 1.0, logprobs: int | None = None) -> list[Request]:
        """``count`` requests for one prompt, queued together so they are admitted together and the prompt is
        encoded once (best-of-N candidates; each records ``logprobs`` as :meth:`submit`, and the scores best-of-N
        ranks by). All or none are queued."""
        # each candidate samples from its own generator, seeded from ``generator``: its tokens then do not depend
        # on how many draws the others made before they were cancelled (a seeded request stays reproducible)
        seeds = torch.randint(2 ** 62, (count,), generator=generator).tolist() if generator is not None else None
        generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds] if seeds else [None] * count
        with self._lock:  # reentrant: submit() takes it again
            if len(self._waiting) + count > self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting; try again shortly")
            return [self.submit(prompt, sampling, g, loop=loop, guide_prompt=guide_prompt, guidance=guidance,
                                logprobs=logprobs, scored=True) for g in generators]

    def generate(self, prompt: Sequence[int], sampling: SamplingConfig | None = None,
                 generator: torch.Generator | None = None, seed: int | None = None) -> list[int]:
        """The reply's token ids, eos included when produced (blocks)."""
        return list(self.submit(prompt, sampling, generator, seed))

    @property
    def fast_path(self):
        """The torch decoding path chosen for this CPU (what the torch backend and the model's other work run)."""
        return self.slots.fast_path

    @property
    def decoder(self):
        return self.slots.decoder

    def describe(self) -> str:
        """What decodes, said at start-up and in /health."""
        if self.backend == "llama.cpp":
            return f"{self.slots.describe()} ({self.backend_reason})"
        failed = self.backend_reason.startswith("llama.cpp failed")
        return self.slots.describe() + (f"; {self.backend_reason}" if failed else "")

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._active)

    def close(self) -> None:
        """Finish the running requests' current step, cancel the rest, stop the thread."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._thread.join(timeout=30)
        if not self._thread.is_alive() and hasattr(self.slots, "close"):
            self.slots.close()

    # ---- the scheduler thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._active and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    break
                admitted, used = [], len(self._active)
                while self._waiting and used + self._waiting[0].slots <= self.max_batch:
                    admitted.append(self._waiting.popleft())
                    used += admitted[-1].slots
            try:
                with torch.inference_mode():
                    self._admit(admitted)
                    self._drop_finished()
                    if self._active:
                        self._step()
                        self._drop_finished()
            except Exception as error:  # a bug or an out-of-memory: fail the requests, keep serving
                failed = {id(row.request) for row in self._active}
                for row in self._active:
                    if not row.is_guide:
                        self._finish(row, "error", error)
                self._active = []
                for request in admitted:  # admitted but not yet decoding
                    if id(request) not in failed and request.finish_reason is None:
                        request.finish_reason, request.error = "error", error
                        request._emit(_DONE)
        for request in list(self._waiting) + [row.request for row in self._active]:
            request.finish_reason = "cancelled"
            request.error = RequestCancelled("the server is shutting down")
            request._emit(_DONE)

    def _admit(self, requests: list[Request]) -> None:
        """Prefill the new requests' prompts (after their cached prefixes) into the next free slots, all in one
        forward pass, and sample each one's first token."""
        live = []
        for request in requests:
            if request.cancelled:
                request.finish_reason = "cancelled"
                request._emit(_DONE)
            else:
                live.append(request)
        if not live:
            return
        started = time.perf_counter()
        first = len(self._active)
        # each request fills one slot, a guided one a second with its guide prompt
        sequences = [(r, r.prompt, False) for r in live] + [(r, r.guide_prompt, True) for r in live if r.guided]
        # identical prompts (best-of-N candidates) are encoded once; their copies take the keys/values after
        unique, copies, index = [], [], {}
        for sequence in sequences:
            key = tuple(sequence[1])
            if key in index:
                copies.append((sequence, index[key]))
            else:
                index[key] = len(unique)
                unique.append(sequence)
        starts = [self.slots.reuse(slot, prompt) for slot, (_, prompt, _) in enumerate(unique, first)]
        chunks = [prompt[start:] for (_, prompt, _), start in zip(unique, starts)]
        logits = self.slots.forward(first, chunks, starts)
        self.forward_tokens += sum(len(c) for c in chunks)
        for (request, _, is_guide), start in zip(unique, starts):
            if not is_guide:
                request.cached_tokens = start
        for slot, ((request, prompt, is_guide), source) in enumerate(copies, first + len(unique)):
            self.slots.copy(first + source, slot, len(prompt))
            if not is_guide:
                request.cached_tokens = starts[source]
        elapsed = time.perf_counter() - started
        rows, sources, guides = [], [], {}
        for sequence, source in [(s, i) for i, s in enumerate(unique)] + copies:
            request, prompt, is_guide = sequence
            request.prefill_seconds = elapsed
            row = _Active(request, list(prompt), len(prompt), -1, None if is_guide else
                          self.sampler.row(request.sampling, prompt, request.generator, request.tokens))
            if is_guide:
                guides[id(request)] = row
            rows.append(row)
            sources.append(source)
        for row in rows:
            if not row.is_guide:
                row.guide = guides.get(id(row.request))
        # the slot order is the admission order: unique sequences, then copies (as the buffers were filled)
        self._active.extend(rows)
        self._accept(rows, logits[torch.tensor(sources, device=self.device)])

    def _accept(self, rows: list[_Active], logits: torch.Tensor) -> None:
        """Sample each row's next token from its line of ``logits`` (the one token step,
        :class:`~personagpt.generate.loop.Sampler`; a guided row's line is steered by its guide row's, which
        ``rows`` holds too) and hand it to the request; a guide row is fed the token its request sampled."""
        position = {id(row): i for i, row in enumerate(rows)}
        steered = logits
        for i, row in enumerate(rows):
            if row.guide is not None and row.request.guidance != 1.0:
                if steered is logits:
                    steered = logits.float().clone()
                steered[i] = guided_logits(logits[i], logits[position[id(row.guide)]], row.request.guidance)
        picks = self.sampler.pick(steered, [row.row for row in rows])  # appends to each request's tokens
        for i, (row, token) in enumerate(zip(rows, picks)):
            if row.guide is not None and token is not None:
                row.guide.last = token
            if row.is_guide or token is None:
                continue
            request, cfg = row.request, row.request.sampling
            # the model's own distribution (as vLLM reports logprobs by default), once for both readers
            logprobs = logits[i].float().log_softmax(-1) if request.scored or request.logprobs is not None else None
            if request.scored:  # before the token is handed out, so a reader finds its score
                request.scores.append(float(logprobs[token]))
                if row.guide is not None:
                    guide = logits[position[id(row.guide)]]
                    request.guide_scores.append(float(guide.float().log_softmax(-1)[token]))
            if request.logprobs is not None:
                top = torch.topk(logprobs, request.logprobs) if request.logprobs else None
                request.token_logprobs.append((float(logprobs[token]), [] if top is None else list(
                    zip(top.indices.tolist(), top.values.tolist()))))
            if request.first_token_at is None:
                request.first_token_at = time.perf_counter()
            request._emit(token)
            row.last = token
            if token == self.fmt.eos_id:
                request.finish_reason = "stop"
            elif len(request.tokens) >= cfg.max_new_tokens:
                request.finish_reason = "length"

    def _step(self) -> None:
        """One decoding step for every active row."""
        logits = self.slots.forward(0, [[r.last] for r in self._active], [r.length for r in self._active])
        self.steps += 1
        self.forward_tokens += len(self._active)
        for row in self._active:
            row.length += 1
        self._accept(self._active, logits)

    def _drop_finished(self) -> None:
        """Retire finished and cancelled rows: keep their keys/values for the prefix cache, compact the slots."""
        i = 0
        while i < len(self._active):
            row = self._active[i]
            if row.request.finish_reason is None and not row.request.cancelled:
                i += 1
                continue
            self.slots.retire(i, (row.prompt + row.request.tokens)[: row.length])
            if not row.is_guide:
                self._finish(row, row.request.finish_reason or "cancelled")
            last = len(self._active) - 1
            if i != last:  # the last row moves into the freed slot, so active rows stay contiguous
                moved = self._active[last]
                self.slots.move(last, i, moved.length)
                self._active[i] = moved
            self._active.pop()

    def _finish(self, row: _Active, reason: str, error: BaseException | None = None) -> None:
        request = row.request
        request.finish_reason = reason
        request.error = error
        request.finished_at = time.perf_counter()
        request._emit(_DONE)
