"""The performance model the virtual engine runs the server core inside: what each
operation costs a server core, how long the network takes, what Redis adds.

The protocol's rules come from the core itself; only time comes from here. A model is a
TOML file (`rtmsim calibrate` writes one from measurements on this machine; a scenario
names it under `[model] file = ...` or overrides single figures in `[model]`):

    [model]
    name = "loopback, 2 vCPU (rtmsim calibrate, 2026-12-02)"
    cores = 1                 # cores per instance (one event loop uses one)
    backlog = 2048            # the listen backlog: upgrades past it wait for a SYN retry
    wake_curve = [[1.0, 100.0], [10.0, 280.0], [200.0, 620.0]]  # [idle ms, wake-up us]
    wake_cpu_curve = [[1.0, 70.0], [10.0, 220.0]]  # [idle ms, CPU us] of that wake-up
    [model.costs_us]          # server CPU per operation, microseconds of one core
    connect_key = 180.0
    ...
    [model.turn_us]           # the part of a request's CPU one loop turn's jobs share
    publish = 50.0            # (a job pays turn_us / the jobs ready in its turn)
    [model.network]           # one way, client <-> server
    median_ms = 0.05
    sigma = 0.5
    [model.redis]             # only with more than one instance
    send_us = 200.0           # the sending instance's CPU a message through Redis
    receive_us = 70.0         # each other instance's CPU a message from Redis
    server_us = 40.0          # redis-server's CPU a message (its own core)
    latency_ms = 0.15         # one way, instance <-> Redis
    [model.load_generator]    # the Locust processes of a real run (--load-generator)
    send_us = 14.0
    connect_us = 900.0        # an upgrade's handshake, beyond a send
    receive_us = 14.0
    delivery_us = 12.0
    wake_us = 25.0            # a socket's reader woken in an iteration
    timer_ms = 1.0            # an idle loop's timers fire on whole milliseconds
    timer_wake_curve = [[1.0, 90.0], [50.0, 300.0]]  # [idle ms, us] then to wake
    [model.raw_client]        # the raw load client (--load-generator raw)
    send_us = 10.0
    receive_us = 8.0
    delivery_us = 5.0

`colocated = true` puts redis-server and the modelled load processes on the instances'
cores instead of cores of their own, as on one machine: their work then takes turns
with the instances' on the least busy instance core.

`DEFAULT_MODEL` (`default_model.toml` beside this file) is the calibration shipped
with the project; a scenario without `[model]` runs on it.
"""

from __future__ import annotations

import bisect
import math
import random
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from server.schema import ConfigError, Table

DEFAULT_MODEL = Path(__file__).with_name("default_model.toml")

# Every operation the server model charges, and what it covers.
OPERATIONS = {
    "connect_key": "an upgrade with an API key, through `welcome`",
    "connect_jwt": "an upgrade with a JWT, through `welcome`",
    "subscribe": "a subscribe and its ack (presence snapshot included)",
    "unsubscribe": "an unsubscribe and its ack",
    "publish": "a publish and its ack, without its deliveries",
    "send": "a direct send and its ack, without its delivery",
    "delivery": "each frame fanned out (message, direct, presence delta)",
    "frame": "any other frame answered at once (ping, bad input's error)",
    "close": "a close the server sends (going_away, kick, 4011)",
    "disconnect": "forgetting a gone connection (subscriptions, presence, slot)",
    "rest_publish": "a REST publish, through its JSON reply",
}


@dataclass(frozen=True, slots=True)
class Network:
    """One-way latency between a client and an instance: lognormal (loopback is
    a floor with a right tail), capped so a draw cannot stall the run."""

    median_ms: float = 0.05
    sigma: float = 0.5
    cap_ms: float = 1000.0

    def sample_s(self, rng: random.Random) -> float:
        if self.sigma == 0:
            return self.median_ms / 1000.0
        ms = rng.lognormvariate(math.log(self.median_ms), self.sigma)
        return min(ms, self.cap_ms) / 1000.0


@dataclass(frozen=True, slots=True)
class RedisModel:
    """What a message that crosses instances adds: CPU on each side and in
    redis-server, one-way latency. Sender and receivers differ (calibrated: the sender
    also charges the quota ledger in Redis and writes the PUBLISH; a receiver only
    parses what arrives), so a deployment of K instances pays send + (K-1) x receive a
    message, not K times their mean. A model file's `hop_us` (the older single figure)
    sets both."""

    send_us: float = 25.0
    receive_us: float = 25.0
    server_us: float = 0.0
    latency_ms: float = 0.15


@dataclass(frozen=True, slots=True)
class LoadGenerator:
    """What a Locust process of `rtmsim run` adds to what its users measure.

    Each process is one event loop on one core (gevent): every frame its users send
    or receive costs that core CPU (the protocol client, the envelope, Locust's
    statistics, the event log row), each socket read a wake of its reader, in the
    loop's order (`loadgen`), so a process that fans in 50 deliveries makes the acks
    wait behind them, and a closed loop's rate is bounded by the process, not the
    server. Real clients on their own devices pay
    none of this, so the engine applies it only when asked (`--load-generator`).
    """

    send_us: float = 0.0  # a request (or upgrade, or close) built and written
    receive_us: float = 0.0  # a reply (ack, error, welcome, close) read and reported
    delivery_us: float = 0.0  # a delivered frame read, checked and logged
    # a socket's reader woken in an iteration of the loop, whatever it then reads (0:
    # each frame pays only its own cost, as in a model file from before 2026-12-07)
    wake_us: float = 0.0
    # the event log's flush, once a second in the loop (Parquet: a fixed part and a
    # part per row logged since the last): it holds up every user of the process
    flush_us: float = 0.0
    flush_row_us: float = 0.0
    # A user's sleep ends when the loop next turns: an idle loop waits for its first
    # timer in whole `timer_ms` (libev's epoll waits whole milliseconds, rounded up;
    # 0: timers fire on time, as in a model file from before 2026-12-07), then wakes
    # `timer_wake_curve` later ([idle ms, us], read as `Model.wake_curve` is).
    timer_ms: float = 0.0
    timer_wake_curve: tuple[tuple[float, float], ...] = ()
    # what an upgrade costs beyond a send: the TCP connect and the client's side of the
    # WebSocket handshake (0: a send, as in a model file from before 2026-12-07 evening)
    connect_us: float = 0.0


class WakeCurve:
    """`Model.wake_curve` as a function: seconds idle -> seconds to wake up."""

    __slots__ = ("idle", "log_idle", "wake")

    def __init__(self, points: tuple[tuple[float, float], ...]) -> None:
        self.idle = [ms / 1e3 for ms, _ in points]
        self.log_idle = [math.log(x) for x in self.idle]
        self.wake = [us / 1e6 for _, us in points]

    def __call__(self, idle_s: float) -> float:
        idle = self.idle
        if not idle or idle_s <= 0:
            return 0.0
        if idle_s <= idle[0]:
            return self.wake[0] * idle_s / idle[0]
        if idle_s >= idle[-1]:
            return self.wake[-1]
        i = bisect.bisect_right(idle, idle_s)
        lo, hi = self.log_idle[i - 1], self.log_idle[i]
        f = (math.log(idle_s) - lo) / (hi - lo)
        return self.wake[i - 1] + f * (self.wake[i] - self.wake[i - 1])


@dataclass(frozen=True, slots=True)
class Model:
    name: str = "built-in"
    cores: int = 1
    backlog: int = 2048
    syn_retry_s: float = 1.0  # Linux's first SYN retransmission
    # How long a request reaching an idle instance waits before it is served, by how
    # long the instance idled: measured points (idle ms, wake us), ascending. On a VM
    # a process that slept (its vCPU halted) takes longer to wake the longer it slept:
    # one publish in flight takes 0.75 ms at 5 a second here and 0.13 ms back to
    # back. It stands for both ends of a round trip (the client slept as long), and is
    # latency, not CPU. Between points linear in log idle; below the first, that
    # point's wake scaled down with the idle time; past the last, the last.
    wake_curve: tuple[tuple[float, float], ...] = ()
    # What the first job on a core that idled costs beyond its operation, by how long
    # it idled: (idle ms, CPU us), read as `wake_curve` is. Measured here: a ping
    # costs the server 34 us back to back and 106 us after 1 ms idle (cold caches, the
    # vCPU's halt and resume), so a server below saturation pays more a request than
    # the busy one calibrated. `wake_curve` is then the latency beyond that CPU.
    wake_cpu_curve: tuple[tuple[float, float], ...] = ()
    costs_us: dict[str, float] = field(default_factory=dict)
    # The part of an operation's CPU that the jobs of one event-loop turn share (the
    # poll, the loop's own bookkeeping, resuming the handler): a job pays
    # `turn_us[op]` / the jobs ready when its core came free to run them, so a lone
    # request costs `costs_us + turn_us` and one among many close to `costs_us`.
    # Measured here: a publish costs 71 us with 1 in flight, 40 with 4, 32 with 8 and
    # 28 with 32, with the server awake throughout. Absent (a model file calibrated
    # before 2026-12-07 22:00): each operation costs `costs_us` alone.
    turn_us: dict[str, float] = field(default_factory=dict)
    network: Network = field(default_factory=Network)
    redis: RedisModel = field(default_factory=RedisModel)
    load_generator: LoadGenerator = field(default_factory=LoadGenerator)
    raw_client: LoadGenerator = field(default_factory=LoadGenerator)
    # redis-server and the modelled load processes run on the instances' cores (one
    # machine), not each on its own
    colocated: bool = False

    def cost_s(self, op: str) -> float:
        """Seconds of one core for `op` (KeyError names an operation the model lacks)."""
        return self.costs_us[op] / 1e6

    def with_table(self, table: dict[str, Any], where: str) -> Model:
        """This model with a scenario's `[model]` overrides laid over it."""
        return _read(table, where, self)


def scenario_model(table: dict[str, Any] | None, scenario_path: Path | None,
                   override: str | Path | None = None) -> Model:
    """A scenario's model: `override` (the command line's --model), else the file its
    `[model] file` names (relative to the scenario), else the shipped one; the
    table's other keys laid over it."""
    table = dict(table or {})
    named = table.pop("file", None)
    if named is not None and not isinstance(named, str):
        raise ConfigError("model.file: must be a path (a string)")
    path: Path | None = None
    if override is not None:
        path = Path(override)
    elif named is not None:
        path = Path(named)
        if not path.is_absolute() and scenario_path is not None:
            path = scenario_path.parent / path
    return load_model(path, overrides=table or None)


def load_model(path: str | Path | None = None, *, overrides: dict[str, Any] | None = None,
               where: str = "model") -> Model:
    """The model at `path` (default: the shipped calibration), with `overrides`.

    ConfigError (one line naming the file or key) for a missing file, bad TOML, an
    unknown key or an operation without a cost.
    """
    path = Path(path) if path is not None else DEFAULT_MODEL
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the model: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if "model" not in data:
        raise ConfigError(f"{path}: needs a [model] table")
    model = _read(data["model"], f"{path}: model", Model())
    missing = [op for op in OPERATIONS if op not in model.costs_us]
    if missing:
        raise ConfigError(f"{path}: model.costs_us.{missing[0]}: is required "
                          f"({OPERATIONS[missing[0]]})")
    if overrides:
        model = model.with_table(overrides, where)
    return model


def _read(data: object, where: str, base: Model) -> Model:
    t = Table(data, where)
    changes: dict[str, Any] = {}
    if "name" in t.data:
        changes["name"] = t.string("name", base.name)
    for key in ("cores", "backlog"):
        if key in t.data:
            changes[key] = t.number(key, None, minimum=1, integer=True)
    for key in ("wake_curve", "wake_cpu_curve"):
        if key in t.data:
            changes[key] = _wake_curve(t, key)
    if "syn_retry_s" in t.data:
        changes["syn_retry_s"] = float(t.number("syn_retry_s", None, minimum=0,
                                                exclusive=True))
    t.get("source")  # free text: who made the figures
    t.get("file")  # a scenario's pointer to the model file, read by the caller
    t.get("measured")  # calibrate's raw figures, kept for the record
    turns = dict(base.turn_us)
    if "costs_us" in t.data:
        c = t.table("costs_us")
        costs = dict(base.costs_us)
        for key in c.data:
            if key not in OPERATIONS:
                raise c.fail(key, f"unknown operation (one of {', '.join(OPERATIONS)})")
            costs[key] = float(c.number(key, None, minimum=0))
            # a cost set here is the operation's whole cost, unless the same table
            # sets its turn part too
            turns.pop(key, None)
        c.done()
        changes["costs_us"] = costs
    if "turn_us" in t.data:
        c = t.table("turn_us")
        for key in c.data:
            if key not in OPERATIONS:
                raise c.fail(key, f"unknown operation (one of {', '.join(OPERATIONS)})")
            turns[key] = float(c.number(key, None, minimum=0))
        c.done()
    if turns != base.turn_us:
        changes["turn_us"] = turns
    if "colocated" in t.data:
        changes["colocated"] = t.boolean("colocated", False)
    for key, kind in (("network", Network), ("redis", RedisModel),
                      ("load_generator", LoadGenerator), ("raw_client", LoadGenerator)):
        if key in t.data:
            sub = t.table(key)
            current = getattr(base, key)
            values: dict[str, Any] = {
                f.name: _wake_curve(sub, f.name) if f.name.endswith("_curve") else
                float(sub.number(f.name, getattr(current, f.name), minimum=0))
                for f in fields(kind) if f.name in sub.data}
            if kind is RedisModel and "hop_us" in sub.data:
                hop = float(sub.number("hop_us", None, minimum=0))
                values.setdefault("send_us", hop)
                values.setdefault("receive_us", hop)
            sub.done()
            changes[key] = replace(current, **values)
    t.done()
    if "network" in changes and changes["network"].median_ms <= 0:
        raise ConfigError(f"{where}.network.median_ms: must be > 0")
    return replace(base, **changes)


def _wake_curve(t: Table, key: str) -> tuple[tuple[float, float], ...]:
    """`wake_curve` (or `wake_cpu_curve`): [[idle ms, wake us], ...], idle times > 0
    and ascending."""
    value = t.get(key)
    problem = "must be a list of [idle ms, wake us] pairs, idle ms > 0 and ascending, " \
              f"wake us >= 0, got {value!r}"
    if not isinstance(value, list):
        raise t.fail(key, problem)
    points: list[tuple[float, float]] = []
    for point in value:
        if not (isinstance(point, list) and len(point) == 2 and all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                for x in point)):
            raise t.fail(key, problem)
        idle, wake = float(point[0]), float(point[1])
        if idle <= 0 or wake < 0 or (points and idle <= points[-1][0]):
            raise t.fail(key, problem)
        points.append((idle, wake))
    return tuple(points)
