"""`error`: answer a fraction of routed operations with `backend_error` or `internal_error`."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ..schema import Table
from .base import Fail, FaultSpec, RouteFault, register

CODES = ("backend_error", "internal_error")


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorFault(RouteFault, FaultSpec):
    kind = "error"
    takes_probability = True

    code: str

    @classmethod
    def read_fields(cls, t: Table) -> dict[str, Any]:
        return {"code": t.choice("code", "backend_error", CODES)}

    def route_effect(self, fault_id: str, rng: random.Random) -> Fail:
        return Fail(self.code, f"injected {self.code} (fault {fault_id})")
