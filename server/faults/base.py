"""What every fault kind shares: the spec, its families, its effects, and parsing it.

A fault kind is one small frozen spec class (as Toxiproxy's toxics): parsed once from
a table, it says what it does when it hits. Targeting (apps, ops, channels), the time
window and `probability` (Toxiproxy's `toxicity`) are common to all kinds and applied
by the engine. Which hooks a kind has is its family, an explicit mixin: `RouteFault`
(answers routed operations), `DeliveryFault` (changes the copies a recipient gets),
`BufferFault` (bounds outbound buffers), `StrikeFault` (fires once at `at_s` against
connections). A kind registers itself by name from its own module.
"""

from __future__ import annotations

import copy
import random
from abc import ABC, abstractmethod
from collections.abc import Container
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from ..schema import ConfigError, Table

OPS = ("subscribe", "publish", "send", "connect", "deliver")
ROUTED_OPS = ("subscribe", "unsubscribe", "publish", "send")
DELIVER_OPS = ("deliver",)

# An invalid fault spec is a config problem like any other; the message names the field
# (`faults[2].probability: ...`). The REST API answers it with `invalid_fault`.
FaultSpecError = ConfigError

KINDS: dict[str, type[FaultSpec]] = {}
S = TypeVar("S", bound="type[FaultSpec]")


def register(cls: S) -> S:
    """Make a kind known by its name (a class decorator in the kind's module)."""
    KINDS[cls.kind] = cls
    return cls


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
    """A one-shot action against a fraction of connections (drop, deploy, close), or
    against the instance itself (pause: its event loop stalls for `pause_s`)."""

    fault_id: str
    action: str  # "drop" | "going_away" | "close" | "pause"
    fraction: float
    code: int
    retry_after_ms: int
    apps: tuple[str, ...] | None
    channels: str | None
    pause_s: float = 0.0


# -- the spec -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSpec:
    """One validated fault, as configured. Make it with `parse_fault`.

    `given` is the table as written: `describe` echoes it and `to_dict` hands it to
    another process, where `parse_fault` gives back an equal spec.
    """

    kind: ClassVar[str]
    default_ops: ClassVar[tuple[str, ...]] = ROUTED_OPS
    # Every spec has a `probability`, applied by the engine. Only kinds that take it read
    # it from their table (optional, default 1, or required); the others always hit.
    takes_probability: ClassVar[bool] = False
    needs_probability: ClassVar[bool] = False

    given: dict[str, Any]
    id: str | None  # None: the engine names it f1, f2, ... in order
    apps: tuple[str, ...] | None
    ops: tuple[str, ...]
    channels: str | None
    start_s: float
    end_s: float | None
    probability: float = 1.0

    @classmethod
    def read_fields(cls, t: Table) -> dict[str, Any]:
        """The kind's own fields from its table (after the common ones)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.given)


# -- families: which hooks a kind has --------------------------------------------------------

class RouteFault(ABC):
    """Answers routed operations (and connects) it hits with a failure or a delay."""

    __slots__ = ()

    @abstractmethod
    def route_effect(self, fault_id: str, rng: random.Random) -> Fail | Delay: ...


class DeliveryFault:
    """Changes the copies of a message a recipient it hits gets (0: lost)."""

    __slots__ = ()
    default_ops: ClassVar[tuple[str, ...]] = DELIVER_OPS
    copies_on_hit: ClassVar[int]


class BufferFault(ABC):
    """Bounds the outbound buffer of the connections it targets."""

    __slots__ = ()
    default_ops: ClassVar[tuple[str, ...]] = DELIVER_OPS

    @abstractmethod
    def buffer_limit(self) -> int: ...


class StrikeFault(ABC):
    """Fires once, at `at_s` (its `start_s` and `end_s`), against a fraction of the
    connections it targets."""

    __slots__ = ()
    default_ops: ClassVar[tuple[str, ...]] = ("connect",)

    @abstractmethod
    def strike(self, fault_id: str) -> ConnectionStrike: ...


# -- parsing ----------------------------------------------------------------------------------

def parse_fault(data: object, where: str = "fault", index: int | None = None, *,
                taken_ids: Container[str] = ()) -> FaultSpec:
    """Validate one fault table; the error names `where[index].field`.

    `taken_ids`: the ids already in use, which this fault's own id must not repeat.
    """
    path = where if index is None else f"{where}[{index}]"
    t = Table(data, path, noun="table/object", null_is_absent=True)
    kind = t.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise t.fail("kind", f"must be one of {', '.join(sorted(KINDS))}, got {kind!r}")
    fault_id = t.get("id")
    check_id(fault_id, path, taken_ids)
    common = _read_common(t, cls)
    if cls.takes_probability:
        common["probability"] = t.number("probability", None if cls.needs_probability else 1.0,
                                         minimum=0, maximum=1)
        if common["probability"] is None:
            raise t.fail("probability", "is required")
    fields = cls.read_fields(t)
    t.done("unknown field for this kind")
    return cls(given=copy.deepcopy(t.data), id=fault_id, **common, **fields)


def parse_faults(data: object, where: str = "faults") -> tuple[FaultSpec, ...]:
    """Validate an array of fault tables (`[[faults]]`), ids included, in file order."""
    if not isinstance(data, list):
        raise ConfigError(f"{where}: must be an array of tables ([[{where}]])")
    specs: list[FaultSpec] = []
    taken: set[str] = set()
    counter = 0
    for i, item in enumerate(data):
        spec = parse_fault(item, where, i, taken_ids=taken)
        fault_id, counter = next_fault_id(spec.id, taken, counter)
        taken.add(fault_id)
        specs.append(spec)
    return tuple(specs)


def check_id(fault_id: object, path: str, taken_ids: Container[str]) -> None:
    """A fault's own id: 1..64 characters, not one in use."""
    if fault_id is None:
        return
    if not isinstance(fault_id, str) or not fault_id or len(fault_id) > 64:
        raise FaultSpecError(f"{path}.id: must be a string of 1..64 characters")
    if fault_id in taken_ids:
        raise FaultSpecError(f"{path}.id: a fault with id {fault_id!r} exists")


def next_fault_id(fault_id: str | None, taken_ids: Container[str], counter: int
                  ) -> tuple[str, int]:
    """(the id a fault gets, the counter after it): its own id, or the first free
    `f<n>` after `counter`. Only a fault without an id moves the counter."""
    if fault_id is not None:
        return fault_id, counter
    counter += 1
    while f"f{counter}" in taken_ids:
        counter += 1
    return f"f{counter}", counter


def _read_common(t: Table, cls: type[FaultSpec]) -> dict[str, Any]:
    apps = t.strings("apps", None, non_empty=True, one_or_list=True)
    ops = t.strings("ops", cls.default_ops, choices=(*OPS, "unsubscribe"), non_empty=True,
                    one_or_list=True)
    channels = t.get("channels")
    if channels is not None and (not isinstance(channels, str) or not channels):
        raise t.fail("channels", f"must be a glob pattern string, got {channels!r}")
    if issubclass(cls, StrikeFault):
        start_s = end_s = t.number("at_s", 0.0, minimum=0)
    else:
        start_s = t.number("start_s", 0.0, minimum=0)
        end_s = t.number("end_s", None, minimum=0)
        if end_s is not None and end_s <= start_s:
            raise t.fail("end_s", f"must be > start_s ({start_s:g}), got {end_s!r}")
    return {"apps": apps, "ops": ops, "channels": channels, "start_s": start_s,
            "end_s": end_s}

