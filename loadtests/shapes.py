"""Load shapes: step ramp (capacity search), spike, soak.

Each is a Locust `LoadTestShape` whose numbers come from the swarm settings
(`[swarm.shape]`, read from the runner's environment), so a scenario picks a shape
without writing code.
"""

from __future__ import annotations

from typing import Any

from locust import LoadTestShape

from .swarmconfig import settings_for


def _shape_params(shape: LoadTestShape, defaults: dict[str, Any]) -> dict[str, Any]:
    environment = shape.runner.environment if shape.runner is not None else None
    return {**defaults, **settings_for(environment).shape_params}


class StepRamp(LoadTestShape):
    """Add `step_users` every `step_s` up to `max_users`; stop after `duration_s`."""

    defaults = {"step_users": 50, "step_s": 10.0, "max_users": 1000, "spawn_rate": 50.0,
                "duration_s": 120.0}

    def tick(self) -> tuple[int, float] | None:
        p = _shape_params(self, self.defaults)
        t = self.get_run_time()
        if t >= p["duration_s"]:
            return None
        users = min(p["max_users"], p["step_users"] * (int(t // p["step_s"]) + 1))
        return int(users), float(p["spawn_rate"])


class Spike(LoadTestShape):
    """`base_users`, jumping to `spike_users` between `spike_at_s` and `spike_end_s`."""

    defaults = {"base_users": 50, "spike_users": 500, "spike_at_s": 20.0, "spike_end_s": 40.0,
                "spawn_rate": 500.0, "duration_s": 60.0}

    def tick(self) -> tuple[int, float] | None:
        p = _shape_params(self, self.defaults)
        t = self.get_run_time()
        if t >= p["duration_s"]:
            return None
        spiking = p["spike_at_s"] <= t < p["spike_end_s"]
        return int(p["spike_users"] if spiking else p["base_users"]), float(p["spawn_rate"])


class Soak(LoadTestShape):
    """A steady `users` for a long `duration_s` (leaks, drift, slow degradation)."""

    defaults = {"users": 200, "spawn_rate": 20.0, "duration_s": 3600.0}

    def tick(self) -> tuple[int, float] | None:
        p = _shape_params(self, self.defaults)
        if self.get_run_time() >= p["duration_s"]:
            return None
        return int(p["users"]), float(p["spawn_rate"])


SHAPES = {"step_ramp": StepRamp, "spike": Spike, "soak": Soak}
