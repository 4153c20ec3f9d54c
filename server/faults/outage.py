"""`outage`: the backend is down for the window ("Redis blip", in-memory backend race).

Every routed operation it targets fails with `backend_error`, exactly as a real Redis
outage does with the Redis backend; local-only work (ping, validation) goes on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ..schema import Table
from .base import Fail, FaultSpec, RouteFault, register


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class OutageFault(RouteFault, FaultSpec):
    kind = "outage"

    message: str

    @classmethod
    def read_fields(cls, t: Table) -> dict[str, Any]:
        message = t.get("message", "backend unavailable")
        if not isinstance(message, str):
            raise t.fail("message", "must be a string")
        return {"message": message}

    def route_effect(self, fault_id: str, rng: random.Random) -> Fail:
        return Fail("backend_error", self.message)
