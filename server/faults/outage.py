"""`outage`: the backend is down for the window ("Redis blip", in-memory backend race).

Every routed operation it targets fails with `backend_error`, exactly as a real Redis
outage does with the Redis backend; local-only work (ping, validation) goes on.
"""

from __future__ import annotations

from .base import Fail, Fault, SpecReader, register


@register
class OutageFault(Fault):
    kind = "outage"

    def __init__(self, spec: SpecReader, fault_id: str, seed: int) -> None:
        super().__init__(spec, fault_id, seed)
        self.message = spec.get("message", "backend unavailable")
        if not isinstance(self.message, str):
            raise spec.fail("message", "must be a string")

    def on_route(self, op: str, t: float) -> Fail:
        self.hits += 1
        return Fail("backend_error", self.message)
