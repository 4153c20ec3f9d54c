"""`loss` and `duplicate`: each delivery to a recipient is dropped or sent twice.

Decided per recipient, so clients and the harness can count exactly what was lost; the
engine draws the recipients hit by one message at once (`Fault.hit_positions`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import DeliveryFault, FaultSpec, register


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class LossFault(DeliveryFault, FaultSpec):
    kind = "loss"
    takes_probability = needs_probability = True
    copies_on_hit = 0


@register
@dataclass(frozen=True, slots=True, kw_only=True)
class DuplicateFault(DeliveryFault, FaultSpec):
    kind = "duplicate"
    takes_probability = needs_probability = True
    copies_on_hit = 2
