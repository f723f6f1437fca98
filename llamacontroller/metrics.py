"""Prometheus metrics, in a registry of the app's own (no import-time globals)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from llamacontroller.supervisor.manager import Supervisor

STATES = ("stopped", "starting", "ready", "stopping", "failed")


class _EngineCollector:
    """Reads engine state when scraped, so there is nothing to keep in sync."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Any:
        state = GaugeMetricFamily(
            "llamacontroller_model_state", "1 for the state each model is in", labels=["model", "state"]
        )
        in_flight = GaugeMetricFamily(
            "llamacontroller_model_in_flight", "Requests in flight per model", labels=["model"]
        )
        rss = GaugeMetricFamily("llamacontroller_model_rss_bytes", "Resident memory of each engine", labels=["model"])
        estimate = GaugeMetricFamily(
            "llamacontroller_model_memory_estimate_bytes", "Estimated memory need", labels=["model"]
        )
        for engine in self.supervisor.engines.values():
            for name in STATES:
                state.add_metric([engine.id, name], 1.0 if engine.state.value == name else 0.0)
            in_flight.add_metric([engine.id], engine.in_flight)
            measured = engine.rss()
            if measured is not None:
                rss.add_metric([engine.id], measured)
            if engine.estimate_bytes is not None:
                estimate.add_metric([engine.id], engine.estimate_bytes)
        yield from (state, in_flight, rss, estimate)


class Metrics:
    def __init__(self, supervisor: Supervisor) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llamacontroller_requests", "Inference requests", ["model", "endpoint", "status"], registry=self.registry
        )
        self.tokens = Counter("llamacontroller_tokens", "Tokens processed", ["model", "kind"], registry=self.registry)
        self.duration = Histogram(
            "llamacontroller_request_duration_seconds",
            "Whole request time",
            ["model"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.ttft = Histogram(
            "llamacontroller_time_to_first_byte_seconds",
            "Time to the engine's first byte",
            ["model"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.registry.register(_EngineCollector(supervisor))

    def observe_request(self, row: dict[str, Any]) -> None:
        model = row.get("model") or ""
        self.requests.labels(model, row.get("endpoint", ""), str(row.get("status", 0))).inc()
        self.duration.labels(model).observe(row.get("duration_ms", 0) / 1000)
        if row.get("ttft_ms") is not None:
            self.ttft.labels(model).observe(row["ttft_ms"] / 1000)
        if row.get("prompt_tokens"):
            self.tokens.labels(model, "prompt").inc(row["prompt_tokens"])
        if row.get("completion_tokens"):
            self.tokens.labels(model, "completion").inc(row["completion_tokens"])

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
