"""Prometheus metrics of the server (prometheus_client, one registry per app; scraped at /metrics).

Counters end in `_total` in the exposition; rates (requests/s, tokens/s over any window) are PromQL's
`rate()` of them. `tinyrlhf_generation_tokens_per_second` is the engine's own rate over the last 10 s,
for a glance without a Prometheus server.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # no `*_created` timestamp series next to every counter and histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tinyrlhf_requests", "API requests answered, by model, endpoint and HTTP status",
                                ["model", "endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("tinyrlhf_prompt_tokens", "Prompt tokens admitted", ["model"], registry=r)
        self.generation_tokens = Counter("tinyrlhf_generation_tokens", "Tokens generated", ["model"], registry=r)
        self.cancelled_requests = Counter("tinyrlhf_requests_cancelled", "Requests whose client went away before "
                                          "the end (their generation stopped)", ["model"], registry=r)
        self.timed_out_requests = Counter("tinyrlhf_requests_timed_out", "Requests cancelled by the timeout",
                                          ["model"], registry=r)
        self.rejected_requests = Counter("tinyrlhf_requests_rejected", "Requests answered 429 (queue full)",
                                         ["model"], registry=r)
        self.queue_depth = Gauge("tinyrlhf_queue_depth", "Requests waiting for a batch slot", ["model"], registry=r)
        self.running = Gauge("tinyrlhf_running_sequences", "Sequences in the running batch", ["model"], registry=r)
        self.tokens_per_second = Gauge("tinyrlhf_generation_tokens_per_second",
                                       "Tokens generated per second over the last 10 s", ["model"], registry=r)
        self.latency = Histogram("tinyrlhf_request_latency_seconds", "Time from arrival to the last token",
                                 ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("tinyrlhf_time_to_first_token_seconds", "Time from arrival to the first token",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tinyrlhf_decode_batch_size", "Rows sampled per decoding step", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)

    def watch(self, engine):
        """Gauges read from the engine at scrape time."""
        self.queue_depth.labels(engine.name).set_function(lambda: engine.queue_depth)
        self.running.labels(engine.name).set_function(lambda: engine.running)
        self.tokens_per_second.labels(engine.name).set_function(engine.tokens_per_second)

    # called by the engine thread (prometheus_client is thread-safe)
    def step(self, model: str, rows: int):
        self.generation_tokens.labels(model).inc(rows)
        self.batch_size.labels(model).observe(rows)

    def cancelled(self, model: str):
        self.cancelled_requests.labels(model).inc()

    def timed_out(self, model: str):
        self.timed_out_requests.labels(model).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
