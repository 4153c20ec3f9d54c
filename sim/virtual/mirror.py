"""Mirrored instances: a deployment of N alike instances simulated as M of them.

A rolling deploy of a million clients on 20 instances is one instance's story twenty
times: each has the same share of the users, meets the same waves, and sends and
receives the same Redis traffic. `rtmsim simulate --simulate-instances M` runs M of
the N instances in full (the real core, every client of theirs) and takes the other
N - M to do what these do:

- the users, the spawn rate, classes' fixed counts and the plans' app-wide quotas
  (concurrent connections, messages a period, the balance and its recharge) are cut
  to M/N; per-connection limits stay as they are;
- a channel message published on a simulated instance reaches each other simulated
  instance N/M times over Redis, and its own instance N/M - 1 times: the mirrors'
  publishes, taken to be copies of these (the same channel, the same moment);
- redis-server handles N/M messages for each.

Presence and direct sends are not mirrored (the peers a mirrored instance holds do not
exist here), so a scenario whose keys allow either is refused, as is a shape (its
targets are the deployment's). So is one whose instances are not alike: users go to
instances in turn, in Locust's class order, and one Publisher in 1,000 users lands on
the same instance every time when 1,000 is a multiple of the instance count (918 of a
million's 1,000 on the first of 20): mirroring that instance would multiply them.
The run directory is the M instances' run: its counts are theirs, N/M times them the
deployment's, and `run.json` says so (`mirror`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from loadtests.catalog import parse_params

from ..scenario import Scenario
from .spawn import uneven

NOT_MIRRORED = ("presence", "send")  # key actions whose peers a mirror would hold


class MirrorError(ValueError):
    """A scenario that cannot be simulated as a part of its instances (one line)."""


@dataclass(frozen=True)
class Mirror:
    """N instances (`instances`), M of them (`simulated`) run in full."""

    instances: int
    simulated: int

    @property
    def factor(self) -> int:
        """How many instances each simulated one stands for."""
        return self.instances // self.simulated

    def meta(self) -> dict[str, Any]:
        return {"instances": self.instances, "simulated": self.simulated,
                "factor": self.factor}


def mirrored(scenario: Scenario, simulated: int) -> tuple[Scenario, Mirror]:
    """The scenario cut to `simulated` of its instances, with their share of every
    count that is the deployment's; and what was cut."""
    n = scenario.config.server.instances
    if not 1 <= simulated <= n or n % simulated:
        raise MirrorError(f"--simulate-instances: must divide the scenario's {n} "
                          f"instance(s), got {simulated}")
    mirror = Mirror(n, simulated)
    f = mirror.factor
    if f == 1:
        return scenario, mirror
    swarm = scenario.swarm
    if swarm.shape:
        raise MirrorError(f"--simulate-instances: the scenario's shape ({swarm.shape}) "
                          "sets the deployment's users; mirroring needs [swarm] users")
    for app in scenario.config.apps:
        for key in app.keys:
            allowed = [a for a in NOT_MIRRORED if a in key.actions]
            if allowed:
                raise MirrorError(
                    f"--simulate-instances: key {key.id} of app {app.id} allows "
                    f"{' and '.join(allowed)}, which mirrored instances cannot model "
                    "(their peers are not simulated); give it only subscribe and publish")
    users = _cut(swarm.users, f, "[swarm] users")
    classes = {name: _cut_fixed(name, table, f) for name, table in swarm.classes.items()}
    for count, tables, where in ((swarm.users, swarm.classes, n),
                                 (users, classes, simulated)):
        unlike = _unlike(count, tables, where)
        if unlike:
            raise MirrorError(f"--simulate-instances: the instances are not alike: {unlike}")
    swarm = dataclasses.replace(swarm, users=users, spawn_rate=swarm.spawn_rate / f,
                                classes=classes)
    config = scenario.config
    apps = tuple(dataclasses.replace(app, plan=_cut_plan(app.plan, f)) for app in config.apps)
    config = dataclasses.replace(
        config, apps=apps, server=dataclasses.replace(config.server, instances=simulated))
    return dataclasses.replace(scenario, swarm=swarm, config=config), mirror


def _unlike(users: int, classes: dict[str, dict[str, Any]], instances: int) -> str | None:
    """`spawn.uneven` of the classes' tables, with what to do about it."""
    params = {name: parse_params(name, table) for name, table in classes.items()}
    uneven_by = uneven(users, {name: (p.weight, p.fixed_count) for name, p in params.items()},
                       instances)
    if uneven_by is None:
        return None
    return (f"{uneven_by}; spread them (a class's share whose period is not a multiple "
            "of the instance count)")


def _cut(count: int, f: int, what: str) -> int:
    if count % f:
        raise MirrorError(f"--simulate-instances: {what} ({count:,}) must be a multiple "
                          f"of {f}, the instances each simulated one stands for")
    return count // f


def _cut_fixed(name: str, table: dict[str, Any], f: int) -> dict[str, Any]:
    fixed = table.get("fixed_count")
    if fixed is None:
        return table
    return {**table, "fixed_count": _cut(fixed, f, f"swarm.classes.{name}.fixed_count")}


def _cut_plan(plan: Any, f: int) -> Any:
    """A plan's app-wide figures, a simulated instance's share of them (rounded up:
    a cap of 1 stays 1)."""
    recharge = plan.auto_recharge
    return dataclasses.replace(
        plan, max_concurrent_connections=-(-plan.max_concurrent_connections // f),
        max_messages_per_period=-(-plan.max_messages_per_period // f),
        balance=plan.balance / f, auto_recharge=None if recharge is None else recharge / f)
