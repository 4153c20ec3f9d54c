"""The asyncio adapter: `websockets` sockets in, core actions out.

Thin on purpose: read a frame, call the core, perform the actions it returns. Every
protocol rule lives in the core (`connection.py`, `service.py`); this file only knows
sockets, timers and the backend.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from . import codes
from .actions import Close, CloseAt, Deliver, Route, Send
from .backend import Backend, BackendError
from .config import Config
from .connection import Connection
from .events import EventSink
from .memory import MemoryBackend
from .service import Service

log = logging.getLogger("rtmsim.server")
OPEN = State.OPEN
WS_PATH = "/v1"


class Node:
    """One server instance: a websockets server around one `Service` and a backend."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time,
                 events: EventSink | None = None, instance_id: str | None = None,
                 backend: Callable[[Any, Node], Backend] | None = None) -> None:
        self.clock = clock
        self.config = config
        self.service = Service(config, clock(), events=events, instance_id=instance_id)
        factory = backend or MemoryBackend
        self.backend: Backend = factory(self.service.hub, self)
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.server: Server | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Listen; return the bound port (useful with port 0)."""
        await self.backend.start()
        self.server = await serve(
            self._handle, host, port,
            process_request=_only_ws_path,
            max_size=self.config.limits.max_frame_bytes,
            ping_interval=30, ping_timeout=10,  # silent for 40 s -> closed (PROTOCOL 2.4)
            compression=None,
        )
        return self.server.sockets[0].getsockname()[1]

    async def shutdown(self, retry_after_ms: int = 1000) -> None:
        """Graceful stop: `going_away` + 1001 to everyone, then close the listener."""
        if self.server is not None:
            self.server.close(close_connections=False)
        await self.going_away(1.0, retry_after_ms)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=5)
        if self.server is not None:
            await self.server.wait_closed()
        await self.backend.stop()

    # -- connections -------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        service = self.service
        params = parse_qs(urlsplit(ws.request.path).query, keep_blank_values=True)
        conn, actions = service.open(params, self.clock())
        if conn is None:
            close = actions[0]
            await ws.close(close.code, close.reason)
            return
        conn.transport = ws
        try:
            await self.backend.connect(conn)
            await self._perform(conn, actions)
            async for frame in ws:
                try:
                    actions = conn.receive(frame, self.clock())
                except Exception:
                    log.exception("unexpected error handling a frame")
                    actions = conn.fail(Route("frame", None, None), "internal_error",
                                        "internal error", self.clock())
                if actions:
                    await self._perform(conn, actions)
        except ConnectionClosed:
            pass
        finally:
            await self._forget(conn, ws)

    async def _forget(self, conn: Connection, ws: ServerConnection) -> None:
        timer = self._timers.pop(conn.id, None)
        if timer is not None:
            timer.cancel()
        now = self.clock()
        sent = ws.protocol.close_sent
        if conn.close_code is None and sent is not None and not ws.protocol.close_rcvd_then_sent:
            conn.close(sent.code, sent.reason, now)  # the library closed it (1009, 1011)
        code = ws.close_code
        if self.service.disconnected(conn, now, code):
            try:
                await self.backend.disconnect(conn)
            except Exception:
                log.exception("backend failed to forget a connection")

    async def _perform(self, conn: Connection, actions: list[Any]) -> None:
        ws: ServerConnection = conn.transport
        for action in actions:
            cls = action.__class__
            if cls is Send:
                if ws.protocol.state is OPEN:
                    ws.protocol.send_text(action.payload)
                    ws.send_data()
                    conn.counters.frames_out[action.kind] += 1
            elif cls is Route:
                await self._perform(conn, await self._route(conn, action))
            elif cls is Deliver:
                self.deliver([action])
            elif cls is Close:
                await ws.close(action.code, action.reason)
            elif cls is CloseAt:
                delay = max(0.0, action.at - self.clock())
                self._timers[conn.id] = asyncio.get_running_loop().call_later(
                    delay, self._close_later, conn, action.code, action.reason)

    async def _route(self, conn: Connection, route: Route) -> list[Any]:
        backend = self.backend
        op = route.op
        try:
            if op == "publish":
                result: Any = await backend.publish(route.body)
            elif op == "send":
                result = await backend.send(route.body)
            elif op == "subscribe":
                result = await backend.subscribe(conn, route.body,
                                                 route.include_sender_metadata)
            else:
                result = await backend.unsubscribe(conn, route.body)
        except BackendError as exc:
            return conn.fail(route, "backend_error", str(exc) or "backend unavailable",
                             self.clock())
        except Exception:
            log.exception("unexpected error routing %s", op)
            return conn.fail(route, "internal_error", "internal error", self.clock())
        return conn.complete(route, result, self.clock())

    def _close_later(self, conn: Connection, code: int, reason: str) -> None:
        self._timers.pop(conn.id, None)
        self.close_connection(conn, code, reason)

    def close_connection(self, conn: Connection, code: int, reason: str,
                         going_away_ms: int | None = None) -> bool:
        """Close from outside the frame loop (kick, deploy, expiry); False if closing."""
        if not conn.close(code, reason, self.clock()):
            return False
        ws: ServerConnection = conn.transport
        if going_away_ms is not None and ws.protocol.state is OPEN:
            payload = orjson.dumps({"type": "going_away", "retryAfterMs": going_away_ms})
            ws.protocol.send_text(payload)
            ws.send_data()
            conn.counters.frames_out["going_away"] += 1
        task = asyncio.ensure_future(ws.close(code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return True

    # -- LocalNode: what backends call -------------------------------------------------

    def deliver(self, deliveries: list[Deliver]) -> None:
        for d in deliveries:
            n = 0
            payload = d.payload
            for conn in d.targets:
                ws = conn.transport
                if ws.protocol.state is OPEN:
                    try:
                        ws.protocol.send_text(payload)
                        ws.send_data()
                    except Exception as exc:  # a socket failing mid-write: skip it
                        log.debug("skipped delivery: %s", exc)
                        continue
                    n += 1
            if n:
                counters = d.targets[0].counters
                counters.frames_out[d.kind] += n
                if d.kind == "message" or d.kind == "direct":
                    counters.delivered += n

    def close_peer(self, app_id: str, peer_id: str, code: int, reason: str) -> int:
        conns = self.service.hub.peer_connections(app_id, peer_id)
        return sum(self.close_connection(c, code, reason) for c in conns)

    async def going_away(self, fraction: float, retry_after_ms: int) -> int:
        """Simulated deploy: `going_away` then 1001 for a seeded fraction of connections."""
        conns = sorted(self.service.connections.values(), key=lambda c: c.id)
        chosen = self.service.pick_fraction(conns, fraction)
        return sum(self.close_connection(c, codes.GOING_AWAY, "going away", retry_after_ms)
                   for c in chosen)


async def _only_ws_path(connection: ServerConnection, request: Any) -> Any:
    """Reject any path but /v1 at the HTTP upgrade (404)."""
    if urlsplit(request.path).path != WS_PATH:
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
    return None
