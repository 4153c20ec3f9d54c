"""One-shot faults at `at_s`: `disconnect`, `deploy`, `close`, `pause`.

`disconnect` drops sockets abruptly (no close frame), `deploy` sends `going_away` then
1001, `close` closes with any chosen code (an `admin_disconnect` storm is code 4020).
Each picks a seeded `fraction` of the targeted connections (by app, and by a channel
glob the connection is subscribed to). `pause` stalls the instance's event loop for
`seconds` (a stop-the-world pause, a blocked loop): nothing is read or answered
meanwhile, requests wait in the socket buffers, and all of them are served after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..codes import CloseCode
from ..schema import Table
from .base import ConnectionStrike, FaultSpec, StrikeFault, register


def _fraction(t: Table) -> float:
    """The share of the targeted connections a strike picks."""
    return t.number("fraction", 1.0, minimum=0, maximum=1, exclusive=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Strike(StrikeFault, FaultSpec):
    action: ClassVar[str]

    fraction: float
    code: int
    retry_after_ms: int = 0

    def strike(self, fault_id: str) -> ConnectionStrike:
        return ConnectionStrike(fault_id, self.action, self.fraction, self.code,
                                self.retry_after_ms, self.apps, self.channels)


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class DisconnectFault(_Strike):
    kind = "disconnect"
    action = "drop"

    @classmethod
    def read_fields(cls, t: Table) -> dict[str, Any]:
        return {"fraction": _fraction(t), "code": CloseCode.ABNORMAL_CLOSURE}


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class DeployFault(_Strike):
    kind = "deploy"
    action = "going_away"

    @classmethod
    def read_fields(cls, t: Table) -> dict[str, Any]:
        return {"fraction": _fraction(t), "code": CloseCode.GOING_AWAY,
                "retry_after_ms": int(t.number("retry_after_ms", 1000, minimum=0))}


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class CloseFault(_Strike):
    kind = "close"
    action = "close"

    @classmethod
    def read_fields(cls, t: Table) -> dict[str, Any]:
        fraction = _fraction(t)
        code = t.number("close_code", CloseCode.ADMIN_DISCONNECT, minimum=1000, maximum=4999)
        if int(code) != code or code in (1004, 1005, 1006, 1015):
            raise t.fail("close_code", f"must be a whole, sendable close code, got {code!r}")
        return {"fraction": fraction, "code": int(code)}


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class PauseFault(StrikeFault, FaultSpec):
    kind = "pause"

    seconds: float

    @classmethod
    def read_fields(cls, t: Table) -> dict[str, Any]:
        if "seconds" not in t.data:
            raise t.fail("seconds", "is required (how long the event loop stalls)")
        return {"seconds": float(t.number("seconds", None, minimum=0, exclusive=True))}

    def strike(self, fault_id: str) -> ConnectionStrike:
        return ConnectionStrike(fault_id, "pause", 0.0, 0, 0, self.apps, self.channels,
                                pause_s=self.seconds)
