"""`latency`: routing delay drawn from a distribution, before the ack or before delivery.

`before_delivery` holds the operation before it is routed (recipients and the ack both
wait); `before_ack` routes at once and holds only the ack.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from ..schema import Table
from .base import Delay, FaultSpec, RouteFault, register

DISTRIBUTIONS = ("fixed", "uniform", "exponential", "lognormal")
WHERE = ("before_ack", "before_delivery")


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class LatencyFault(RouteFault, FaultSpec):
    kind = "latency"
    takes_probability = True

    distribution: str
    where: str
    cap_ms: float
    # The parameters of the distribution (the others stay None).
    ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    median_ms: float | None = None
    sigma: float | None = None

    @classmethod
    def read_fields(cls, t: Table) -> dict[str, Any]:
        d = t.choice("distribution", "fixed", DISTRIBUTIONS)
        fields: dict[str, Any] = {"distribution": d,
                                  "where": t.choice("where", "before_delivery", WHERE)}
        if d == "fixed":
            fields["ms"] = t.number("ms", None, minimum=0)
            if fields["ms"] is None:
                raise t.fail("ms", "is required for a fixed distribution")
        elif d == "uniform":
            fields["min_ms"] = t.number("min_ms", 0.0, minimum=0)
            fields["max_ms"] = t.number("max_ms", None, minimum=0)
            if fields["max_ms"] is None or fields["max_ms"] < fields["min_ms"]:
                raise t.fail("max_ms", "is required and must be >= min_ms")
        elif d == "exponential":
            fields["mean_ms"] = t.number("mean_ms", None, minimum=0, exclusive=True)
            if fields["mean_ms"] is None:
                raise t.fail("mean_ms", "is required for an exponential distribution")
        else:
            fields["median_ms"] = t.number("median_ms", None, minimum=0, exclusive=True)
            fields["sigma"] = t.number("sigma", 0.5, minimum=0)
            if fields["median_ms"] is None:
                raise t.fail("median_ms", "is required for a lognormal distribution")
        fields["cap_ms"] = t.number("cap_ms", 60_000.0, minimum=0)
        return fields

    def sample_ms(self, rng: random.Random) -> float:
        d = self.distribution
        if d == "fixed":
            ms = self.ms
        elif d == "uniform":
            ms = rng.uniform(self.min_ms, self.max_ms)
        elif d == "exponential":
            ms = rng.expovariate(1.0 / self.mean_ms)
        else:
            ms = rng.lognormvariate(math.log(self.median_ms), self.sigma)
        return min(ms, self.cap_ms)

    def route_effect(self, fault_id: str, rng: random.Random) -> Delay:
        return Delay(self.sample_ms(rng) / 1000.0, self.where)
