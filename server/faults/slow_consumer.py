"""`slow_consumer`: close (1008) a connection whose outbound buffer exceeds a bound."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..schema import Table
from .base import BufferFault, FaultSpec, register


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class SlowConsumerFault(BufferFault, FaultSpec):
    kind = "slow_consumer"

    max_buffer_bytes: int

    @classmethod
    def read_fields(cls, t: Table) -> dict[str, Any]:
        return {"max_buffer_bytes": int(t.number("max_buffer_bytes", 1 << 20, minimum=1))}

    def buffer_limit(self) -> int:
        return self.max_buffer_bytes
