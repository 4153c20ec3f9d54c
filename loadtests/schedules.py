"""The load shapes' schedules: users and spawn rate as a plain function of run time.

`loadtests.shapes` wraps each in a Locust `LoadTestShape`; the virtual engine calls
them directly (importing Locust would monkey-patch its process with gevent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Schedule = Callable[[float, dict[str, Any]], tuple[int, float]]


def step_ramp(t: float, p: dict[str, Any]) -> tuple[int, float]:
    """Add `step_users` every `step_s` up to `max_users`."""
    users = min(p["max_users"], p["step_users"] * (int(t // p["step_s"]) + 1))
    return int(users), float(p["spawn_rate"])


def spike(t: float, p: dict[str, Any]) -> tuple[int, float]:
    """`base_users`, jumping to `spike_users` between `spike_at_s` and `spike_end_s`."""
    spiking = p["spike_at_s"] <= t < p["spike_end_s"]
    return int(p["spike_users"] if spiking else p["base_users"]), float(p["spawn_rate"])


def soak(t: float, p: dict[str, Any]) -> tuple[int, float]:
    """A steady `users` for a long `duration_s` (leaks, drift, slow degradation)."""
    return int(p["users"]), float(p["spawn_rate"])


# name -> (schedule, defaults); every shape ends at `duration_s`.
SCHEDULES: dict[str, tuple[Schedule, dict[str, Any]]] = {
    "step_ramp": (step_ramp, {"step_users": 50, "step_s": 10.0, "max_users": 1000,
                              "spawn_rate": 50.0, "duration_s": 120.0}),
    "spike": (spike, {"base_users": 50, "spike_users": 500, "spike_at_s": 20.0,
                      "spike_end_s": 40.0, "spawn_rate": 500.0, "duration_s": 60.0}),
    "soak": (soak, {"users": 200, "spawn_rate": 20.0, "duration_s": 3600.0}),
}


def target(name: str, t: float, params: dict[str, Any]) -> tuple[int, float] | None:
    """Users and spawn rate shape `name` asks for at run time `t` (None: it is over)."""
    schedule, defaults = SCHEDULES[name]
    p = {**defaults, **params}
    if t >= p["duration_s"]:
        return None
    return schedule(t, p)
