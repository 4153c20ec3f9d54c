"""The fault engine: the active faults of one instance and their seeded decisions.

Pure: it is asked with an explicit `now` and answers with effects (`Fail`, `Delay`,
copies per delivery, one-shot strikes); the adapter performs them. Scenario time is
`now - origin`; the origin is the server start unless the harness sets it, so faults
can be aligned with a load run. Faults from the config get ids `f1`, `f2`, ... in
file order, and each draws from its own RNG seeded by (server seed, fault id): the
same seed and scenario give the same decisions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import delivery, error, latency, outage, slow_consumer, strikes  # noqa: F401 (register)
from .base import KINDS, ConnectionStrike, Delay, Fail, Fault, FaultSpecError, SpecReader


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

    def add(self, spec: object, path: str = "fault") -> Fault:
        """Validate a spec and add the fault; FaultSpecError names the bad field."""
        if not isinstance(spec, dict):
            raise FaultSpecError(f"{path}: must be a table/object, got {type(spec).__name__}")
        kind = spec.get("kind")
        cls = KINDS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise FaultSpecError(f"{path}.kind: must be one of {', '.join(sorted(KINDS))}, "
                                 f"got {kind!r}")
        fault_id = spec.get("id")
        counter = self._counter
        if fault_id is None:
            counter += 1
            while f"f{counter}" in self.faults:
                counter += 1
            fault_id = f"f{counter}"
        elif not isinstance(fault_id, str) or not fault_id or len(fault_id) > 64:
            raise FaultSpecError(f"{path}.id: must be a string of 1..64 characters")
        elif fault_id in self.faults:
            raise FaultSpecError(f"{path}.id: a fault with id {fault_id!r} exists")
        reader = SpecReader(spec, path)
        fault = cls(reader, fault_id, self.seed)
        reader.done()
        self._counter = counter  # only a valid spec uses up an id
        self.faults[fault_id] = fault
        self._refresh()
        return fault

    def load(self, specs: Iterable[object], path: str = "faults") -> None:
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
        base = Fault
        self._route = [f for f in faults if type(f).on_route is not base.on_route]
        self._deliver = [f for f in faults if f.copies_on_hit is not None]
        self._buffer = [f for f in faults if type(f).buffer_limit is not base.buffer_limit]
        self._strikes = [f for f in faults if f.one_shot]
        # Hot-path flags: with no fault of a family the adapter skips the call.
        self.has_route_faults = bool(self._route)
        self.has_delivery_faults = bool(self._deliver)
        self.has_buffer_faults = bool(self._buffer)

    # -- decisions -------------------------------------------------------------------------

    def on_route(self, op: str, app_id: str, channel: str | None, now: float
                 ) -> tuple[Fail | None, float, float]:
        """(failure, delay before routing, delay before the ack) for one operation.

        Every matching fault draws, in id order, so decisions stay reproducible; the
        first failure wins and delays add up.
        """
        t = now - self.origin
        fail: Fail | None = None
        before_delivery = before_ack = 0.0
        for fault in self._route:
            if not fault.active(t) or not fault.targets(op, app_id, channel):
                continue
            effect = fault.on_route(op, t)
            if effect is None:
                continue
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
            on_hit = fault.copies_on_hit
            assert on_hit is not None
            for i in fault.hit_positions(fault.probability, n):
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
        limits = [f.buffer_limit() for f in self._buffer
                  if f.active(t) and f.targets("deliver", app_id, None)]
        return min((x for x in limits if x is not None), default=None)

    def due_strikes(self, now: float) -> list[ConnectionStrike]:
        """One-shot faults whose time has come (each fires once per origin)."""
        t = now - self.origin
        due = []
        for fault in self._strikes:
            if not fault.fired and fault.at_s <= t:
                fault.fired = True
                fault.hits += 1
                strike = fault.strike()
                if strike is not None:
                    due.append(strike)
        return due

    def next_strike_in(self, now: float) -> float | None:
        """Seconds until the next unfired one-shot fault, or None."""
        t = now - self.origin
        waits = [f.at_s - t for f in self._strikes if not f.fired]
        return max(0.0, min(waits)) if waits else None

    def pick(self, strike: ConnectionStrike, candidates: list[Any]) -> list[Any]:
        """A seeded fraction of the candidates (connections sorted by id) for a strike."""
        fault = self.faults.get(strike.fault_id)
        if strike.fraction >= 1 or fault is None:
            return list(candidates)
        k = round(len(candidates) * strike.fraction)
        return fault.rng.sample(candidates, k) if k else []
