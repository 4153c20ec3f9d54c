"""`error`: answer a fraction of routed operations with `backend_error` or `internal_error`."""

from __future__ import annotations

from .base import Fail, Fault, SpecReader, register

CODES = ("backend_error", "internal_error")


@register
class ErrorFault(Fault):
    kind = "error"

    def __init__(self, spec: SpecReader, fault_id: str, seed: int) -> None:
        super().__init__(spec, fault_id, seed)
        self.code = spec.choice("code", "backend_error", CODES)
        self.probability = spec.number("probability", 1.0, minimum=0, maximum=1)

    def on_route(self, op: str, t: float) -> Fail | None:
        if self.chance(self.probability):
            self.hits += 1
            return Fail(self.code, f"injected {self.code} (fault {self.id})")
        return None
