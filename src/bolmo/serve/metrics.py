"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bolmo_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=r)
        self.generated_bytes = Counter("bolmo_generated_bytes", "new bytes sent to clients", registry=r)
        self.queue_depth = Gauge("bolmo_queue_depth", "requests waiting to join the batch", registry=r)
        self.batch_size = Gauge("bolmo_batch_size", "rows in the running decode batch", registry=r)
        self.latency = Histogram("bolmo_request_latency_seconds", "time from request to last byte",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.first_byte = Histogram("bolmo_time_to_first_byte_seconds", "time from request to first update",
                                    ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.step_seconds = Histogram("bolmo_step_seconds", "duration of one decode step of the batch",
                                      buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
                                      registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
