"""A billing period's traffic: who connects when, for how long, and how much they send.

The model (a `[traffic]` table in the scenario, or `rtmsim plan --period` flags):

- `clients`: distinct end-user clients (devices) of the app.
- `sessions_per_day`: connections each client opens a day (a fraction is a chance:
  1.5 is one session a day and a second one on half the days, at random).
- `session_min`: how long a session stays connected, in minutes (at most a day).
- `msgs_per_session`: `publish`/`send` calls a client makes per session, spread evenly
  over it (a fraction is a chance, as above). Chosen per session rather than per day
  because a message needs an open connection: a session refused with 4010 sends none.
- `fanout`: deliveries per accepted message (its recipients). PROTOCOL section 7 counts a
  message once, not per recipient, so fan-out never touches the quota or the bill; it
  sizes the outbound traffic (deliveries, egress) the projection reports beside them.
- `peak_factor`, `peak_hour`: the daily shape. Sessions start at a rate that follows a
  cosine over the day, `peak_factor` times the daily mean at `peak_hour` (1 = flat;
  at most 2, where the trough is zero).

`build_schedule` turns a model into one period's session arrivals on a grid of ticks,
seeded per day (a day is reproducible without drawing the ones before it), so the
projection can count arrivals for the whole period and draw who they were only for the
days whose sessions were refused.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from server.schema import ConfigError, Table

DAY_S = 86400.0
DAY_MIN = 1440
MIN_TICKS_PER_SESSION = 10  # a session spans at least this many ticks when possible
MIN_TICKS_PER_PERIOD = 100
MAX_TICKS = 5_000_000  # about 15 s of projection loop


@dataclass(frozen=True, slots=True)
class Traffic:
    clients: int
    sessions_per_day: float
    session_min: float
    msgs_per_session: float
    fanout: float = 1.0
    peak_factor: float = 1.0
    peak_hour: float = 20.0

    def describe(self) -> dict[str, Any]:
        return {f.key: getattr(self, f.key) for f in FIELDS}


@dataclass(frozen=True, slots=True)
class Field:
    """One traffic setting: its `[traffic]` key, its flag, its bounds (one check for both)."""

    key: str
    flag: str
    default: float | None  # None: required
    help: str
    minimum: float = 0.0
    exclusive: bool = False
    maximum: float | None = None
    integer: bool = False

    @property
    def dest(self) -> str:
        # `--fanout` is also the capacity planner's flag (recipients a message): shared.
        return "fanout" if self.key == "fanout" else f"traffic_{self.key}"

    def read(self, t: Table, key: str) -> Any:
        return t.number(key, None, minimum=self.minimum, maximum=self.maximum,
                        exclusive=self.exclusive, integer=self.integer)


FIELDS = (
    Field("clients", "--clients", None, "distinct clients of the app", minimum=1,
          integer=True),
    Field("sessions_per_day", "--sessions-per-day", None,
          "connections each client opens a day", exclusive=True),
    Field("session_min", "--session-min", None, "minutes a session stays connected",
          exclusive=True, maximum=DAY_MIN),
    Field("msgs_per_session", "--msgs-per-session", None,
          "publish/send calls per session (the quota counts these)"),
    Field("fanout", "--fanout", 1.0,
          "recipients per accepted message (deliveries; not counted by the quota)"),
    Field("peak_factor", "--peak-factor", 1.0,
          "session start rate at the peak hour over the daily mean (1 = flat, max 2)",
          minimum=1.0, maximum=2.0),
    Field("peak_hour", "--peak-hour", 20.0, "hour of day of the peak (0-24)", maximum=24.0),
)


def _traffic(values: dict[str, Any], missing: str) -> Traffic:
    """A Traffic from checked values; `missing` phrases a required key's absence."""
    for f in FIELDS:
        if values.get(f.key) is None and f.default is None:
            raise ConfigError(missing.format(key=f.key, flag=f.flag))
    out = {f.key: values[f.key] if values.get(f.key) is not None else f.default
           for f in FIELDS}
    return Traffic(**{k: v if k == "clients" else float(v) for k, v in out.items()})


def read_traffic(table: object, where: str = "traffic") -> dict[str, Any]:
    """The values a `[traffic]` table sets (None for a key it leaves out), each within
    its bounds; an unknown key or a bad value is a ConfigError naming it
    (`traffic.sessions_per_day: must be > 0, got -1`). What may be left out depends
    on the caller: `--period`'s flags can supply it."""
    t = Table({} if table is None else table, where)
    values = {f.key: f.read(t, f.key) for f in FIELDS}
    t.done()
    return values


def check_scenario_traffic(scenario: Any) -> None:
    """A scenario's `[traffic]`, if it has one, read as `read_traffic` reads it: every
    command that loads the scenario refuses a bad one, not only `rtmsim plan --period`
    (which alone uses it)."""
    table = scenario.config.extra.get("traffic")
    if table is not None:
        read_traffic(table)


def parse_traffic(table: object, where: str = "traffic") -> Traffic:
    """The traffic model of a `[traffic]` table; errors name the key
    (`traffic.sessions_per_day: must be > 0, got -1`)."""
    values = read_traffic(table, where)
    return _traffic(values, f"{where}.{{key}}: is required")


def add_period_arguments(parser: argparse.ArgumentParser) -> None:
    """The traffic flags of `rtmsim plan --period`; each overrides its `[traffic]` key.
    (`--period` itself and `--app` are the caller's; a `--fanout` the parser already
    has, the capacity planner's, is shared: same meaning, same `args.fanout`.)"""
    group = parser.add_argument_group("billing-period projection (--period)")
    for f in FIELDS:
        default = "" if f.default is None else f" (default {f.default:g})"
        try:
            group.add_argument(f.flag, dest=f.dest, type=int if f.integer else float,
                               default=None, metavar="N" if f.integer else "X",
                               help=f"{f.help}; [traffic] {f.key}{default}")
        except argparse.ArgumentError:
            if f.key != "fanout":
                raise
    group.add_argument("--period-days", dest="period_days", type=float, default=None,
                       metavar="D", help="project a period of D days instead of the "
                                         "plan's period_seconds")


def period_from_args(args: argparse.Namespace, scenario: Any) -> Traffic:
    """The scenario's `[traffic]`, overridden by the flags given; a bad value is a
    ConfigError naming its key or flag (`--sessions-per-day: must be > 0, got -1.0`)."""
    values = read_traffic(scenario.config.extra.get("traffic"))
    given = {f.flag: getattr(args, f.dest) for f in FIELDS
             if getattr(args, f.dest, None) is not None}
    flags = Table(given, "")
    for f in FIELDS:
        if f.flag in given:
            values[f.key] = f.read(flags, f.flag)
    return _traffic(values, "traffic.{key}: is required: set it in [traffic] or pass {flag}")


def period_s_from_args(args: argparse.Namespace) -> float | None:
    """`--period-days` in seconds (None: the plan's own period)."""
    days = getattr(args, "period_days", None)
    if days is None:
        return None
    Table({"--period-days": days}, "").number("--period-days", None, minimum=0,
                                              exclusive=True)
    return days * DAY_S


# -- the schedule ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    """One session of a small schedule, as a test drives it against a real server."""

    index: int  # in schedule order: by start tick, then the tick's own (random) order
    client: int
    start: int  # tick of its connect
    end: int  # tick of its close (start + session_ticks; may be past the period)
    messages: tuple[int, ...]  # ticks of its publishes within the period


@dataclass(frozen=True)
class Schedule:
    """One period of a traffic model on a grid of `ticks` ticks of `tick_s` seconds.

    Every event happens on a tick; within a tick the order is closes, then connects
    (in the tick's order), then publishes. `arrivals[t]` sessions start at tick t.
    """

    traffic: Traffic
    seed: int
    day_s: float
    ticks_per_day: int
    ticks: int
    session_ticks: int
    arrivals: np.ndarray  # int64[ticks]

    @property
    def tick_s(self) -> float:
        return self.day_s / self.ticks_per_day

    @property
    def days(self) -> int:
        return -(-self.ticks // self.ticks_per_day)

    @cached_property
    def starts(self) -> np.ndarray:
        """starts[t]: schedule index of the first session of tick t (length ticks + 1)."""
        return np.concatenate(([0], np.cumsum(self.arrivals)))

    @cached_property
    def kinds(self) -> tuple[int, int]:
        """Messages of the two kinds of session: floor and ceil of msgs_per_session."""
        low = math.floor(self.traffic.msgs_per_session)
        return low, low + 1

    def offsets(self, messages: int) -> np.ndarray:
        """Ticks after its start at which a session sends: evenly spread, mid-interval."""
        n = self.session_ticks
        return np.floor((np.arange(messages) + 0.5) * n / messages).astype(np.int64)

    def kernel(self, messages: int) -> np.ndarray:
        """Messages a session sends at each tick after its start (length session_ticks)."""
        return np.bincount(self.offsets(messages), minlength=self.session_ticks)

    def _day_range(self, day: int) -> tuple[int, int]:
        first = day * self.ticks_per_day
        return first, min(first + self.ticks_per_day, self.ticks)

    def _rng(self, day: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, day, stream])

    def day_high(self, day: int) -> np.ndarray:
        """bool per session of the day, in order: does it send the larger count?"""
        lo, hi = self._day_range(day)
        n = int(self.starts[hi] - self.starts[lo])
        frac = self.traffic.msgs_per_session - self.kinds[0]
        if not frac:
            return np.zeros(n, dtype=bool)
        return self._rng(day, 2).random(n) < frac

    def day_clients(self, day: int) -> np.ndarray:
        """The client of each session of the day, in order (drawn only when asked)."""
        tr = self.traffic
        whole, frac = math.floor(tr.sessions_per_day), tr.sessions_per_day % 1
        total = _day_total(self._rng(day, 0), tr.clients, whole, frac)
        rng = self._rng(day, 1)
        extra = rng.choice(tr.clients, size=total - whole * tr.clients, replace=False)
        clients = np.concatenate((np.repeat(np.arange(tr.clients), whole), extra))
        rng.shuffle(clients)
        lo, hi = self._day_range(day)
        return clients[:int(self.starts[hi] - self.starts[lo])]

    def sessions(self) -> Iterator[Session]:
        """Every session in schedule order (small schedules: tests, the detail view)."""
        kinds = [self.offsets(m) for m in self.kinds]
        for day in range(self.days):
            lo, hi = self._day_range(day)
            first = int(self.starts[lo])
            ticks = np.repeat(np.arange(lo, hi), self.arrivals[lo:hi])
            for i, (client, high, tick) in enumerate(zip(
                    self.day_clients(day), self.day_high(day), ticks, strict=True)):
                sends = tuple(int(tick + o) for o in kinds[int(high)] if tick + o < self.ticks)
                yield Session(first + i, int(client), int(tick),
                              int(tick) + self.session_ticks, sends)


def _day_total(rng: np.random.Generator, clients: int, whole: int, frac: float) -> int:
    """Sessions opened in one day (a client's fractional session is a coin)."""
    return whole * clients + (int(rng.binomial(clients, frac)) if frac else 0)


def day_shape(traffic: Traffic, ticks_per_day: int) -> np.ndarray:
    """Share of a day's session starts at each tick of the day (sums to 1)."""
    hours = (np.arange(ticks_per_day) + 0.5) * 24.0 / ticks_per_day
    weight = 1.0 + (traffic.peak_factor - 1.0) * np.cos(
        2 * np.pi * (hours - traffic.peak_hour) / 24.0)
    return weight / weight.sum()


def default_ticks_per_day(traffic: Traffic, period_s: float, day_s: float) -> int:
    """A minute, or finer when a session or the period would span too few ticks."""
    per_session = math.ceil(MIN_TICKS_PER_SESSION * DAY_MIN / traffic.session_min)
    per_period = math.ceil(MIN_TICKS_PER_PERIOD * day_s / period_s)
    return max(DAY_MIN, per_session, per_period)


def build_schedule(traffic: Traffic, *, period_s: float, day_s: float = DAY_S,
                   seed: int = 0, ticks_per_day: int | None = None) -> Schedule:
    """One period of `traffic` (`day_s` compresses a traffic day onto the clock)."""
    tpd = ticks_per_day or default_ticks_per_day(traffic, period_s, day_s)
    tick_s = day_s / tpd
    ticks = math.ceil(period_s / tick_s - 1e-9)
    if ticks > MAX_TICKS:
        raise ConfigError(f"a period of {period_s:g} s at {tick_s:g} s a tick is {ticks:,} "
                          f"ticks (at most {MAX_TICKS:,}): use fewer ticks per day")
    session_ticks = max(1, round(traffic.session_min * tpd / DAY_MIN))
    shape = day_shape(traffic, tpd)
    whole, frac = math.floor(traffic.sessions_per_day), traffic.sessions_per_day % 1
    days = -(-ticks // tpd)
    arrivals = np.empty(days * tpd, dtype=np.int64)
    for day in range(days):
        rng = np.random.default_rng([seed, day, 0])
        total = _day_total(rng, traffic.clients, whole, frac)
        arrivals[day * tpd:(day + 1) * tpd] = rng.multinomial(total, shape)
    return Schedule(traffic, seed, day_s, tpd, ticks, session_ticks, arrivals[:ticks])
