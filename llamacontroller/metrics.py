"""Prometheus metrics, in a registry of the app's own (no import-time globals): the controller's
series, and each running engine's own (llama-server `--metrics`, vLLM) re-exported with a
`model` label."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from llamacontroller.proxy.limits import ModelGate
    from llamacontroller.supervisor.manager import Supervisor

ENGINE_SCRAPE_TIMEOUT = 2.0  # a slow or hung engine leaves its series out, never stalls the scrape

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
        restarts = CounterMetricFamily(
            "llamacontroller_model_restarts", "Engine restarts after a crash", labels=["model"]
        )
        load = GaugeMetricFamily(
            "llamacontroller_model_load_seconds", "How long the model's last load took", labels=["model"]
        )
        for engine in self.supervisor.engines.values():
            restarts.add_metric([engine.id], engine.restarts)
            if engine.load_seconds is not None:
                load.add_metric([engine.id], engine.load_seconds)
            for name in STATES:
                state.add_metric([engine.id, name], 1.0 if engine.state.value == name else 0.0)
            in_flight.add_metric([engine.id], engine.in_flight)
            measured = engine.rss()
            if measured is not None:
                rss.add_metric([engine.id], measured)
            if engine.estimate_bytes is not None:
                estimate.add_metric([engine.id], engine.estimate_bytes)
        yield from (state, in_flight, rss, estimate, restarts, load)


class _GateCollector:
    """Requests waiting for a free slot, per model."""

    def __init__(self, gates: dict[str, ModelGate]) -> None:
        self.gates = gates

    def collect(self) -> Any:
        depth = GaugeMetricFamily(
            "llamacontroller_model_queue_depth", "Requests waiting for a free slot", labels=["model"]
        )
        for model_id, gate in list(self.gates.items()):
            depth.add_metric([model_id], gate.waiting)
        yield depth


class _Fixed:
    """Families built elsewhere (the engines' own), for generate_latest."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


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
        self.refusals = Counter(
            "llamacontroller_refused_requests",
            "Requests refused before reaching a model (401, 403, 413, 429 rate limits and busy models, 503)",
            ["status"],
            registry=self.registry,
        )
        self.supervisor = supervisor
        self.registry.register(_EngineCollector(supervisor))
        self._children: dict[tuple[str, str, int], tuple[Any, ...]] = {}

    def watch_usage(self, writer: Any) -> None:
        self.registry.register(_UsageCollector(writer))

    def watch_gates(self, gates: dict[str, ModelGate]) -> None:
        self.registry.register(_GateCollector(gates))

    def refused(self, status: int) -> None:
        self.refusals.labels(str(status)).inc()

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

    async def render(self) -> bytes:
        """The controller's series, then every running engine's, scraped now."""
        engines = list(self.supervisor.engines.values())
        texts = await asyncio.gather(*(engine.scrape_metrics(ENGINE_SCRAPE_TIMEOUT) for engine in engines))
        own = bytes(generate_latest(self.registry))
        scraped = [(engine.id, text) for engine, text in zip(engines, texts, strict=True) if text]
        if not scraped:
            return own
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(relabel(scraped)))
        return own + bytes(generate_latest(registry))


def relabel(scraped: list[tuple[str, str]]) -> list[Metric]:
    """Engines' exposition texts as one set of families, each sample labelled with its `model`
    (an engine's own `model` label, if any, is kept as `exported_model`, as Prometheus does). A
    text that does not parse is left out."""
    families: dict[str, Metric] = {}
    for model_id, text in scraped:
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:
            continue
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            elif merged.type != family.type:
                continue  # two engines disagree on a family's type: keep the first
            for sample in family.samples:
                labels = dict(sample.labels)
                if "model" in labels:
                    labels["exported_model"] = labels.pop("model")
                merged.add_sample(sample.name, {"model": model_id, **labels}, sample.value, sample.timestamp)
    return list(families.values())
