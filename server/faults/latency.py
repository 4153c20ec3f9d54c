"""`latency`: routing delay drawn from a distribution, before the ack or before delivery.

`before_delivery` holds the operation before it is routed (recipients and the ack both
wait); `before_ack` routes at once and holds only the ack.
"""

from __future__ import annotations

import math

from .base import Delay, Fault, SpecReader, register

DISTRIBUTIONS = ("fixed", "uniform", "exponential", "lognormal")
WHERE = ("before_ack", "before_delivery")


@register
class LatencyFault(Fault):
    kind = "latency"
    default_ops = ("subscribe", "unsubscribe", "publish", "send")

    def __init__(self, spec: SpecReader, fault_id: str, seed: int) -> None:
        super().__init__(spec, fault_id, seed)
        self.distribution = spec.choice("distribution", "fixed", DISTRIBUTIONS)
        self.where = spec.choice("where", "before_delivery", WHERE)
        self.probability = spec.number("probability", 1.0, minimum=0, maximum=1)
        d = self.distribution
        if d == "fixed":
            self.ms = spec.number("ms", None, minimum=0)
            if self.ms is None:
                raise spec.fail("ms", "is required for a fixed distribution")
        elif d == "uniform":
            self.min_ms = spec.number("min_ms", 0.0, minimum=0)
            self.max_ms = spec.number("max_ms", None, minimum=0)
            if self.max_ms is None or self.max_ms < self.min_ms:
                raise spec.fail("max_ms", "is required and must be >= min_ms")
        elif d == "exponential":
            self.mean_ms = spec.number("mean_ms", None, minimum=0, exclusive_min=True)
            if self.mean_ms is None:
                raise spec.fail("mean_ms", "is required for an exponential distribution")
        else:
            self.median_ms = spec.number("median_ms", None, minimum=0, exclusive_min=True)
            self.sigma = spec.number("sigma", 0.5, minimum=0)
            if self.median_ms is None:
                raise spec.fail("median_ms", "is required for a lognormal distribution")
        self.cap_ms = spec.number("cap_ms", 60_000.0, minimum=0)

    def sample_ms(self) -> float:
        d, rng = self.distribution, self.rng
        if d == "fixed":
            ms = self.ms
        elif d == "uniform":
            ms = rng.uniform(self.min_ms, self.max_ms)
        elif d == "exponential":
            ms = rng.expovariate(1.0 / self.mean_ms)
        else:
            ms = rng.lognormvariate(math.log(self.median_ms), self.sigma)
        return min(ms, self.cap_ms)

    def on_route(self, op: str, t: float) -> Delay | None:
        if not self.chance(self.probability):
            return None
        self.hits += 1
        return Delay(self.sample_ms() / 1000.0, self.where)
