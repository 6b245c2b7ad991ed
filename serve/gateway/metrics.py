"""Prometheus metrics of the gateway, labelled by adapter (the model's NAME, or the base) and
API key id. Each app has its own registry, so several gateways can live in one process."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class GatewayMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine_restarts: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry()
        if engine_restarts is not None:  # `gemlora serve`'s supervisor counts them
            self.registry.register(_EngineRestarts(engine_restarts))
        labels = ("adapter", "key_id")
        self.requests = Counter(
            "gemlora_gateway_requests",
            "Chat completion requests answered, by HTTP status.",
            (*labels, "status"),
            registry=self.registry,
        )
        self.errors = Counter(
            "gemlora_gateway_errors",
            "Requests answered with an error, by error code.",
            (*labels, "code"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "gemlora_gateway_request_seconds",
            "Time from request to the last byte of the answer.",
            (*labels, "stream"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "gemlora_gateway_time_to_first_token_seconds",
            "Time from request to the first streamed token.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens_in = Counter(
            "gemlora_gateway_prompt_tokens", "Prompt tokens.", labels, registry=self.registry
        )
        self.tokens_out = Counter(
            "gemlora_gateway_completion_tokens",
            "Completion tokens.",
            labels,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineRestarts:
    """`gemlora_engine_restarts_total`: read from the supervisor at each scrape."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count

    def collect(self):
        family = CounterMetricFamily(
            "gemlora_engine_restarts", "Times gemlora serve restarted a crashed engine."
        )
        family.add_metric([], self.count())
        yield family
