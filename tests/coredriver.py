"""Drive the sans-I/O core by plain function calls: no sockets, no event loop.

The memory backend never suspends, so its coroutines finish on the first `send`.
"""

from __future__ import annotations

from typing import Any

import orjson

from server.actions import Close, CloseAt, Deliver, Route, Send
from server.config import Config, default_config
from server.events import MemoryEventLog
from server.jsonenc import loads
from server.ledgers import MemoryLedgers
from server.memory import MemoryBackend
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
        admitted = finish(self.ledgers.admit_connection(pending.credential.app.id, self.now))
        conn, actions = self.service.admit(pending, admitted, self.now)
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
        if route.charge and not finish(self.ledgers.charge_message(conn.app_id, self.now)):
            return conn.over_quota(route, self.now)
        b = self.backend
        coro = {"publish": lambda: b.publish(route.body), "send": lambda: b.send(route.body),
                "subscribe": lambda: b.subscribe(conn, route.body,
                                                 route.include_sender_metadata),
                "unsubscribe": lambda: b.unsubscribe(conn, route.body)}[route.op]()
        return conn.complete(route, finish(coro), self.now)

    def send(self, conn, frame: Any) -> list[dict[str, Any]]:
        """Send one frame (dict -> JSON text); return the frames it caused for `conn`."""
        before = len(self.inbox[conn.id])
        text = frame if isinstance(frame, str | bytes) else orjson.dumps(frame).decode()
        self.perform(conn, conn.receive(text, self.now))
        return self.inbox[conn.id][before:]

    def disconnect(self, conn) -> None:
        self.service.disconnected(conn, self.now)
        finish(self.ledgers.release_connection(conn.app_id, self.now))
        finish(self.backend.disconnect(conn))

    def take(self, conn) -> list[dict[str, Any]]:
        out, self.inbox[conn.id] = self.inbox[conn.id], []
        self.raw[conn.id] = []
        return out
