"""The planner's workload: a scenario's clients rescaled to a target load, one file a point.

A plan asks for N connections and M publishes a second with a fan-out of F subscribers
a channel. The scenario says who those clients are (their classes, retry policies,
timeouts, credentials), which app and plan they use, and what storms they must
survive (its faults and Redis blips); the planner keeps all of that and changes only
the counts:

- the Publisher class gets `ceil(M / rate)` users at exactly `M / users` publishes a
  second each, so the offered rate is M (open model: a late server cannot slow it);
- other classes keep their share of the scenario's users (weights, fixed counts);
- the Subscriber class gets the rest, each on exact channels (no wildcards), and the
  channel set is sized so that each channel has F subscribers (at every load: more
  clients means more channels of the same size, not bigger ones);
- the scenario's storms are shifted to start after a steady window: the run is
  spawn, settle, steady window, storms (kept in their own spacing), recovery.

Every point is an ordinary scenario file (`scenario.toml` in its run directory), so
`rtmsim simulate` or `rtmsim run` can replay one on its own.
"""

from __future__ import annotations

import copy
import math
import tomllib
from dataclasses import dataclass
from typing import Any

from loadtests.catalog import parse_params
from server.schema import ConfigError

from ..scenario import Scenario, parse_scenario
from ..tomlwrite import toml_text

CHANNEL_PREFIX = "plan"
SPAWN_CPU_SHARE = 0.5  # the initial connects may use this share of each instance's core,
BUSY_CEILING = 0.9  # ... less what the steady load will take, up to this in all,
SPAWN_FLOOR = 0.05  # ... but never less than this
SETTLE_S = 5.0  # after the last user spawned, before the steady window


@dataclass(frozen=True)
class Targets:
    """What the plan is for, at load 1.0."""

    connections: int
    msgs_per_s: float
    fanout: float | None = None  # None: the scenario's own subscribers per channel

    def check(self) -> None:
        if self.connections < 1:
            raise ConfigError(f"--connections must be >= 1, got {self.connections}")
        if not (math.isfinite(self.msgs_per_s) and self.msgs_per_s >= 0):
            raise ConfigError(f"--msgs-per-s must be >= 0, got {self.msgs_per_s:g}")
        if self.fanout is not None and not (math.isfinite(self.fanout) and self.fanout >= 1):
            raise ConfigError(f"--fanout must be >= 1 (subscribers a channel), "
                              f"got {self.fanout:g}")


@dataclass(frozen=True)
class Timing:
    """How long each part of a point's run lasts (virtual seconds)."""

    steady_s: float = 30.0
    recover_s: float = 30.0
    settle_s: float = SETTLE_S


@dataclass(frozen=True)
class Windows:
    """Where a point's measurements come from, in scenario seconds."""

    steady: tuple[float, float]
    storm: tuple[float, float] | None  # None: the scenario has no storms
    duration_s: float


@dataclass(frozen=True)
class Mix:
    """The clients at load 1.0: counts per class, the publishers' rate, the channels."""

    counts: dict[str, int]
    publisher: str
    subscriber: str
    publish_rate: float  # per publisher
    channels: int
    fanout: float
    subscriptions: int  # per subscriber


def _base(name: str, table: dict[str, Any]) -> str:
    return str(table.get("class", name))


def _one_class(scenario: Scenario, base: str) -> str:
    names = [n for n, t in scenario.swarm.classes.items() if _base(n, t) == base]
    if not names:
        raise ConfigError(f"{scenario.name}: the planner needs a {base} class in "
                          f"[swarm.classes] (its workload is publishers and subscribers)")
    if len(names) > 1:
        raise ConfigError(f"{scenario.name}: the planner takes one {base} class, found "
                          f"{', '.join(names)}")
    return names[0]


def scenario_fanout(scenario: Scenario, subscriber: str) -> float:
    """Subscribers per channel in the scenario as written (its users, weights, channels)."""
    classes = scenario.swarm.classes
    params = parse_params(subscriber, classes[subscriber])
    subs = _shares(scenario, scenario.swarm.users)[subscriber]
    return max(1.0, subs * params.subscriptions / len(params.channels))


def _shares(scenario: Scenario, users: int) -> dict[str, int]:
    """Users per class among `users`, as Locust splits them: fixed counts first, then
    weights (largest remainder, so the counts add up)."""
    params = {n: parse_params(n, t) for n, t in scenario.swarm.classes.items()}
    fixed = {n: p.fixed_count for n, p in params.items() if p.fixed_count}
    left = max(0, users - sum(fixed.values()))
    weights = {n: (p.weight if p.weight is not None else 1) for n, p in params.items()
               if n not in fixed}
    total = sum(weights.values()) or 1
    exact = {n: left * w / total for n, w in weights.items()}
    counts = {n: math.floor(x) for n, x in exact.items()}
    for n in sorted(exact, key=lambda n: counts[n] - exact[n])[:left - sum(counts.values())]:
        counts[n] += 1
    return {**fixed, **counts}


def plan_mix(scenario: Scenario, targets: Targets) -> Mix:
    """The clients of `targets` in the scenario's classes (ConfigError: cannot be made)."""
    targets.check()
    publisher = _one_class(scenario, "Publisher")
    subscriber = _one_class(scenario, "Subscriber")
    classes = scenario.swarm.classes
    rate = parse_params(publisher, classes[publisher]).rate
    sub_params = parse_params(subscriber, classes[subscriber])
    fanout = targets.fanout or scenario_fanout(scenario, subscriber)
    shares = _shares(scenario, targets.connections)
    counts = {n: c for n, c in shares.items() if n not in (publisher, subscriber)}
    counts[publisher] = math.ceil(targets.msgs_per_s / rate) if targets.msgs_per_s else 0
    counts[subscriber] = targets.connections - sum(counts.values())
    if counts[subscriber] < 1:
        raise ConfigError(f"{targets.msgs_per_s:g} msgs/s at {rate:g} a publisher takes "
                          f"{counts[publisher]:,} publishers: no connections left for "
                          f"subscribers out of {targets.connections:,}; raise "
                          f"--connections or the Publisher class's rate")
    channels = max(1, round(counts[subscriber] * sub_params.subscriptions / fanout))
    return Mix(counts=counts, publisher=publisher, subscriber=subscriber,
               publish_rate=targets.msgs_per_s / counts[publisher] if counts[publisher]
               else rate, channels=channels, fanout=fanout,
               subscriptions=sub_params.subscriptions)


def _storm_times(data: dict[str, Any]) -> list[float]:
    """When each storm of the scenario starts: strikes, windowed faults, Redis blips."""
    times = []
    for fault in data.get("faults", []):
        if "at_s" in fault or fault.get("kind") in ("deploy", "disconnect", "close", "pause"):
            times.append(float(fault.get("at_s", 0.0)))
        elif fault.get("start_s", 0.0) > 0 or fault.get("end_s") is not None:
            times.append(float(fault.get("start_s", 0.0)))
    times += [float(b["at_s"]) for b in data.get("scenario", {}).get("redis_blips", [])]
    return times


def _storm_end(data: dict[str, Any]) -> float:
    ends = []
    for fault in data.get("faults", []):
        ends.append(float(fault.get("end_s") or fault.get("at_s", fault.get("start_s", 0.0))))
    ends += [float(b["at_s"]) + float(b["down_s"])
             for b in data.get("scenario", {}).get("redis_blips", [])]
    return max(ends, default=0.0)


def _shift_storms(data: dict[str, Any], start: float) -> tuple[float, float] | None:
    """Move the storms so the first starts at `start`; their (start, end) afterwards.
    Faults that hold for the whole run (from 0, no end) are conditions, not storms."""
    times = _storm_times(data)
    if not times:
        return None
    shift = start - min(times)
    end = _storm_end(data) + shift
    for fault in data.get("faults", []):
        for key in ("at_s", "start_s", "end_s"):
            if key in fault and not (key == "start_s" and fault[key] == 0
                                     and fault.get("end_s") is None):
                fault[key] = round(float(fault[key]) + shift, 6)
    for blip in data.get("scenario", {}).get("redis_blips", []):
        blip["at_s"] = round(float(blip["at_s"]) + shift, 6)
    return start, end


def point_scenario(scenario: Scenario, mix: Mix, *, instances: int, load: float,
                   timing: Timing, client_s: float,
                   busy_share: float = 0.0) -> tuple[Scenario, Windows]:
    """The scenario of one point: `mix` at `load` on `instances`; and its windows.

    `client_s` (the model's cost of a client's connect and subscribes) sets the spawn
    rate: the initial connects take at most `SPAWN_CPU_SHARE` of each core, and no
    more than the steady load (`busy_share` of a core, the model's arithmetic) leaves
    under `BUSY_CEILING`, so the steady window starts from a settled server rather
    than from the backlog of a connect storm (at 80% busy, a spawn at half a core
    left 10 s of queue that the window then measured).
    """
    data = copy.deepcopy(tomllib.loads(scenario.source)) if scenario.source else {}
    counts = {n: max(0, round(c * load)) for n, c in mix.counts.items()}
    if mix.counts[mix.publisher]:
        counts[mix.publisher] = max(1, counts[mix.publisher])
    counts[mix.subscriber] = max(1, counts[mix.subscriber])
    users = sum(counts.values())
    share = min(SPAWN_CPU_SHARE, max(SPAWN_FLOOR, BUSY_CEILING - busy_share))
    spawn_rate = max(1.0, min(float(users), instances * share / client_s))
    spawn_s = math.ceil(round(users / spawn_rate, 6))  # 30.000000001 s is 30
    steady = (spawn_s + timing.settle_s, spawn_s + timing.settle_s + timing.steady_s)
    storm = _shift_storms(data, steady[1])
    duration = (storm[1] if storm else steady[1]) + (timing.recover_s if storm else 0.0)
    # The channels grow with the load, so that each keeps `fanout` subscribers.
    n_channels = max(1, round(counts[mix.subscriber] * mix.subscriptions / mix.fanout))
    channels = [f"{CHANNEL_PREFIX}/{{1..{n_channels}}}" if n_channels > 1
                else f"{CHANNEL_PREFIX}/1"]
    classes = {}
    for name, table in data.get("swarm", {}).get("classes", {}).items():
        if not counts.get(name):
            continue
        table = dict(table, fixed_count=counts[name])
        table.pop("weight", None)
        if name == mix.publisher:
            table.update(rate=round(mix.publish_rate, 9), channels=channels)
        elif name == mix.subscriber:
            table.update(channels=channels, wildcard_fraction=0.0)
        classes[name] = table
    data["swarm"] = {"users": users, "spawn_rate": round(spawn_rate, 3),
                     "duration_s": round(duration, 3), "model": "open", "classes": classes}
    data.setdefault("scenario", {})["name"] = f"{scenario.name}-plan-k{instances}-x{load:g}"
    data.pop("thresholds", None)
    server = data.setdefault("server", {})
    server["instances"] = instances
    if instances > 1:
        server["backend"] = "redis"
    text = toml_text(data, comment=f"rtmsim plan: {scenario.name} at {load:g}x the target "
                     f"on {instances} instance(s)")
    return (parse_scenario(data, text, default_name=scenario.name, path=scenario.path),
            Windows(steady=steady, storm=storm, duration_s=duration))
