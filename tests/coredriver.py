"""Drive the sans-I/O core by plain function calls: no sockets, no event loop.

The memory backend never suspends, so its coroutines finish on the first `send`.
Routes, connects and disconnects run the core's own orders (`server.routing`), faults
included; a `Hold` advances this driver's clock instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

import orjson

from server.actions import Close, CloseAt, Deliver, Route, Send
from server.config import Config, default_config
from server.events import MemoryEventLog
from server.faults import FaultEngine
from server.jsonenc import loads
from server.ledgers import MemoryLedgers
from server.memory import MemoryBackend
from server.routing import (
    Admit,
    Charge,
    Forget,
    Hold,
    Release,
    Step,
    call_backend,
    connect_steps,
    disconnect_steps,
    route_steps,
)
from server.service import Service

T = TypeVar("T")


def finish(coro: Any) -> Any:
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the memory backend suspended")


class Core:
    """A service, its memory backend and an inbox per connection."""

    def __init__(self, config: Config | None = None, now: float = 1_000.0) -> None:
        self.now = now
        self.events = MemoryEventLog()
        self.service = Service(config or default_config(), now, events=self.events)
        self.backend = MemoryBackend(self.service.hub, self)
        self.ledgers = MemoryLedgers(self.service.config, now)
        self.faults = FaultEngine(self.service.config.server.seed, now)
        self.faults.load(self.service.config.faults)
        self.holds: list[float] = []  # every Hold the core asked for, in seconds
        self.inbox: dict[int, list[dict[str, Any]]] = {}
        self.raw: dict[int, list[bytes]] = {}  # the same frames, as sent on the wire
        self.closed: dict[int, int] = {}
        self.timers: list[CloseAt] = []

    # LocalNode
    def deliver(self, deliveries: list[Deliver]) -> None:
        for d in deliveries:
            for conn in d.targets:
                self._received(conn, d.payload)

    def close_peer(self, app_id: str, peer_id: str, code: int, reason: str) -> int:
        conns = self.service.hub.peer_connections(app_id, peer_id)
        for c in conns:
            self.perform(c, c.close(code, reason, self.now))
        return len(conns)

    def connect(self, **params: str):
        pending = self.service.authenticate({k: [v] for k, v in params.items()}, self.now)
        if isinstance(pending, list):
            return pending[0]
        conn, actions = self.run(connect_steps(self.service, pending, self.faults, self.clock))
        if conn is None:
            assert isinstance(actions[0], Close)
            return actions[0]
        self.inbox[conn.id] = []
        self.raw[conn.id] = []
        finish(self.backend.connect(conn))
        self.perform(conn, actions)
        return conn

    def _received(self, conn, payload: bytes) -> None:
        self.raw[conn.id].append(payload)
        self.inbox[conn.id].append(loads(payload))  # the server's frames may carry \ud800

    def perform(self, conn, actions) -> None:
        for a in actions:
            if isinstance(a, Send):
                self._received(conn, a.payload)
            elif isinstance(a, Deliver):
                self.deliver([a])
            elif isinstance(a, Close):
                self.closed[conn.id] = a.code
            elif isinstance(a, CloseAt):
                self.timers.append(a)
            elif isinstance(a, Route):
                self.perform(conn, self.route(conn, a))

    def route(self, conn, route: Route):
        return self.run(route_steps(conn, route, self.faults, self.clock), conn)

    def clock(self) -> float:
        return self.now

    def run(self, steps: Generator[Step, Any, T], origin: object = None) -> T:
        """Perform a core order's steps until it returns (as `Node.run`, in no time)."""
        try:
            step = next(steps)
            while True:
                try:
                    value = self._perform_step(step, origin)
                except AssertionError:
                    raise
                except Exception as exc:
                    step = steps.throw(exc)
                else:
                    step = steps.send(value)
        except StopIteration as stop:
            return stop.value

    def _perform_step(self, step: Step, origin: object) -> Any:
        if isinstance(step, Route):
            return finish(call_backend(self.backend, origin, step))
        if isinstance(step, Charge):
            return finish(self.ledgers.charge_message(step.app_id, self.now))
        if isinstance(step, Admit):
            return finish(self.ledgers.admit_connection(step.app_id, self.now))
        if isinstance(step, Release):
            return finish(self.ledgers.release_connection(step.app_id, self.now))
        if isinstance(step, Forget):
            return finish(self.backend.disconnect(step.conn))
        if isinstance(step, Hold):
            self.holds.append(step.seconds)
            self.now += step.seconds
        return None

    def send(self, conn, frame: Any) -> list[dict[str, Any]]:
        """Send one frame (dict -> JSON text); return the frames it caused for `conn`."""
        before = len(self.inbox[conn.id])
        text = frame if isinstance(frame, str | bytes) else orjson.dumps(frame).decode()
        self.perform(conn, conn.receive(text, self.now))
        return self.inbox[conn.id][before:]

    def disconnect(self, conn) -> None:
        self.run(disconnect_steps(self.service, conn, self.now))

    def take(self, conn) -> list[dict[str, Any]]:
        out, self.inbox[conn.id] = self.inbox[conn.id], []
        self.raw[conn.id] = []
        return out
