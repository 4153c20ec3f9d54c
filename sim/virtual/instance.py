"""One server instance in virtual time: the real core behind a modelled event loop.

The protocol is the core's (`Service`, `Connection`, `routing.run_route`,
`run_connect`, the fault engine, the ledgers, the memory backend's hub), called with
virtual `now`; this module only supplies time. Each instance is one event loop on one
core: a FIFO queue of jobs (a frame read, a connect, a close, a resumed hold), each
costing the model's CPU for its operation plus `delivery` per frame it fans out, so
latency, timeouts and the knee come out of the queue. A job whose client has given up
still runs and still costs (this is what makes retry storms metastable).

A publish to k subscribers is one job and one bulk write: recipient i's frame leaves
at the job's start + the publish's cost + i deliveries, and arrives a network draw
later; nothing is scheduled per recipient.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from server.actions import Action, Close, CloseAt, Deliver, Route, Send
from server.codes import CloseCode
from server.config import Config
from server.events import EventSink
from server.faults import FaultEngine
from server.ledgers import MemoryLedgers
from server.memory import MemoryBackend
from server.routing import call_backend, frame_failed, run_connect, run_disconnect, run_route
from server.service import Service

from .model import Model, WakeCurve

if TYPE_CHECKING:
    from server.connection import Connection

    from .clients import VirtualClient
    from .engine import Engine

DRAIN_HORIZON_S = 0.01  # how far ahead of the clock queued jobs may run
# The kinds of frame a delivery counts as (the server's `delivered` counter).
COUNTED = ("message", "direct")


class Hold:
    """What `Port.hold` returns, and what a backend awaits for a Redis reply: the
    coroutine yields it, the instance resumes it `seconds` later as a new job."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __await__(self) -> Generator[Hold, None, None]:
        yield self


class Instance:
    """A Service, its fault engine and hub, one core's FIFO queue, and the Port the
    core's orders (`server.routing`) ask their driver for."""

    def __init__(self, engine: Engine, config: Config, model: Model, index: int,
                 ledgers: MemoryLedgers, events: EventSink | None, *,
                 instance_id: str | None,
                 backend: Callable[[Any, Instance], Any] = MemoryBackend) -> None:
        self.engine = engine
        self.env = engine.env
        self.model = model
        self.index = index
        self.epoch = engine.epoch
        self.started = 0.0  # the running job's start (virtual s)
        now = engine.clock()
        self.service = Service(config, now, events=events, instance_id=instance_id,
                               cross_instance_send=config.server.cross_instance_send)
        self.ledgers = ledgers
        self.backend = backend(self.service.hub, self)
        self.faults = FaultEngine(config.server.seed, now)
        self.faults.load(config.faults)
        self.faults.set_origin(engine.origin)
        self.queue: collections.deque[Callable[[], None]] = collections.deque()
        self.free_at = 0.0  # when the core has done every job it has been given
        self.draining = False
        self.busy_s = 0.0  # CPU seconds used, for the stats' `process.cpu_s`
        self.lent_s = 0.0  # CPU of other processes run on this core (`lend`)
        self.connects_waiting = 0  # upgrades in the accept queue (the listen backlog)
        self.costs = {op: model.cost_s(op) for op in model.costs_us}
        # each job's share of its loop turn (`Model.turn_us`): 1 / the jobs ready
        # when the core came free to run them (a job reaching an idle core: 1)
        self.turns = {op: us / 1e6 for op, us in model.turn_us.items() if us}
        self.share = 1.0
        self.wake = WakeCurve(model.wake_curve)
        self.wake_cpu = WakeCurve(model.wake_cpu_curve)
        self.cursor = 0.0  # within a job: the virtual time its output has reached
        self.timers: dict[int, Any] = {}

    # -- the event loop: one job at a time, FIFO -----------------------------------------

    def submit(self, job: Callable[[], None], own: bool = True) -> None:
        """Queue `job`: it runs when the core is free, and its output leaves as its
        costs accrue (`spend` advances `self.cursor`).

        Not an event per job: the jobs already queued that start within
        `DRAIN_HORIZON_S` run back to back in one callback, each at its own start time
        (the core's clock reads the job's start). Every input of a queued job has
        arrived, and everything else that touches this instance's state is a job too,
        so this keeps a FIFO core's order; what the stats show runs at most the
        horizon ahead. `own`: the instance's work (not another process's, `lend`).
        """
        now = self.env.now
        if self.free_at <= now and not self.queue:
            # An idle core first wakes up: the job runs that much later, and what
            # arrives meanwhile queues behind it; and it runs slower (more CPU) the
            # longer the core idled.
            idle = now - self.free_at
            self.share = 1.0
            self._run(job, now + self.wake(idle), self.wake_cpu(idle) if own else 0.0)
            return
        self.queue.append(job)
        if not self.draining:
            self.draining = True
            self.engine.at(self.free_at, self._drain)

    def _run(self, job: Callable[[], None], start: float, extra: float = 0.0) -> None:
        self.started = start
        self.cursor = start + extra
        job()
        self.busy_s += self.cursor - start
        self.free_at = self.cursor

    def _drain(self) -> None:
        queue = self.queue
        horizon = self.env.now + DRAIN_HORIZON_S
        # One turn of the loop: the jobs ready when the core came free share it.
        share = 1.0 / len(queue)
        while queue and self.free_at <= horizon:
            self.share = share
            self._run(queue.popleft(), self.free_at)
        if queue:
            self.engine.at(self.free_at, self._drain)
        else:
            self.draining = False

    def cpu_s(self) -> float:
        """CPU seconds used by now (queued jobs that run ahead are not counted yet)."""
        return self.busy_s - max(0.0, self.free_at - self.env.now)

    def clock(self) -> float:
        """The core's clock: the running job's start, in virtual unix seconds."""
        return self.epoch + self.started

    def spend(self, op: str) -> float:
        """Charge `op`'s cost to the running job, with its share of the loop turn;
        the virtual time after it."""
        turns = self.turns
        if turns and op in turns:
            self.cursor += turns[op] * self.share
        self.cursor += self.costs[op]
        return self.cursor

    def spend_s(self, seconds: float) -> None:
        """Charge CPU not named by an operation (a Redis hop)."""
        self.cursor += seconds

    def lend(self, seconds: float, then: Callable[[float], None] | None = None) -> None:
        """Another process's work on this core (`Model.colocated`: redis-server, the
        load process): it takes its turn in the queue and delays this instance's jobs,
        but is not this process's CPU. `then(done)` when it is over."""
        def job() -> None:
            self.cursor += seconds
            self.busy_s -= seconds
            self.lent_s += seconds
            if then is not None:
                then(self.cursor)
        self.submit(job, own=False)

    # -- jobs ----------------------------------------------------------------------------

    def upgrade(self, client: VirtualClient, params: dict[str, list[str]], jwt: bool) -> None:
        """An upgrade reached the listener: into the accept queue, or (the backlog full)
        its SYN is dropped and the client's kernel retries."""
        if self.connects_waiting >= self.model.backlog:
            client.syn_dropped(self)
            return
        self.connects_waiting += 1
        self.submit(lambda: self._connect(client, params, jwt))

    def _connect(self, client: VirtualClient, params: dict[str, list[str]], jwt: bool) -> None:
        self.connects_waiting -= 1
        self.spend("connect_jwt" if jwt else "connect_key")
        if client.abandoned_connect():  # the client timed out while it waited: a reset
            return
        service = self.service
        pending = service.authenticate(params, self.clock())
        if isinstance(pending, list):
            client.rejected(pending[0].code, self.cursor)
            return
        conn, actions = self._finish(run_connect(service, pending, self.faults, self.clock,
                                                 self))
        if conn is None:
            client.rejected(actions[0].code, self.cursor)
            return
        conn.transport = client
        self._finish(self.backend.connect(conn))
        client.welcomed(conn, self)
        self.perform(conn, actions)

    def frame(self, conn: Connection, text: str, op: str) -> None:
        """A frame from `conn` is read (`op` names its cost)."""
        self.spend(op)
        try:
            actions = conn.receive(text, self.clock())
        except Exception:
            actions = frame_failed(conn, self.clock())
        self.perform(conn, actions)

    def disconnected(self, conn: Connection, code: int | None) -> None:
        """The socket of `conn` is gone (its close handshake is over)."""
        self.spend("disconnect")
        timer = self.timers.pop(conn.id, None)
        if timer is not None:
            timer.cancelled = True
        self._finish(run_disconnect(self.service, conn, self.clock(), self, code))

    # -- performing the core's actions ---------------------------------------------------

    def perform(self, conn: Connection, actions: list[Action]) -> None:
        for action in actions:
            cls = action.__class__
            if cls is Send:
                conn.transport.frame_from_server(action.payload, action.kind, self.cursor)
                conn.counters.frames_out[action.kind] += 1
            elif cls is Route:
                self._route(conn, run_route(conn, action, self.faults, self.clock, self))
            elif cls is Deliver:
                self.deliver([action])
            elif cls is Close:
                self.spend("close")
                conn.transport.closed_by_server(action.code, self.cursor)
            elif cls is CloseAt:
                self._close_at(conn, action)

    def _route(self, conn: Connection, coro: Any, value: Any = None) -> None:
        """Run a routed operation until it completes or holds; a hold resumes as a
        new job when it ends (so it queues behind what arrived meanwhile)."""
        try:
            hold = coro.send(value)
        except StopIteration as stop:
            self.perform(conn, stop.value)
            return
        at = self.cursor + hold.seconds
        self.engine.at(at, lambda: self.submit(lambda: self._route(conn, coro)))

    def _finish(self, coro: Any) -> Any:
        """Run a coroutine that must not hold (connect faults' holds are not modelled
        inside an upgrade: their delay is added to the job instead)."""
        value = None
        while True:
            try:
                hold = coro.send(value)
            except StopIteration as stop:
                return stop.value
            self.cursor += hold.seconds  # the upgrade waits; the core is modelled busy

    def _close_at(self, conn: Connection, action: CloseAt) -> None:
        def fire() -> None:
            self.timers.pop(conn.id, None)
            self.submit(lambda: self.perform(conn, conn.close(action.code, action.reason,
                                                              self.clock())))
        self.timers[conn.id] = self.engine.timer(max(self.cursor, action.at - self.epoch),
                                                 fire)

    def deliver(self, deliveries: list[Deliver]) -> None:
        """Fan out: each target costs `delivery`; its frame leaves when written."""
        faults = self.faults
        per = self.costs["delivery"]
        for d in deliveries:
            targets = d.targets
            if not targets:
                continue
            copies = None
            if faults.has_delivery_faults and d.kind in COUNTED:
                acting = faults.delivery_faults(targets[0].app_id, d.channel, self.clock())
                if acting:
                    copies = self._copies(faults.delivery_plan(acting, len(targets)),
                                          len(targets))
            start = self.cursor
            n = len(targets) if copies is None else sum(copies)
            self.cursor = start + per * n
            if n:
                self.engine.delivered(d, targets, copies, start, per)
                counters = targets[0].counters
                counters.frames_out[d.kind] += n
                if d.kind in COUNTED:
                    counters.delivered += n

    @staticmethod
    def _copies(plan: dict[int, tuple[int, list[Any]]], n: int) -> list[int]:
        copies = [1] * n
        for i, (k, faults) in plan.items():
            copies[i] = k
            for fault in faults:
                fault.hits += 1
        return copies

    # -- one-shot faults (deploys, drops, kicks) -------------------------------------------

    def strike_due(self) -> None:
        for strike in self.faults.due_strikes(self.clock()):
            if strike.action == "pause":  # the loop stalls: latency, not CPU
                self.cursor += strike.pause_s
                self.busy_s -= strike.pause_s
                continue
            _, hits = self.service.strike(strike, self.faults, self.clock())
            for conn, actions in hits:
                if actions[-1].code == CloseCode.ABNORMAL_CLOSURE:  # a drop: cut, no frame
                    conn.transport.closed_by_server(CloseCode.ABNORMAL_CLOSURE, self.cursor,
                                                    clean=False)
                else:
                    self.perform(conn, actions)

    def next_strike_at(self) -> float | None:
        """When the next one-shot fault is due (virtual s, not before now). Counted from
        the core's clock (the last job's start), which the queue may have run ahead of
        or left behind the engine's."""
        wait = self.faults.next_strike_in(self.clock())
        return None if wait is None else max(self.env.now, self.started + wait)

    # -- LocalNode and Port ------------------------------------------------------------------

    def close_peer(self, app_id: str, peer_id: str, code: int, reason: str) -> int:
        conns = self.service.hub.peer_connections(app_id, peer_id)
        for c in conns:
            self.perform(c, c.close(code, reason, self.clock()))
        return len(conns)

    def charge(self, app_id: str) -> Any:
        return self.ledgers.charge_message(app_id, self.clock())

    def admit(self, app_id: str) -> Any:
        return self.ledgers.admit_connection(app_id, self.clock())

    def release(self, app_id: str) -> Any:
        return self.ledgers.release_connection(app_id, self.clock())

    def forget(self, conn: Connection) -> Any:
        return self.backend.disconnect(conn)

    def hold(self, seconds: float) -> Hold:
        self.service.stats.holds.observe(seconds)
        return Hold(seconds)

    def call(self, origin: object, route: Route) -> Any:
        return call_backend(self.backend, origin, route)

    # -- what /sim/v1/stats would show ------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        body = self.service.stats.snapshot()
        body["instance"] = self.service.instance_id
        body["backend"] = self.backend.state()
        body["process"] = {"cpu_s": round(self.cpu_s(), 6), "virtual": True}
        body["serverTime"] = int(now * 1000)
        body["usage"] = {app.id: self.ledgers.ledgers[app.id].usage(app.id, now)
                         for app in self.service.config.apps}
        body["faults"] = {"scenarioTime": round(self.faults.scenario_time(now), 6),
                          "origin": self.faults.origin, "active": self.faults.describe()}
        return body


def ceil_tick(first_at: float, tick: float, t: float) -> float:
    """The first of first_at, first_at + tick, ... at or after t."""
    if t <= first_at or tick <= 0:
        return max(first_at, t)
    return first_at + math.ceil((t - first_at) / tick - 1e-12) * tick
