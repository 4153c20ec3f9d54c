"""`GET /metrics` on the admin port: the server's counters in Prometheus' text format.

Nothing is counted twice: a custom collector reads, at scrape time, what `/sim/v1/stats`
shows (`stats.Stats`, the quota ledgers, the fault engine's hit counts) and the two
latency histograms the node fills as plain bucket counts (`stats.LatencyHistogram`).
Each scrape builds its own `CollectorRegistry`, so several servers in one process never
share the global registry. Every series has `instance` (the instance id; empty for a
lone server without `--instance-id`) and, where the counter is per app, `app`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .backend import BackendError
from .stats import AppCounters, LatencyHistogram

if TYPE_CHECKING:
    from .node import Node

__all__ = ["CONTENT_TYPE_LATEST", "ServerCollector", "exposition"]

# Per-app counters: (family, counter or gauge, help, where in `AppCounters.as_dict()`,
# the label naming the keys of a by-type/by-code dict, or None for one number).
APP_METRICS: tuple[tuple[str, str, str, tuple[str, ...], str | None], ...] = (
    ("rtmsim_connections_open", "gauge", "Connections open now.", ("connections", "now"),
     None),
    ("rtmsim_connections_peak", "gauge", "Most connections open at once.",
     ("connections", "peak"), None),
    ("rtmsim_connections_opened", "counter", "Connections accepted (welcomed).",
     ("connections", "total"), None),
    ("rtmsim_frames_received", "counter", "Frames received, by frame type.",
     ("frames_in",), "type"),
    ("rtmsim_frames_sent", "counter", "Frames sent, by frame type.", ("frames_out",), "type"),
    ("rtmsim_errors", "counter", "Errors answered (socket error frames and REST), by code.",
     ("errors",), "code"),
    ("rtmsim_closes", "counter", "Connections closed, by close code.", ("closes",), "code"),
    ("rtmsim_messages_published", "counter", "Publishes accepted (socket and REST).",
     ("messages", "published"), None),
    ("rtmsim_messages_sent", "counter", "Direct sends accepted.", ("messages", "sent"), None),
    ("rtmsim_messages_delivered", "counter", "Message and direct frames written to recipients.",
     ("messages", "delivered"), None),
)
# The plan's usage in the current period (`/v1/usage`): gauges, as a period rolls over.
# With Redis every instance reads the same shared ledger: aggregate with max, not sum.
QUOTA_METRICS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("rtmsim_quota_messages_used", "Messages charged in the current period.", ("messagesUsed",)),
    ("rtmsim_quota_messages_limit", "The plan's messages per period.",
     ("plan", "maxMessagesPerPeriod")),
    ("rtmsim_quota_overage_messages", "Messages beyond the plan this period.",
     ("overageMessages",)),
    ("rtmsim_quota_overage_connections", "Connections beyond the plan this period.",
     ("overageConnections",)),
    ("rtmsim_quota_balance", "The app's balance.", ("balance",)),
    ("rtmsim_quota_connections", "Connections the ledger counts now.", ("concurrentNow",)),
    ("rtmsim_quota_connections_limit", "The plan's concurrent connections.",
     ("plan", "maxConcurrentConnections")),
)


class ServerCollector(Collector):
    """One instance's counters, read when collected; `usage` is the ledgers' answer
    (fetched before, as it is async; an app whose ledger was unreachable is missing)."""

    def __init__(self, node: Node, usage: Mapping[str, Mapping[str, Any]]) -> None:
        self.node = node
        self.usage = usage
        self.instance = node.service.instance_id or ""

    def collect(self) -> Iterator[Metric]:
        stats = self.node.service.stats
        # Every configured app from the first scrape (zeros until it has traffic), so a
        # rate() has a start; plus what only the stats know (unauthenticated, "-").
        idle = {app.id: AppCounters() for app in self.node.config.apps}
        apps = sorted({**idle, **stats.apps}.items())
        counters = [(app, c.as_dict()) for app, c in apps]
        for name, kind, doc, path, key_label in APP_METRICS:
            labels = ["instance", "app"] + ([key_label] if key_label else [])
            family = _family(kind, name, doc, labels)
            for app, values in counters:
                value = _at(values, path)
                if key_label is None:
                    family.add_metric([self.instance, app], value)
                else:
                    for key, n in sorted(value.items()):
                        family.add_metric([self.instance, app, key], n)
            yield family
        yield from self._quota()
        publish = HistogramMetricFamily(
            "rtmsim_publish_seconds", "A socket publish's frame receipt until its ack "
            "(quota, injected latency, the fan-out written), once per message.",
            labels=["instance", "app"])
        for app, c in apps:
            _add_histogram(publish, [self.instance, app], c.publish_time)
        yield publish
        holds = HistogramMetricFamily(
            "rtmsim_hold_seconds", "Injected latency held before an ack, a delivery or a "
            "welcome (latency faults).", labels=["instance"])
        _add_histogram(holds, [self.instance], stats.holds)
        yield holds
        yield from self._faults_and_process()

    def _quota(self) -> Iterator[Metric]:
        for name, doc, path in QUOTA_METRICS:
            family = GaugeMetricFamily(name, doc, labels=["instance", "app"])
            for app, usage in sorted(self.usage.items()):
                family.add_metric([self.instance, app], float(_at(usage, path)))
            yield family

    def _faults_and_process(self) -> Iterator[Metric]:
        node = self.node
        hits = CounterMetricFamily("rtmsim_fault_hits", "Decisions of a fault that took "
                                   "effect.", labels=["instance", "fault", "kind"])
        for fault in node.faults.describe():
            hits.add_metric([self.instance, fault["id"], fault["kind"]], fault["hits"])
        yield hits
        up = GaugeMetricFamily("rtmsim_backend_up", "1 while the backend (Redis) answers.",
                               labels=["instance", "backend"])
        state = node.backend.state()
        up.add_metric([self.instance, state["kind"]], 1.0 if state.get("up", True) else 0.0)
        yield up
        refused = CounterMetricFamily("rtmsim_upgrades_refused", "Upgrades answered 503 as "
                                      "file descriptors ran out.", labels=["instance"])
        refused.add_metric([self.instance], node.descriptors.refused)
        yield refused


async def exposition(node: Node) -> bytes:
    """The text a scrape answers: this instance's collector and its process's usage."""
    now = node.clock()
    usage: dict[str, dict[str, Any]] = {}
    for app in node.config.apps:
        # An unreachable shared ledger leaves the app out; rtmsim_backend_up says why.
        with contextlib.suppress(BackendError):
            usage[app.id] = await node.ledgers.usage(app.id, now)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(node, usage))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, RSS, open fds
    return generate_latest(registry)


def _family(kind: str, name: str, doc: str, labels: list[str]) -> Metric:
    if kind == "counter":
        return CounterMetricFamily(name, doc, labels=labels)
    return GaugeMetricFamily(name, doc, labels=labels)


def _at(values: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        values = values[key]
    return values


def _add_histogram(family: HistogramMetricFamily, labels: list[str],
                   hist: LatencyHistogram) -> None:
    """Prometheus buckets are cumulative; ours count each bucket on its own."""
    buckets, total = [], 0
    for bound, n in zip(hist.bounds, hist.counts, strict=False):
        total += n
        buckets.append((floatToGoString(bound), total))
    buckets.append(("+Inf", total + hist.counts[-1]))
    family.add_metric(labels, buckets, sum_value=hist.sum)
