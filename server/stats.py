"""Counters the service keeps for `/sim/v1/stats` and for reconciling with clients.

Counted per app only; totals are summed when asked for, so the hot path pays one
increment. Connections that never authenticated count under `UNAUTHENTICATED`.
The latency histograms are plain bucket counts (`/metrics` exposes them): the node
observes once per message, never per recipient.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from typing import Any

UNAUTHENTICATED = "-"
# Upper bounds (seconds, inclusive as Prometheus' `le`): from an in-memory fan-out
# (tens of microseconds) to injected latencies of seconds.
LATENCY_BOUNDS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LatencyHistogram:
    """Counts per bucket and a sum: one bisect and two additions per observation."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS_S) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)


class AppCounters:
    __slots__ = ("closes", "connections_now", "connections_peak", "connections_total",
                 "delivered", "errors", "frames_in", "frames_out", "publish_time",
                 "published", "sent")

    def __init__(self) -> None:
        self.connections_now = 0
        self.connections_peak = 0
        self.connections_total = 0
        self.frames_in: Counter[str] = Counter()
        self.frames_out: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()
        self.published = 0  # publishes accepted (socket and REST)
        self.sent = 0  # direct sends accepted
        self.delivered = 0  # message + direct frames handed to recipients
        # A socket publish's frame receipt until its ack: quota, injected latency, the
        # fan-out written. Observed by the core, once per message, whatever the driver.
        self.publish_time = LatencyHistogram()

    def connected(self) -> None:
        self.connections_now += 1
        self.connections_total += 1
        if self.connections_now > self.connections_peak:
            self.connections_peak = self.connections_now

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections": {"now": self.connections_now, "peak": self.connections_peak,
                            "total": self.connections_total},
            "frames_in": dict(self.frames_in),
            "frames_out": dict(self.frames_out),
            "errors": dict(self.errors),
            "closes": dict(self.closes),
            "messages": {"published": self.published, "sent": self.sent,
                         "delivered": self.delivered},
        }


class Stats:
    """All counters of one server instance."""

    def __init__(self) -> None:
        self.apps: dict[str, AppCounters] = {}
        self.connections_now = 0
        self.connections_peak = 0
        self.holds = LatencyHistogram()  # every injected latency held (apps not known)

    def connected(self) -> None:
        self.connections_now += 1
        if self.connections_now > self.connections_peak:
            self.connections_peak = self.connections_now

    def disconnected(self) -> None:
        self.connections_now -= 1

    def app(self, app_id: str) -> AppCounters:
        counters = self.apps.get(app_id)
        if counters is None:
            counters = self.apps[app_id] = AppCounters()
        return counters

    def totals(self) -> dict[str, Any]:
        total = AppCounters()
        for c in self.apps.values():
            total.connections_now += c.connections_now
            total.connections_peak += c.connections_peak
            total.connections_total += c.connections_total
            for name in ("frames_in", "frames_out", "errors", "closes"):
                getattr(total, name).update(getattr(c, name))
            total.published += c.published
            total.sent += c.sent
            total.delivered += c.delivered
        out = total.as_dict()
        out["connections"]["now"] = self.connections_now
        out["connections"]["peak"] = self.connections_peak  # apps' peaks need not coincide
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"totals": self.totals(),
                "apps": {app: c.as_dict() for app, c in sorted(self.apps.items())}}
