"""Load shapes: step ramp (capacity search), spike, soak.

Each is a Locust `LoadTestShape` whose numbers come from the swarm settings
(`[swarm.shape]`, read from the runner's environment), so a scenario picks a shape
without writing code. The schedules themselves are `loadtests.schedules`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from locust import LoadTestShape

from .schedules import SCHEDULES, target
from .swarmconfig import settings_for


class Shape(LoadTestShape):
    """One of `SCHEDULES`, by `name`."""

    abstract = True
    name: ClassVar[str]

    @property
    def defaults(self) -> dict[str, Any]:
        return SCHEDULES[self.name][1]

    def tick(self) -> tuple[int, float] | None:
        environment = self.runner.environment if self.runner is not None else None
        return target(self.name, self.get_run_time(), settings_for(environment).shape_params)


class StepRamp(Shape):
    """Add `step_users` every `step_s` up to `max_users`; stop after `duration_s`."""

    name = "step_ramp"


class Spike(Shape):
    """`base_users`, jumping to `spike_users` between `spike_at_s` and `spike_end_s`."""

    name = "spike"


class Soak(Shape):
    """A steady `users` for a long `duration_s` (leaks, drift, slow degradation)."""

    name = "soak"


SHAPES = {cls.name: cls for cls in (StepRamp, Spike, Soak)}
