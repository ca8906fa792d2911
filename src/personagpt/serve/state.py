"""What the server holds: its settings, the engine once the model is loaded (or why it failed), the personas to
draw from, the goal labeler, and the metrics; and the ways a route submits work to the engine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from personagpt.control.goals import GoalLabeler, minilm_path
from personagpt.data.dialogues import load_personas, resolve_personas_path
from personagpt.errors import PersonaGPTError, QueueFullError
from personagpt.format import DEFAULT_CONTEXT
from personagpt.generate.best_of_n import RerankWeights, recorded_scores
from personagpt.generate.conversation import Conversation
from personagpt.generate.engine import Engine
from personagpt.generate.sampling import SamplingConfig
from personagpt.models.load import load_chat_model
from personagpt.models.precision import serving_model
from personagpt.serve.completions import BestOfNJob
from personagpt.serve.errors import ApiError
from personagpt.serve.metrics import Metrics


@dataclass
class ServerSettings:
    """How ``personagpt serve`` runs; every field is a flag of the command."""

    model: str | None = None
    device: str | None = None
    precision: str = "auto"  # auto: bf16 weights on CPUs fast at bf16; no: fp32
    max_batch: int = 16
    max_queue: int = 64
    max_context: int = DEFAULT_CONTEXT
    prefix_cache_tokens: int = 8192
    api_key: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 1 << 20
    personas_path: Path | None = None
    upstream: str | None = None  # an OpenAI-compatible engine's URL: it generates, we serve (serve/upstream.py)
    upstream_model: str | None = None
    upstream_timeout: float = 120.0  # seconds without an answer before a 504


class AppState:
    """What the app holds: the engine once the model is loaded, or why it failed."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.engine: Engine | None = None  # once the model is loaded
        self.upstream = None  # serve --upstream: a serve.upstream.Upstream instead of the engine
        self.model_name = "personagpt"
        self.load_error: str | None = None
        self.personas: list[list[str]] = []
        self.precision = ""
        self.metrics = Metrics(lambda: self.engine)
        self._labeler = None
        self._labeler_lock = threading.Lock()

    def load(self, loader=None, on_ready=None) -> None:
        """Load the model (``loader()`` -> ``(model, PromptFormat)``; default: the settings' model) or connect the
        upstream; then ``on_ready(health)``. A failure is kept for /health: the process stays up to say so."""
        settings = self.settings
        try:
            self.personas = load_personas(resolve_personas_path(settings.personas_path))
            if settings.upstream:
                from personagpt.serve.upstream import Upstream  # httpx, needed only in front of another engine

                self.model_name = settings.upstream_model or "personagpt-upstream"
                self.upstream = Upstream(settings.upstream, settings.upstream_model, settings.upstream_timeout)
                if on_ready is not None:
                    on_ready({"model": f"{self.model_name} (upstream)", "precision": "the upstream's",
                              "max_batch": "the upstream's", "max_context": settings.max_context,
                              "decoding": f"the upstream engine at {self.upstream.url}"})
                return
            model, fmt = loader() if loader else load_chat_model(settings.model, device=settings.device)
            model = serving_model(model, settings.precision, fmt)
            self.model_name = Path(settings.model).name if settings.model else "personagpt"  # as the README calls it
            self.precision = str(model.dtype).removeprefix("torch.")
            self.engine = Engine(model, fmt, max_batch=settings.max_batch, max_queue=settings.max_queue,
                                 capacity=settings.max_context,
                                 prefix_cache_tokens=settings.prefix_cache_tokens)
        except Exception as error:  # reported by /health; the process stays up to say so
            self.load_error = f"{type(error).__name__}: {error}"
            return
        if on_ready is not None:
            on_ready(self.health())

    def health(self) -> dict:
        engine = self.engine
        return {"status": "ok", "model": self.model_name, "precision": self.precision,
                "decoding": engine.describe(), "backend": engine.backend, "max_batch": engine.max_batch,
                "max_context": engine.capacity}

    def ready_engine(self) -> Engine:
        """The engine; 503 while the model loads or after it failed to."""
        if self.engine is None:
            raise ApiError(503, "the model is still loading" if self.load_error is None else
                           f"the model failed to load: {self.load_error}", kind="server_error",
                           headers={"Retry-After": "5"})
        return self.engine

    def ready(self) -> None:
        """503 until the model (or the upstream's settings) is loaded."""
        if self.upstream is None:
            self.ready_engine()

    @contextmanager
    def queue_room(self) -> Iterator[None]:
        """A full engine queue is a 503 with Retry-After, counted."""
        try:
            yield
        except QueueFullError as e:
            self.metrics.rejected.inc()
            raise ApiError(503, str(e), kind="server_error", headers={"Retry-After": "1"}) from None

    def submit(self, prompt: list[int], cfg: SamplingConfig, generator, logprobs: int | None,
               guide_prompt: list[int] | None = None, guidance: float = 1.0):
        with self.queue_room():
            return self.ready_engine().submit(prompt, cfg, generator, loop=asyncio.get_running_loop(),
                                              logprobs=logprobs, guide_prompt=guide_prompt, guidance=guidance)

    def submit_best_of_n(self, prompt: list[int], cfg: SamplingConfig, conversation: Conversation,
                         logprobs: int | None = None) -> BestOfNJob:
        """The N requests of a best-of-N turn, as one job (they count against the batch like N users; the
        log-probabilities, when asked for, are the chosen reply's)."""
        engine = self.ready_engine()
        guide = conversation.guide_request(prompt, cfg)
        with self.queue_room():
            requests = engine.submit_many(prompt, cfg.num_candidates, cfg, conversation.generator,
                                          loop=asyncio.get_running_loop(), logprobs=logprobs, **guide)
        # The scores come from the engine's rows (no model pass). Without a guide row, no persona/goal PMI: a
        # stateless request has no reference cache from its previous turn, so that pass would re-encode the whole
        # history in a worker thread beside the engine (16 users at best of 4: a turn's p95 went to 48 s;
        # bench/README.md, "Best replies by default"); a guided request's guide row is that reference, for free.
        if guide["guide_prompt"] is None:
            conversation.weights = RerankWeights(persona=0.0, goal=0.0)
        return BestOfNJob(requests, cfg.commit_tokens, engine.fmt.eos_id, lambda replies, finished: conversation.choose(
            prompt, replies, finished, *recorded_scores(requests, replies, finished)))

    def goal_accepted(self, goal: str, text: str) -> bool | None:
        """Whether the goal labeler accepts ``text`` as pursuing ``goal`` (the semantic labeler when its encoder
        is installed, else the rules); None when it cannot tell."""
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
