"""One-shot connection faults at `at_s`: `disconnect`, `deploy`, `close`.

`disconnect` drops sockets abruptly (no close frame), `deploy` sends `going_away` then
1001, `close` closes with any chosen code (an `admin_disconnect` storm is code 4020).
Each picks a seeded `fraction` of the targeted connections (by app, and by a channel
glob the connection is subscribed to).
"""

from __future__ import annotations

from ..codes import CloseCode
from .base import ConnectionStrike, Fault, SpecReader, register


class _Strike(Fault):
    one_shot = True
    default_ops = ("connect",)
    action = ""
    default_code = CloseCode.GOING_AWAY

    def __init__(self, spec: SpecReader, fault_id: str, seed: int) -> None:
        super().__init__(spec, fault_id, seed)
        self.fraction = spec.number("fraction", 1.0, minimum=0, maximum=1,
                                    exclusive_min=True)
        self.code = self.default_code
        self.retry_after_ms = 0

    def strike(self) -> ConnectionStrike:
        return ConnectionStrike(self.id, self.action, self.fraction, self.code,
                                self.retry_after_ms, self.apps, self.channels)


@register
class DisconnectFault(_Strike):
    kind = "disconnect"
    action = "drop"
    default_code = CloseCode.ABNORMAL_CLOSURE


@register
class DeployFault(_Strike):
    kind = "deploy"
    action = "going_away"

    def __init__(self, spec: SpecReader, fault_id: str, seed: int) -> None:
        super().__init__(spec, fault_id, seed)
        self.retry_after_ms = int(spec.number("retry_after_ms", 1000, minimum=0))


@register
class CloseFault(_Strike):
    kind = "close"
    action = "close"

    def __init__(self, spec: SpecReader, fault_id: str, seed: int) -> None:
        super().__init__(spec, fault_id, seed)
        code = spec.number("close_code", CloseCode.ADMIN_DISCONNECT, minimum=1000, maximum=4999)
        if int(code) != code or code in (1004, 1005, 1006, 1015):
            raise spec.fail("close_code", f"must be a whole, sendable close code, got {code!r}")
        self.code = int(code)
