"""`rtmsim plan --period`: one billing period of a traffic model, through the server's ledger.

Not the virtual engine: it runs every frame through the server core, and a month of a
million clients is hundreds of millions of frames. Quotas and cost need only the
ledger, so this drives the server's own `billing.Ledger`, opened by
`ledgers.MemoryLedgers` as the in-memory server opens it, with the calls the server
makes (release on a close, admit on a connect: False is close 4010, charge on a
publish: False is `over_message_quota`), at the times of a `traffic.Schedule`. The
ledger answers every question; no billing rule is restated here.

Time compression, and why it is exact:

- Virtual time. The ledger reads `now` only to decide which period a call falls in
  (`Ledger.roll`); its answers depend on the order of the calls and their periods,
  not on the clock. So a month is a loop over the schedule's ticks (43,200 minutes),
  and a real server given the same calls in the same order, faster than the
  schedule's clock but within one period, keeps the same ledger (the cross-check in
  tests/test_plan_period.py).
- Runs. A tick holds runs of one call (n connects, m publishes). `LedgerDriver` makes
  the first call of a run on the ledger, looks at what it changed, and applies the
  rest of the run at once only when that change is one the next calls provably repeat:
  nothing changed (the ledger is a function of its state and `now`: the same call
  again); a refusal (a `rejected_*` counter, and for a publish the count it is already
  over: nothing a decision reads moves, so every later call is refused too); a count
  below the cap or quota (`concurrent` or `messages_used` + 1, repeated while still
  below it); an overage paid without a recharge (balance - price, charges + price,
  while the balance covers the price: the ledger's money is whole nano-units, so k
  payments are k times the price, exactly). A recharge, or any
  other change, is never batched: the next call goes to the ledger. The driver knows
  only where a run must stop (the cap, the quota, the balance against the price); what
  a call does it reads off the ledger. `per_event=True` makes every call on the
  ledger; tests check that both leave the same ledger, field for field, for random
  plans and runs (rollovers included).
- Ticks. Events sit on a grid (a minute, finer for short sessions or periods); within
  a tick: closes, then connects, then publishes. That is the traffic model's
  resolution: the ledger sees exactly this schedule, one call per event.

The period starts with no one connected (as after a server start); a refused session
(4010) does not retry and sends nothing; messages are charged in the period of the tick
they are sent in. "For whom" is per session and per client: who was refused a
connection; whose sessions sent at or after the first `over_message_quota` tick (a
refusal lasts the period: the balance only falls once recharges are off).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from server.billing import Ledger, to_units
from server.config import App, Plan
from server.ledgers import MemoryLedgers
from server.schema import ConfigError

from .traffic import DAY_S, Schedule, Traffic, build_schedule

if TYPE_CHECKING:
    from ..scenario import Scenario

# Every field of the ledger but its plan: a change the driver does not expect (a
# rollover's new period_start, a field added one day) stops a run from being batched.
FIELDS = tuple(f.name for f in dataclasses.fields(Ledger) if f.name != "plan")
BALANCE, CHARGES = FIELDS.index("balance_units"), FIELDS.index("overage_charge_units")
_state = attrgetter(*FIELDS)
DETAIL_MAX = 100_000  # sessions listed by `detail`


@dataclass(frozen=True, slots=True)
class Op:
    """One ledger call as the driver batches it."""

    call: str  # the Ledger method
    counter: str  # the field it moves
    step: int
    limit: int | None  # the plan's cap or quota on `counter` (None: release)
    rejected: str | None
    overage: str | None
    price: int  # the ledger's nano-units


class LedgerDriver:
    """Runs of one ledger call at one `now`, answered as the ledger answers them one by
    one (see the module docstring for which runs are applied at once, and why)."""

    def __init__(self, ledger: Ledger, *, per_event: bool = False) -> None:
        self.ledger = ledger
        self.per_event = per_event
        self.calls = 0  # calls made on the ledger
        self.events = 0  # calls they stand for
        plan = ledger.plan
        self.ops = {
            "release": Op("release_connection", "concurrent", -1, None, None, None, 0),
            "admit": Op("admit_connection", "concurrent", 1, plan.max_concurrent_connections,
                        "rejected_connections", "overage_connections",
                        to_units(plan.overage_price_per_connection)),
            "charge": Op("charge_message", "messages_used", 1, plan.max_messages_per_period,
                         "rejected_messages", "overage_messages",
                         to_units(plan.overage_price_per_message)),
        }

    def release(self, now: float, n: int) -> None:
        self.run(self.ops["release"], now, n)

    def admit(self, now: float, n: int) -> int:
        """n connects; how many were admitted (the first ones: the rest are 4010)."""
        return self.run(self.ops["admit"], now, n)

    def charge(self, now: float, n: int) -> int:
        """n publishes; how many were accepted (the rest are over_message_quota)."""
        return self.run(self.ops["charge"], now, n)

    def run(self, op: Op, now: float, n: int) -> int:
        led = self.ledger
        call = getattr(led, op.call)
        self.events += n
        accepted = 0
        while n > 0:
            before = _state(led)
            ok = call(now) is not False
            self.calls += 1
            n -= 1
            accepted += ok
            if n and not self.per_event:
                more = self._repeat(op, before, ok, n)
                n -= more
                accepted += more if ok else 0
        return accepted

    def _repeat(self, op: Op, before: tuple, ok: bool, n: int) -> int:
        """Apply up to n more calls that do what the one just made did; how many."""
        led = self.ledger
        changed = {f: a - b for f, b, a in zip(FIELDS, before, _state(led), strict=True)
                   if a != b and f != "peak_concurrent"}
        if not changed:
            return n
        if not ok:
            # A refused publish still counts as used: the count moves away from the
            # quota it is over, so the next call is refused the same way.
            counted = changed.get(op.counter, 0)
            if changed not in ({op.rejected: 1}, {op.rejected: 1, op.counter: 1}):
                return 0
            if counted and (op.limit is None or getattr(led, op.counter) <= op.limit):
                return 0
            setattr(led, op.rejected, getattr(led, op.rejected) + n)
            setattr(led, op.counter, getattr(led, op.counter) + counted * n)
            return n
        if changed == {op.counter: op.step}:
            headroom = led.concurrent if op.limit is None else op.limit - getattr(led, op.counter)
            more = max(0, min(n, headroom))
        elif self._paid(op, changed, before):
            more = paid_run(led.balance_units, op.price, n)
            led.balance_units -= more * op.price
            led.overage_charge_units += more * op.price
            setattr(led, op.overage, getattr(led, op.overage) + more)
        else:
            return 0
        setattr(led, op.counter, getattr(led, op.counter) + op.step * more)
        led.peak_concurrent = max(led.peak_concurrent, led.concurrent)
        return more

    def _paid(self, op: Op, changed: dict[str, Any], before: tuple) -> bool:
        """Was the call just made an overage paid from the balance, with no recharge?"""
        led = self.ledger
        return (op.overage is not None and changed.get(op.counter) == 1
                and changed.get(op.overage) == 1
                and set(changed) <= {op.counter, op.overage, "balance_units",
                                     "overage_charge_units"}
                and led.balance_units == before[BALANCE] - op.price
                and led.overage_charge_units == before[CHARGES] + op.price)


def paid_run(balance: int, price: int, n: int) -> int:
    """How many of up to n payments of `price` the balance covers (nano-units)."""
    if price <= 0:
        return n if balance >= 0 else 0
    return max(0, min(n, balance // price))


# -- the projection -------------------------------------------------------------------


@dataclass
class Trace:
    """What the loop saw at each tick; the ledger keeps the totals."""

    admitted: np.ndarray  # sessions admitted at each tick (the first ones of the tick)
    peak_tick: int | None = None
    first_4010: int | None = None
    first_over_quota: int | None = None


def drive(sched: Schedule, driver: LedgerDriver) -> Trace:
    """Every tick of the period, in order: closes, connects, publishes."""
    ticks, span, tpd = sched.ticks, sched.session_ticks, sched.ticks_per_day
    low, high = (sched.kernel(m) for m in sched.kinds)
    extra = high - low
    mixed = sched.traffic.msgs_per_session % 1 != 0
    arrivals, starts = sched.arrivals, sched.starts
    trace = Trace(np.zeros(ticks, dtype=np.int64))
    admitted = trace.admitted
    sends = np.zeros(ticks + span, dtype=np.int64)
    led = driver.ledger
    day, high_sum = -1, np.zeros(1, dtype=np.int64)
    for t in range(ticks):
        now = t * sched.tick_s
        if t >= span and admitted[t - span]:
            driver.release(now, int(admitted[t - span]))
        n = int(arrivals[t])
        if n:
            peak = led.peak_concurrent
            k = admitted[t] = driver.admit(now, n)
            if led.peak_concurrent > peak:
                trace.peak_tick = t
            if k < n and trace.first_4010 is None:
                trace.first_4010 = t
            h = 0
            if k and mixed:
                if t // tpd != day:
                    day = t // tpd
                    high_sum = np.concatenate(([0], np.cumsum(sched.day_high(day))))
                i = int(starts[t] - starts[day * tpd])
                h = int(high_sum[i + k] - high_sum[i])
            if k:
                sends[t:t + span] += k * low + h * extra
        m = int(sends[t])
        if m and driver.charge(now, m) < m and trace.first_over_quota is None:
            trace.first_over_quota = t
    return trace


def _day_view(sched: Schedule, admitted: np.ndarray, day: int) -> tuple[np.ndarray, np.ndarray]:
    """(start tick, admitted?) of each session of the day, in schedule order."""
    lo = day * sched.ticks_per_day
    hi = min(lo + sched.ticks_per_day, sched.ticks)
    tick = np.repeat(np.arange(lo, hi), sched.arrivals[lo:hi])
    rank = np.arange(tick.size) - (sched.starts[tick] - sched.starts[lo])
    return tick, rank < admitted[tick]


def _sends_from(sched: Schedule, first: int) -> tuple[np.ndarray, ...]:
    """For each kind of session: does one that starts at tick s send at a tick in
    [first, end of period)? (indexed by s)"""
    start = np.arange(sched.ticks)
    out = []
    for count in sched.kinds:
        offsets = sched.offsets(count)
        if not offsets.size:
            out.append(np.zeros(sched.ticks, dtype=bool))
            continue
        i = np.searchsorted(offsets, first - start)
        at = start + offsets[np.minimum(i, offsets.size - 1)]
        out.append((i < offsets.size) & (at < sched.ticks))
    return tuple(out)


def _who(sched: Schedule, days: Iterable[int], hit: Callable[[int], np.ndarray],
         detail: bool) -> dict[str, Any]:
    """The sessions `hit(day)` marks (a mask over the day's sessions), and their clients."""
    clients = np.zeros(sched.traffic.clients, dtype=bool)
    sessions, listed = 0, []
    for day in days:
        mask = hit(day)
        if not mask.any():
            continue
        sessions += int(mask.sum())
        clients[sched.day_clients(day)[mask]] = True
        if detail and len(listed) < DETAIL_MAX:
            first = int(sched.starts[day * sched.ticks_per_day])
            listed.extend(int(first + i) for i in np.flatnonzero(mask))
    total = int(sched.starts[-1])
    out: dict[str, Any] = {
        "sessions": sessions, "session_share": sessions / total if total else 0.0,
        "clients": int(clients.sum()), "client_share": float(clients.mean())}
    if detail:
        out["session_indices"] = listed[:DETAIL_MAX]
    return out


def _refused(sched: Schedule, trace: Trace, detail: bool) -> dict[str, Any] | None:
    """The 4010s: when they start, for whom, at what hours."""
    if trace.first_4010 is None:
        return None
    refused = sched.arrivals - trace.admitted
    tpd = sched.ticks_per_day
    days = (d for d in range(sched.days) if refused[d * tpd:(d + 1) * tpd].any())
    who = _who(sched, days, lambda d: ~_day_view(sched, trace.admitted, d)[1], detail)
    hours = (np.arange(sched.ticks) % tpd) * 24 // tpd
    by_hour = np.bincount(hours, weights=refused, minlength=24)
    return {"first_at": when(sched, trace.first_4010), **who,
            "by_hour": [int(x) for x in by_hour]}


def _over_quota(sched: Schedule, trace: Trace, refused: int, detail: bool
                ) -> dict[str, Any] | None:
    """The over_message_quota refusals: from when, and whose sessions were sending."""
    first = trace.first_over_quota
    if first is None:
        return None

    low, high = _sends_from(sched, first)

    def hit(day: int) -> np.ndarray:
        tick, ok = _day_view(sched, trace.admitted, day)
        return ok & np.where(sched.day_high(day), high[tick], low[tick])

    since = max(0, (first - sched.session_ticks) // sched.ticks_per_day)
    who = _who(sched, range(since, sched.days), hit, detail)
    return {"first_at": when(sched, first), "messages": refused, **who}


def when(sched: Schedule, tick: int | None) -> dict[str, Any] | None:
    """A tick as seconds into the period, day (from 1) and time of day."""
    if tick is None:
        return None
    at = tick * sched.tick_s
    minute = int((at % sched.day_s) / sched.day_s * 1440)
    return {"t_s": at, "day": int(at // sched.day_s) + 1,
            "time_of_day": f"{minute // 60:02d}:{minute % 60:02d}"}


def _demand(sched: Schedule) -> tuple[int, int | None]:
    """The peak of sessions wanting to be connected (as if there were no cap), its tick."""
    if not sched.ticks:
        return 0, None
    end = np.arange(1, sched.ticks + 1)
    active = sched.starts[end] - sched.starts[np.maximum(0, end - sched.session_ticks)]
    return int(active.max()), int(active.argmax())


def _app(scenario: Scenario, app_id: str | None, period_s: float | None) -> App:
    apps = scenario.config.apps
    app = apps[0] if app_id is None else scenario.config.app(app_id)
    if app is None:
        known = ", ".join(a.id for a in apps)
        raise ConfigError(f"--app: no app {app_id!r} in the scenario (its apps: {known})")
    if period_s is not None:
        if not period_s > 0:
            raise ConfigError(f"period_s: must be > 0, got {period_s!r}")
        app = dataclasses.replace(app, plan=dataclasses.replace(app.plan,
                                                                period_seconds=period_s))
    return app


def project_period(scenario: Scenario, traffic: Traffic, *, app_id: str | None = None,
                   period_s: float | None = None, day_s: float = DAY_S,
                   ticks_per_day: int | None = None, per_event: bool = False,
                   detail: bool = False) -> dict[str, Any]:
    """One billing period of `traffic` on the app's plan, through the server's ledger.

    `period_s` replaces the plan's period; `day_s` compresses a traffic day onto the
    ledger's clock (a test replays a day in seconds); `per_event` makes one ledger call
    per event (the reference the batched runs are checked against); `detail` lists the
    schedule indices of the sessions refused (4010) or hit by over_message_quota.
    """
    started = time.perf_counter()
    app = _app(scenario, app_id, period_s)
    plan = app.plan
    config = dataclasses.replace(scenario.config, apps=(app,))
    ledger = MemoryLedgers(config, 0.0).ledgers[app.id]
    sched = build_schedule(traffic, period_s=plan.period_seconds, day_s=day_s,
                           seed=scenario.config.server.seed, ticks_per_day=ticks_per_day)
    driver = LedgerDriver(ledger, per_event=per_event)
    trace = drive(sched, driver)
    end = max(0, sched.ticks - 1) * sched.tick_s
    usage = ledger.usage(app.id, end)
    if ledger.period_start != 0.0:
        raise AssertionError("the schedule left the period")  # ticks are inside it
    result = _result(app.id, plan, sched, ledger, trace, usage, detail)
    result["ledger"] = {"calls": driver.calls, "events": driver.events,
                        "per_event": per_event}
    result["wall_s"] = round(time.perf_counter() - started, 3)
    return result


def _result(app_id: str, plan: Plan, sched: Schedule, led: Ledger, trace: Trace,
            usage: dict[str, Any], detail: bool) -> dict[str, Any]:
    sessions = int(sched.starts[-1])
    accepted = led.messages_used - led.rejected_messages
    demand, demand_tick = _demand(sched)
    return {
        "app": app_id,
        "plan": dataclasses.asdict(plan),
        "traffic": sched.traffic.describe(),
        "schedule": {"period_s": plan.period_seconds, "day_s": sched.day_s,
                     "days": plan.period_seconds / sched.day_s, "tick_s": sched.tick_s,
                     "ticks": sched.ticks, "session_ticks": sched.session_ticks,
                     "sessions": sessions, "seed": sched.seed},
        "usage": usage,
        "messages": {"attempted": led.messages_used, "accepted": accepted,
                     "overage": led.overage_messages, "refused": led.rejected_messages,
                     "deliveries": accepted * sched.traffic.fanout},
        "connections": {"sessions": sessions, "admitted": sessions - led.rejected_connections,
                        "overage": led.overage_connections,
                        "refused": led.rejected_connections,
                        "peak_concurrent": led.peak_concurrent,
                        "peak_at": when(sched, trace.peak_tick),
                        "peak_demand": demand, "peak_demand_at": when(sched, demand_tick)},
        "over_concurrent_limit": _refused(sched, trace, detail),
        "over_message_quota": _over_quota(sched, trace, led.rejected_messages, detail),
        "cost": {"overage_charges": led.overage_charges, "recharges": led.recharges,
                 "recharged": led.recharges * (plan.auto_recharge or 0.0),
                 "balance_start": plan.balance, "balance_end": led.balance},
    }


# -- the terminal summary -------------------------------------------------------------


def _n(count: float, noun: str) -> str:
    """`1 session`, `1,000,000 clients`, `1.5 sessions`."""
    text = f"{int(count):,}" if float(count).is_integer() else f"{count:,.6g}"
    return f"{text} {noun}" if count == 1 else f"{text} {noun}s"


def _money(x: float) -> str:
    """Money to a millionth, without float dust (0.001, not 0.0009999999999998)."""
    text = f"{round(x, 6):,.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _at(w: dict[str, Any]) -> str:
    return f"day {w['day']} at {w['time_of_day']}"


def _plan_line(r: dict[str, Any]) -> str:
    p = r["plan"]
    line = (f"plan {p['name']!r} of {r['app']}: {p['max_concurrent_connections']:,} "
            f"concurrent, {_n(p['max_messages_per_period'], 'message')} a period of "
            f"{p['period_seconds']:g} s ({_n(r['schedule']['days'], 'traffic day')})")
    if not (p["overages_allowed"] and p["overages_enabled"]):
        return line + "; no overage"
    recharge = f"auto-recharge {_money(p['auto_recharge'])}" if p["auto_recharge"] else \
        "no auto-recharge"
    return (line + f"; overage {_money(p['overage_price_per_message'])}/message, "
            f"{_money(p['overage_price_per_connection'])}/connection from a balance of "
            f"{_money(p['balance'])}, {recharge}")


def _refusal_lines(r: dict[str, Any]) -> list[str]:
    lines = []
    refused, quota = r["over_concurrent_limit"], r["over_message_quota"]
    if refused is None:
        lines.append("no 4010: every session was admitted")
    else:
        worst = max(range(24), key=refused["by_hour"].__getitem__)
        lines.append(f"4010 from {_at(refused['first_at'])}: "
                     f"{_n(r['connections']['refused'], 'session')} "
                     f"({refused['session_share']:.1%}) of {_n(refused['clients'], 'client')} "
                     f"({refused['client_share']:.1%}) refused, most at {worst:02d}:00-"
                     f"{(worst + 1) % 24:02d}:00")
    if quota is None:
        lines.append("no over_message_quota: every message was accepted")
    else:
        lines.append(f"over_message_quota from {_at(quota['first_at'])}: "
                     f"{_n(quota['messages'], 'message')} refused, sent by "
                     f"{_n(quota['sessions'], 'session')} ({quota['session_share']:.1%}) of "
                     f"{_n(quota['clients'], 'client')} ({quota['client_share']:.1%})")
    return lines


def period_lines(result: dict[str, Any]) -> list[str]:
    """What the projection says, in a few plain lines for the terminal."""
    r, t, m, c = result, result["traffic"], result["messages"], result["connections"]
    peak = f"peak concurrent {c['peak_concurrent']:,}"
    if c["peak_at"]:
        peak += f" ({_at(c['peak_at'])})"
    wanted = f"; wanted {c['peak_demand']:,}"
    if c["peak_demand_at"]:
        wanted += f" ({_at(c['peak_demand_at'])})"
    cost = r["cost"]
    return [
        _plan_line(r),
        f"traffic: {_n(t['clients'], 'client')} x {_n(t['sessions_per_day'], 'session')} "
        f"a day of {t['session_min']:g} min, {_n(t['msgs_per_session'], 'message')} a "
        f"session: {_n(c['sessions'], 'session')}, {_n(m['attempted'], 'message')}",
        peak + wanted,
        *_refusal_lines(r),
        f"overage: {_n(m['overage'], 'message')}, {_n(c['overage'], 'connection')}, cost "
        f"{_money(cost['overage_charges'])}; {_n(cost['recharges'], 'recharge')} "
        f"({_money(cost['recharged'])}); balance {_money(cost['balance_start'])} -> "
        f"{_money(cost['balance_end'])}",
        f"messages used {m['attempted']:,}, accepted {m['accepted']:,}: "
        f"{m['deliveries']:,.0f} deliveries at fan-out {t['fanout']:g} "
        "(not counted by the quota)",
        *_caveats(r),
    ]


def _caveats(r: dict[str, Any]) -> list[str]:
    """What the reader must know when the projection is mostly its own start."""
    period_s, day_s = r["schedule"]["period_s"], r["schedule"]["day_s"]
    if period_s >= day_s:
        return []
    return [f"note: the period ({period_s:g} s) is shorter than a traffic day and starts "
            "with no one connected: it shows a ramp from zero, not a typical day "
            "(--period-days projects a longer one)"]
