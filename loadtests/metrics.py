"""Prometheus metrics of a Locust swarm, read from Locust's own statistics at scrape time.

Locust already aggregates every request (`runner.stats`: per (name, method) counts and
response times rounded to about two significant digits; failures per (method, name,
error)), and in a distributed run the master's stats are the sum of the workers'. So a
custom collector reads them when Prometheus scrapes: nothing is added per request, and
only the master (or a standalone runner) serves (`hooks`, `--rtmsim-metrics-port`).
Failure codes are the protocol's (`backend_error`, `4011`), as `reporting.CodeError`
carries them; this module does not import Locust (tests use it without gevent).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .reporting import CodeError

# Upper bounds in ms. Locust keeps response times rounded (to 1 ms below 100 ms, 10 ms
# below 1 s, 100 ms below 10 s), so a bucket edge is exact only to that rounding.
LATENCY_BOUNDS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
# A failure as a worker sends it to the master (its repr): CodeError('backend_error').
_CODE_ERROR_REPR = re.compile(r"""^CodeError\((['"])(.*)\1\)$""")
MAX_CODE_CHARS = 80  # a foreign exception's text is a label value: keep it bounded


def failure_code(error: object) -> str:
    """The protocol code of a failure as Locust keeps it: a `CodeError` (standalone) or
    its repr (in the master, from workers); `close 4011` is `4011`."""
    if isinstance(error, CodeError):
        text = error.code
    else:
        text = error if isinstance(error, str) else repr(error)
        found = _CODE_ERROR_REPR.match(text)
        if found:
            text = found.group(2)
    return text.removeprefix("close ")[:MAX_CODE_CHARS]


class SwarmCollector(Collector):
    """Locust's aggregated stats of `environment`, read each time it is collected."""

    def __init__(self, environment: Any) -> None:
        self.environment = environment

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        runner = self.environment.runner
        requests, failures, latency, users = families = self._families()
        if runner is None:
            return iter(families)
        stats = runner.stats
        for (name, method), entry in sorted(stats.entries.items()):
            requests.add_metric([name, method], entry.num_requests)
            _add_latency(latency, [name, method], entry.response_times,
                         entry.total_response_time)
        by_code: dict[tuple[str, str, str], int] = {}
        for error in stats.errors.values():
            key = (error.name, error.method, failure_code(error.error))
            by_code[key] = by_code.get(key, 0) + error.occurrences
        for labels, n in sorted(by_code.items()):
            failures.add_metric(list(labels), n)
        users.add_metric([], runner.user_count)
        return iter(families)

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily,
                             HistogramMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily("rtmsim_swarm_requests", "Requests reported to Locust, by op "
                                "(`deliver`: deliveries received).", labels=["op", "method"]),
            CounterMetricFamily("rtmsim_swarm_failures", "Failed requests, by op and protocol "
                                "code (an error code, or a close code).",
                                labels=["op", "method", "code"]),
            HistogramMetricFamily("rtmsim_swarm_request_duration_seconds", "Request latency "
                                  "(delivery: publish to delivery), from Locust's rounded "
                                  "response times.", labels=["op", "method"]),
            GaugeMetricFamily("rtmsim_swarm_users", "Users running."),
        )


def _add_latency(family: HistogramMetricFamily, labels: list[str],
                 response_times: dict[int, int], total_ms: float) -> None:
    """Locust's {rounded ms: count} as cumulative Prometheus buckets (seconds)."""
    counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    for ms, n in response_times.items():
        counts[bisect_left(LATENCY_BOUNDS_MS, ms)] += n
    buckets, total = [], 0
    for bound, n in zip(LATENCY_BOUNDS_MS, counts, strict=False):
        total += n
        buckets.append((floatToGoString(bound / 1000), total))
    buckets.append(("+Inf", total + counts[-1]))
    family.add_metric(labels, buckets, sum_value=total_ms / 1000)


def serve_metrics(environment: Any, port: int) -> Any:
    """Serve the swarm's metrics on 127.0.0.1:`port` (its own registry); the server,
    for `shutdown()`. An OSError when the port is taken."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SwarmCollector(environment))
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    return server
