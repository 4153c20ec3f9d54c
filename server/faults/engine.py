"""The fault engine: the active faults of one instance and their seeded decisions.

Pure: it is asked with an explicit `now` and answers with effects (`Fail`, `Delay`,
copies per delivery, one-shot strikes); the adapter performs them. Scenario time is
`now - origin`; the origin is the server start unless the harness sets it, so faults
can be aligned with a load run. Faults from the config get ids `f1`, `f2`, ... in
file order, and each draws from its own RNG seeded by (server seed, fault id): the
same seed and scenario give the same decisions.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

from ..patterns import match_channel
from .base import (
    BufferFault,
    ConnectionStrike,
    Delay,
    DeliveryFault,
    Fail,
    FaultSpec,
    RouteFault,
    StrikeFault,
    check_id,
    next_fault_id,
    parse_fault,
)


class Fault:
    """One fault at work in an engine: its spec, its id, its seeded RNG, what it did."""

    def __init__(self, spec: FaultSpec, fault_id: str, seed: int) -> None:
        self.spec = spec
        self.id = fault_id
        self.rng = random.Random(f"{seed}:{fault_id}")
        self._gap: int | None = None  # trials left before the next hit (hit_positions)
        self.fired = False  # a one-shot fault, since the origin was set
        self.hits = 0  # decisions that took effect, for /sim/v1/faults

    @property
    def start_s(self) -> float:
        return self.spec.start_s

    @property
    def end_s(self) -> float | None:
        return self.spec.end_s

    def active(self, t: float) -> bool:
        spec = self.spec
        return spec.start_s <= t and (spec.end_s is None or t < spec.end_s)

    def targets(self, op: str, app_id: str, channel: str | None) -> bool:
        spec = self.spec
        if op not in spec.ops:
            return False
        if spec.apps is not None and app_id not in spec.apps:
            return False
        if spec.channels is not None:
            return channel is not None and match_channel(spec.channels, channel)
        return True

    def chance(self, probability: float) -> bool:
        """One seeded Bernoulli draw; always drawn, so the sequence is reproducible."""
        return self.rng.random() < probability

    def hit_positions(self, probability: float, n: int) -> list[int]:
        """Which of the next `n` Bernoulli(`probability`) trials succeed, as positions.

        Drawn as geometric gaps between successes, carried across calls: the same
        distribution as one draw per trial, at a cost that grows with the successes
        rather than with `n` (a fan-out to thousands of recipients with a 1% loss fault
        costs tens of draws, not thousands). Seeded, so as reproducible as `chance`.
        """
        if probability <= 0.0:
            return []
        at = self._gap if self._gap is not None else self._draw_gap(probability)
        positions = []
        while at < n:
            positions.append(at)
            at += 1 + self._draw_gap(probability)
        self._gap = at - n
        return positions

    def _draw_gap(self, probability: float) -> int:
        """Failures before the next success: P(k) = (1 - p)^k p."""
        if probability >= 1.0:
            return 0
        return int(math.log1p(-self.rng.random()) / math.log1p(-probability))

    def describe(self) -> dict[str, Any]:
        return {**self.spec.given, "id": self.id, "kind": self.spec.kind, "hits": self.hits}


class FaultEngine:
    def __init__(self, seed: int, origin: float) -> None:
        self.seed = seed
        self.origin = origin
        self.faults: dict[str, Fault] = {}
        self._counter = 0
        self._refresh()

    # -- configuration -----------------------------------------------------------------------

    def set_origin(self, origin: float) -> None:
        """Scenario time 0 is `origin` (unix seconds); one-shot faults re-arm."""
        self.origin = origin
        for fault in self.faults.values():
            fault.fired = False

    def scenario_time(self, now: float) -> float:
        return now - self.origin

    def add(self, spec: FaultSpec | object, path: str = "fault") -> Fault:
        """Add a fault from a parsed spec, or from a table it validates first (a
        FaultSpecError names the bad field); an id in use is refused either way."""
        if isinstance(spec, FaultSpec):
            check_id(spec.id, path, self.faults)
        else:
            spec = parse_fault(spec, path, taken_ids=self.faults)
        fault_id, self._counter = next_fault_id(spec.id, self.faults, self._counter)
        fault = self.faults[fault_id] = Fault(spec, fault_id, self.seed)
        self._refresh()
        return fault

    def load(self, specs: Iterable[FaultSpec | object], path: str = "faults") -> None:
        for i, spec in enumerate(specs):
            self.add(spec, f"{path}[{i}]")

    def remove(self, fault_id: str) -> bool:
        found = self.faults.pop(fault_id, None) is not None
        self._refresh()
        return found

    def clear(self) -> int:
        n = len(self.faults)
        self.faults.clear()
        self._refresh()
        return n

    def describe(self) -> list[dict[str, Any]]:
        return [f.describe() for f in self.faults.values()]

    def _refresh(self) -> None:
        faults = list(self.faults.values())
        self._route = [f for f in faults if isinstance(f.spec, RouteFault)]
        self._deliver = [f for f in faults if isinstance(f.spec, DeliveryFault)]
        self._buffer = [f for f in faults if isinstance(f.spec, BufferFault)]
        self._strikes = [f for f in faults if isinstance(f.spec, StrikeFault)]
        # Hot-path flags: with no fault of a family the adapter skips the call.
        self.has_route_faults = bool(self._route)
        self.has_delivery_faults = bool(self._deliver)
        self.has_buffer_faults = bool(self._buffer)

    # -- decisions -------------------------------------------------------------------------

    def on_route(self, op: str, app_id: str, channel: str | None, now: float
                 ) -> tuple[Fail | None, float, float]:
        """(failure, delay before routing, delay before the ack) for one operation.

        Every matching fault draws, in id order, so decisions stay reproducible; the
        first failure wins and delays add up. A fault's `probability` is applied here,
        for every kind alike (as Toxiproxy applies a toxic's `toxicity`).
        """
        t = now - self.origin
        fail: Fail | None = None
        before_delivery = before_ack = 0.0
        for fault in self._route:
            if not fault.active(t) or not fault.targets(op, app_id, channel):
                continue
            if not fault.chance(fault.spec.probability):
                continue
            fault.hits += 1
            effect = fault.spec.route_effect(fault.id, fault.rng)
            if isinstance(effect, Fail):
                fail = fail or effect
            elif isinstance(effect, Delay):
                if effect.where == "before_ack":
                    before_ack += effect.seconds
                else:
                    before_delivery += effect.seconds
        return fail, before_delivery, before_ack

    def delivery_faults(self, app_id: str, channel: str | None, now: float) -> list[Fault]:
        """The delivery faults acting on one message: checked once, not per recipient."""
        t = now - self.origin
        return [f for f in self._deliver if f.active(t) and f.targets("deliver", app_id, channel)]

    @staticmethod
    def delivery_plan(faults: list[Fault], n: int) -> dict[int, tuple[int, list[Fault]]]:
        """The recipients (positions among `n`) whose copy of one message the acting
        faults change: position -> (copies, the faults that hit it).

        Every acting fault draws, in id order, so decisions stay reproducible; a loss
        wins over a duplication. Recipients not in the plan get one copy.
        """
        plan: dict[int, tuple[int, list[Fault]]] = {}
        for fault in faults:
            spec = fault.spec
            assert isinstance(spec, DeliveryFault)
            on_hit = spec.copies_on_hit
            for i in fault.hit_positions(spec.probability, n):
                copies, hit_by = plan.get(i, (1, []))
                copies = 0 if on_hit == 0 or copies == 0 else max(copies, on_hit)
                plan[i] = (copies, [*hit_by, fault])
        return plan

    def deliver_copies(self, app_id: str, channel: str | None, now: float) -> int:
        """Copies of one delivery to one recipient (the plan of a single recipient)."""
        hit = self.delivery_plan(self.delivery_faults(app_id, channel, now), 1).get(0)
        if hit is None:
            return 1
        for fault in hit[1]:
            fault.hits += 1
        return hit[0]

    def buffer_limit(self, app_id: str, now: float) -> int | None:
        """The smallest active outbound-buffer bound for this app's connections."""
        t = now - self.origin
        return min((f.spec.buffer_limit() for f in self._buffer
                    if f.active(t) and f.targets("deliver", app_id, None)), default=None)

    def due_strikes(self, now: float) -> list[ConnectionStrike]:
        """One-shot faults whose time has come (each fires once per origin)."""
        t = now - self.origin
        due = []
        for fault in self._strikes:
            if not fault.fired and fault.start_s <= t:
                fault.fired = True
                fault.hits += 1
                due.append(fault.spec.strike(fault.id))
        return due

    def next_strike_in(self, now: float) -> float | None:
        """Seconds until the next unfired one-shot fault, or None."""
        t = now - self.origin
        waits = [f.start_s - t for f in self._strikes if not f.fired]
        return max(0.0, min(waits)) if waits else None

    def pick(self, strike: ConnectionStrike, candidates: list[Any]) -> list[Any]:
        """A seeded fraction of the candidates (connections sorted by id) for a strike."""
        fault = self.faults.get(strike.fault_id)
        if strike.fraction >= 1 or fault is None:
            return list(candidates)
        k = round(len(candidates) * strike.fraction)
        return fault.rng.sample(candidates, k) if k else []
