"""Prometheus metrics, in a registry of the app's own (no import-time globals)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from llamacontroller.supervisor.manager import Supervisor

STATES = ("stopped", "starting", "ready", "stopping", "failed", "sleeping")


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


class _UsageCollector:
    """The usage writer's queue, read when scraped."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def collect(self) -> Any:
        depth = GaugeMetricFamily("llamacontroller_usage_queue_depth", "Usage rows waiting to be written")
        depth.add_metric([], self.writer.depth)
        failed = CounterMetricFamily(
            "llamacontroller_usage_rows_failed", "Usage rows the database refused or that found the queue full"
        )
        failed.add_metric([], self.writer.failed + self.writer.overflowed)
        yield from (depth, failed)


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
        self._children: dict[tuple[str, str, int], tuple[Any, ...]] = {}

    def watch_usage(self, writer: Any) -> None:
        self.registry.register(_UsageCollector(writer))

    def observe_request(self, row: dict[str, Any]) -> None:
        """Count one finished request (a usage row). Runs for every request: the labelled
        children are looked up once per (model, endpoint, status), not built each time."""
        key = (row["model"] or "", row["endpoint"], row["status"])
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = self._labelled(*key)
        requests, duration, ttft, prompt, completion = found
        requests.inc()
        duration.observe(row["duration_ms"] / 1000)
        if row["ttft_ms"] is not None:
            ttft.observe(row["ttft_ms"] / 1000)
        if row["prompt_tokens"]:
            prompt.inc(row["prompt_tokens"])
        if row["completion_tokens"]:
            completion.inc(row["completion_tokens"])

    def _labelled(self, model: str, endpoint: str, status: int) -> tuple[Any, ...]:
        return (
            self.requests.labels(model, endpoint, str(status)),
            self.duration.labels(model),
            self.ttft.labels(model),
            self.tokens.labels(model, "prompt"),
            self.tokens.labels(model, "completion"),
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
