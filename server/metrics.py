"""Prometheus metrics of one app: executions, their durations, the pool's state, image bytes stored."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.containers.pool import SandboxPool

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# The statuses the center answers with; anything else (a hostile client cannot add labels) is "other".
KNOWN_STATUSES = frozenset({200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 410, 413, 415, 431,
                            500, 502, 503, 504, 507})


class PoolCollector(Collector):
    """Reads the pool's counts at scrape time, so the figures are never stale."""

    def __init__(self, pool: SandboxPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        """Gauges for the slots by state, counters for sandbox starts, failures and deaths."""
        stats = self.pool.stats()
        for state in ("slots", "ready", "busy", "starting"):
            yield GaugeMetricFamily(f"code_interpreter_pool_{state}", f"Sandbox slots: {state}", value=stats[state])
        yield CounterMetricFamily("code_interpreter_sandbox_starts", "Sandbox containers started",
                                  value=stats["started_total"])
        yield CounterMetricFamily("code_interpreter_sandbox_start_failures", "Sandbox containers that failed to start",
                                  value=stats["failed_total"])
        yield CounterMetricFamily("code_interpreter_sandbox_deaths", "Ready sandboxes found dead and replaced",
                                  value=stats["dead_total"])


class Metrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self, pool: SandboxPool) -> None:
        self.registry = CollectorRegistry()
        self.executions = Counter("code_interpreter_executions", "Programs run, by final status and language",
                                  ["status", "language"], registry=self.registry)
        self.duration = Histogram("code_interpreter_execution_duration_seconds", "Run time of programs",
                                  ["language"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.image_bytes = Counter("code_interpreter_image_bytes_stored", "Bytes of images stored",
                                   registry=self.registry)
        self.http_requests = Counter("code_interpreter_http_requests", "HTTP requests answered",
                                     ["method", "status"], registry=self.registry)
        self.egress_connections = Counter("code_interpreter_egress_connections",
                                          "Connections through the egress proxy, by outcome (allowed, refused, cut)",
                                          ["outcome"], registry=self.registry)
        self.egress_bytes = Counter("code_interpreter_egress_bytes", "Bytes through the egress proxy, by direction",
                                    ["direction"], registry=self.registry)
        self.registry.register(PoolCollector(pool))

    def count_request(self, method: str, status: int) -> None:
        """Count one answered request; the labels come from small fixed sets (hostile requests add none)."""
        self.http_requests.labels(method=method, status=str(status) if status in KNOWN_STATUSES else "other").inc()

    def observe_run(self, language: str, status: str, duration_ms: float | None) -> None:
        """Count one execution and its duration."""
        self.executions.labels(status=status, language=language).inc()
        if isinstance(duration_ms, (int, float)):
            self.duration.labels(language=language).observe(duration_ms / 1000)

    def count_egress(self, outcome: str, bytes_out: int, bytes_in: int) -> None:
        """Count one connection through the egress proxy and its bytes."""
        self.egress_connections.labels(outcome=outcome).inc()
        if bytes_out:
            self.egress_bytes.labels(direction="out").inc(bytes_out)
        if bytes_in:
            self.egress_bytes.labels(direction="in").inc(bytes_in)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
