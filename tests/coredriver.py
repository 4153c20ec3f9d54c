"""Drive the sans-I/O core by plain function calls: no sockets, no event loop.

The memory backend never suspends, so its coroutines finish on the first `send`.
Routes, connects and disconnects run the core's own orders (`server.routing`), faults
included; a hold advances this driver's clock instead of sleeping.
"""

from __future__ import annotations

from typing import Any

import orjson

from server.actions import Close, CloseAt, Deliver, Route, Send
from server.config import Config, default_config
from server.events import MemoryEventLog
from server.faults import FaultEngine
from server.jsonenc import loads
from server.ledgers import MemoryLedgers
from server.memory import MemoryBackend
from server.routing import call_backend, run_connect, run_disconnect, run_route
from server.service import Service


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
        conn, actions = finish(run_connect(self.service, pending, self.faults, self.clock, self))
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
        return finish(run_route(conn, route, self.faults, self.clock, self))

    def clock(self) -> float:
        return self.now

    # Port: the core's orders (server.routing) run here in no time, as on `Node`.
    def charge(self, app_id: str) -> Any:
        return self.ledgers.charge_message(app_id, self.now)

    def admit(self, app_id: str) -> Any:
        return self.ledgers.admit_connection(app_id, self.now)

    def release(self, app_id: str) -> Any:
        return self.ledgers.release_connection(app_id, self.now)

    def forget(self, conn) -> Any:
        return self.backend.disconnect(conn)

    async def hold(self, seconds: float) -> None:
        self.holds.append(seconds)
        self.now += seconds

    def call(self, origin: object, route: Route) -> Any:
        return call_backend(self.backend, origin, route)

    def send(self, conn, frame: Any) -> list[dict[str, Any]]:
        """Send one frame (dict -> JSON text); return the frames it caused for `conn`."""
        before = len(self.inbox[conn.id])
        text = frame if isinstance(frame, str | bytes) else orjson.dumps(frame).decode()
        self.perform(conn, conn.receive(text, self.now))
        return self.inbox[conn.id][before:]

    def disconnect(self, conn) -> None:
        finish(run_disconnect(self.service, conn, self.now, self))

    def take(self, conn) -> list[dict[str, Any]]:
        out, self.inbox[conn.id] = self.inbox[conn.id], []
        self.raw[conn.id] = []
        return out
