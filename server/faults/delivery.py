"""`loss` and `duplicate`: each delivery to a recipient is dropped or sent twice.

Decided per recipient, so clients and the harness can count exactly what was lost; the
engine draws the recipients hit by one message at once (`Fault.hit_positions`).
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
    copies_on_hit = 0


@register
class DuplicateFault(_DeliveryFault):
    kind = "duplicate"
    copies_on_hit = 2
