"""`loss` and `duplicate`: each delivery to a recipient is dropped or sent twice.

Decided per recipient, so clients and the harness can count exactly what was lost.
"""

from __future__ import annotations

from .base import Fault, SpecReader, register


class _DeliveryFault(Fault):
    default_ops = ("deliver",)

    def __init__(self, spec: SpecReader, fault_id: str, seed: int) -> None:
        super().__init__(spec, fault_id, seed)
        self.probability = spec.number("probability", None, minimum=0, maximum=1)
        if self.probability is None:
            raise spec.fail("probability", "is required")


@register
class LossFault(_DeliveryFault):
    kind = "loss"

    def deliver_copies(self, t: float) -> int:
        if self.chance(self.probability):
            self.hits += 1
            return 0
        return 1


@register
class DuplicateFault(_DeliveryFault):
    kind = "duplicate"

    def deliver_copies(self, t: float) -> int:
        if self.chance(self.probability):
            self.hits += 1
            return 2
        return 1
