"""What every fault kind shares: targeting, timing, a seeded RNG, field validation.

A fault kind is one small class (as Toxiproxy's toxics): it says whether it applies to
an operation at a scenario time and what it does. Kinds register themselves by name,
so adding one touches its own module and the docs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, ClassVar

from ..config import ConfigError
from ..patterns import match_channel

OPS = ("subscribe", "publish", "send", "connect", "deliver")
ROUTED_OPS = ("subscribe", "unsubscribe", "publish", "send")

KINDS: dict[str, type[Fault]] = {}


def register(cls: type[Fault]) -> type[Fault]:
    KINDS[cls.kind] = cls
    return cls


class FaultSpecError(ConfigError):
    """An invalid fault spec; the message names the field (`faults[2].probability: ...`)."""


# -- effects the engine hands to the adapter -----------------------------------------------

@dataclass(frozen=True, slots=True)
class Fail:
    """Answer a routed operation with this error code instead of routing it."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Delay:
    """Wait `seconds` before routing (`before_delivery`) or before the ack (`before_ack`)."""

    seconds: float
    where: str


@dataclass(frozen=True, slots=True)
class ConnectionStrike:
    """A one-shot action against a fraction of connections (drop, deploy, close)."""

    fault_id: str
    action: str  # "drop" | "going_away" | "close"
    fraction: float
    code: int
    retry_after_ms: int
    apps: tuple[str, ...] | None
    channels: str | None


# -- reading a spec ---------------------------------------------------------------------------

class SpecReader:
    """Reads one fault table; every error names `path.field`."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise FaultSpecError(f"{path}: must be a table, got {type(data).__name__}")
        self.data = data
        self.path = path
        self.seen: set[str] = {"kind", "id"}

    def fail(self, name: str, problem: str) -> FaultSpecError:
        return FaultSpecError(f"{self.path}.{name}: {problem}")

    def get(self, name: str, default: Any = None) -> Any:
        self.seen.add(name)
        return self.data.get(name, default)

    def number(self, name: str, default: float | None, *, minimum: float | None = None,
               maximum: float | None = None, exclusive_min: bool = False) -> Any:
        value = self.get(name, default)
        if value is None:
            if default is None and name in self.data:
                raise self.fail(name, "must be a number")
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(name, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise self.fail(name, f"must be a finite number, got {value!r}")
        if minimum is not None and (value < minimum or (exclusive_min and value == minimum)):
            op = ">" if exclusive_min else ">="
            raise self.fail(name, f"must be {op} {minimum:g}, got {value!r}")
        if maximum is not None and value > maximum:
            raise self.fail(name, f"must be <= {maximum:g}, got {value!r}")
        return value

    def choice(self, name: str, default: str | None, choices: tuple[str, ...]) -> Any:
        value = self.get(name, default)
        if value not in choices:
            raise self.fail(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def strings(self, name: str, choices: tuple[str, ...] | None = None
                ) -> tuple[str, ...] | None:
        value = self.get(name, None)
        if value is None:
            return None
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(
                isinstance(v, str) and v for v in value):
            raise self.fail(name, f"must be a non-empty list of strings, got {value!r}")
        for v in value:
            if choices and v not in choices:
                raise self.fail(name, f"{v!r} is not one of {', '.join(choices)}")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.fail(unknown[0], "unknown field for this kind")


# -- the base class ---------------------------------------------------------------------------

class Fault:
    """One configured fault. Subclasses set `kind` and override the hooks they need."""

    kind: ClassVar[str]
    one_shot: ClassVar[bool] = False  # fires once at `at_s` instead of over a window
    default_ops: ClassVar[tuple[str, ...]] = ROUTED_OPS

    def __init__(self, spec: SpecReader, fault_id: str, seed: int) -> None:
        self.id = fault_id
        self.spec = dict(spec.data)
        self.spec.setdefault("id", fault_id)
        self.apps = spec.strings("apps")
        ops = spec.strings("ops", (*OPS, "unsubscribe"))
        self.ops = ops if ops is not None else self.default_ops
        channels = spec.get("channels")
        if channels is not None and (not isinstance(channels, str) or not channels):
            raise spec.fail("channels", f"must be a glob pattern string, got {channels!r}")
        self.channels: str | None = channels
        if self.one_shot:
            self.at_s = spec.number("at_s", 0.0, minimum=0)
            self.start_s, self.end_s = self.at_s, self.at_s
        else:
            self.start_s = spec.number("start_s", 0.0, minimum=0)
            self.end_s = spec.number("end_s", None, minimum=0)
            if self.end_s is not None and self.end_s <= self.start_s:
                raise spec.fail("end_s", f"must be > start_s ({self.start_s:g}), "
                                         f"got {self.end_s!r}")
        self.rng = random.Random(f"{seed}:{fault_id}")
        self._gap: int | None = None  # trials left before the next hit (hit_positions)
        self.fired = False
        self.hits = 0  # decisions that took effect, for /sim/v1/faults

    def active(self, t: float) -> bool:
        return self.start_s <= t and (self.end_s is None or t < self.end_s)

    def targets(self, op: str, app_id: str, channel: str | None) -> bool:
        if op not in self.ops:
            return False
        if self.apps is not None and app_id not in self.apps:
            return False
        if self.channels is not None:
            return channel is not None and match_channel(self.channels, channel)
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

    # Hooks: the engine calls these only for faults that are active and target the op.
    def on_route(self, op: str, t: float) -> Fail | Delay | None:
        return None

    # Delivery faults: each recipient they hit gets this many copies (0: lost).
    copies_on_hit: int | None = None
    probability: float = 0.0

    def strike(self) -> ConnectionStrike | None:
        return None

    def buffer_limit(self) -> int | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {**self.spec, "id": self.id, "kind": self.kind, "hits": self.hits}
