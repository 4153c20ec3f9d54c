"""`slow_consumer`: close (1008) a connection whose outbound buffer exceeds a bound."""

from __future__ import annotations

from .base import Fault, SpecReader, register


@register
class SlowConsumerFault(Fault):
    kind = "slow_consumer"
    default_ops = ("deliver",)

    def __init__(self, spec: SpecReader, fault_id: str, seed: int) -> None:
        super().__init__(spec, fault_id, seed)
        self.max_buffer_bytes = int(spec.number("max_buffer_bytes", 1 << 20, minimum=1))

    def buffer_limit(self) -> int:
        return self.max_buffer_bytes
