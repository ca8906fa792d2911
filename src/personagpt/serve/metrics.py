"""Prometheus metrics of the server, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """Requests by path and status, tokens in and out, queue depth, active sequences, latency histograms."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine) -> None:
        """``engine()`` returns the running Engine, or None while the model loads."""
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("personagpt_requests", "HTTP requests by path and status", ["path", "status"],
                                registry=registry)
        self.rejected = Counter("personagpt_rejected_full_queue", "Requests answered 503 because the queue was full",
                                registry=registry)
        self.prompt_tokens = Counter("personagpt_prompt_tokens", "Prompt tokens of finished generations",
                                     registry=registry)
        self.cached_tokens = Counter("personagpt_cached_prompt_tokens", "Prompt tokens reused from the prefix cache",
                                     registry=registry)
        self.completion_tokens = Counter("personagpt_completion_tokens", "Generated tokens", registry=registry)
        self.ttft = Histogram("personagpt_time_to_first_token_seconds", "From submission to the first token",
                              buckets=LATENCY_BUCKETS, registry=registry)
        self.turn = Histogram("personagpt_turn_seconds", "From submission to the last token of a reply",
                              buckets=LATENCY_BUCKETS, registry=registry)
        queue = Gauge("personagpt_queue_depth", "Requests waiting for a slot", registry=registry)
        queue.set_function(lambda: engine().queue_depth if engine() else 0)
        active = Gauge("personagpt_active_sequences", "Requests decoding now", registry=registry)
        active.set_function(lambda: engine().active if engine() else 0)

    def count(self, path: str, status: int) -> None:
        known = path if path.startswith("/v1/") or path in ("/health", "/metrics", "/") else "other"
        self.requests.labels(known, str(status)).inc()

    def observe(self, job) -> None:
        """Record a finished generation."""
        self.prompt_tokens.inc(len(job.prompt))
        self.cached_tokens.inc(job.cached_tokens)
        self.completion_tokens.inc(len(job.tokens))
        if job.first_token_at is not None:
            self.ttft.observe(job.first_token_at - job.submitted)
        if job.finished_at is not None:
            self.turn.observe(job.finished_at - job.submitted)

    def render(self) -> bytes:
        return generate_latest(self.registry)
