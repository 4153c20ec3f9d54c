"""The asyncio adapter: `websockets` sockets in, core actions out.

Thin on purpose: read a frame, call the core, perform the actions it returns. Every
protocol rule lives in the core (`connection.py`, `service.py`), the order of a routed
operation and of a connect in `routing.py` (whose steps `Node.run` performs), and
every fault decision in the fault engine; this file only knows sockets, timers, the
ledgers and the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import websockets.http11
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from .actions import Action, Close, CloseAt, Deliver, Route, Send
from .auth import MAX_TOKEN_BYTES
from .backend import Backend
from .codes import CloseCode
from .config import Config
from .connection import Connection
from .descriptors import RETRY_AFTER_S, DescriptorGuard
from .events import EventSink
from .faults import ConnectionStrike, FaultEngine
from .ledgers import Ledgers, MemoryLedgers
from .memory import MemoryBackend
from .routing import (
    Origin,
    call_backend,
    frame_failed,
    run_connect,
    run_disconnect,
    run_route,
)
from .service import Service

log = logging.getLogger("rtmsim.server")

# A JWT with full metadata travels in the upgrade's request line (?token=...) and can
# reach ~17 KB; websockets' default line limit (8 KB, WEBSOCKETS_MAX_LINE_LENGTH)
# would answer HTTP 414 before auth could say 4001 or welcome the peer.
websockets.http11.MAX_LINE_LENGTH = max(websockets.http11.MAX_LINE_LENGTH,
                                        MAX_TOKEN_BYTES + 8192)
OPEN = State.OPEN
WS_PATH = "/v1"
# How long a close handshake may wait for a peer that does not read (websockets'
# close_timeout) before the socket is cut.
CLOSE_TIMEOUT_S = 10.0
T = TypeVar("T")


async def hold(seconds: float) -> None:
    """Sleep at least `seconds`: an injected latency must never be shorter than asked.

    uvloop (libuv) measures a timer from the loop iteration's cached clock, so a plain
    `asyncio.sleep` scheduled late in a busy iteration ends up to that iteration's age
    early (50 ms measured as 49.2 ms), and clients would count the request undelayed.
    """
    deadline = time.monotonic() + seconds
    await asyncio.sleep(seconds)
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(left)

class BoundedConnection(ServerConnection):
    """websockets' connection that tells the node when its outbound bound is passed.

    The transport calls `pause_writing` once it buffers more than its high-water mark,
    which `serve(write_limit=...)` sets to `limits.max_outbound_bytes`: the bound is
    checked by the transport on every write path (deliveries, acks, presence, REST and
    Redis fan-out), with nothing added per delivery. It is called from inside
    `transport.write()`, so the node acts on it on the next turn of the loop.
    """

    on_outbound_full: Callable[[], None] | None = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.on_outbound_full is not None:
            self.loop.call_soon(self.on_outbound_full)


class Node:
    """One server instance: a websockets server around one `Service` and a backend."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time,
                 events: EventSink | None = None, instance_id: str | None = None,
                 backend: Callable[[Any, Node], Backend] | None = None,
                 ledgers: Ledgers | None = None) -> None:
        self.clock = clock
        self.config = config
        now = clock()
        self.service = Service(config, now, events=events, instance_id=instance_id,
                               cross_instance_send=config.server.cross_instance_send)
        self.ledgers: Ledgers = ledgers or MemoryLedgers(config, now)
        self.backend: Backend = (backend or MemoryBackend)(self.service.hub, self)
        self.faults = FaultEngine(config.server.seed, now)
        self.faults.load(config.faults)
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Task[Any]] = set()
        self._faults_changed = asyncio.Event()
        self._strikes: asyncio.Task[None] | None = None
        self.server: Server | None = None
        self.descriptors = DescriptorGuard()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Listen; return the bound port (useful with port 0)."""
        await self.backend.start()
        self.server = await serve(
            self._handle, host, port,
            process_request=self._process_request,
            max_size=self.config.limits.max_frame_bytes,
            ping_interval=30, ping_timeout=10,  # silent for 40 s -> closed (PROTOCOL 2.4)
            compression=None,
            create_connection=BoundedConnection,
            write_limit=self.config.limits.max_outbound_bytes,
            close_timeout=CLOSE_TIMEOUT_S,
            backlog=2048,  # reconnect storms: the default 100 overflows the accept queue
        )
        self._strikes = asyncio.create_task(self._strike_loop())
        return self.server.sockets[0].getsockname()[1]

    async def shutdown(self, retry_after_ms: int = 1000) -> None:
        """Graceful stop: `going_away` + 1001 to everyone, then close the listener."""
        if self._strikes is not None:
            self._strikes.cancel()
        if self.server is not None:
            self.server.close(close_connections=False)
        self.going_away(1.0, retry_after_ms)
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=5)
        if self.server is not None:
            await self.server.wait_closed()
        await self.backend.stop()

    async def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        """The HTTP upgrade: 404 off /v1; 503 while file descriptors run out."""
        sock = connection.transport.get_extra_info("socket")
        if sock is not None and not self.descriptors.admits(sock.fileno()):
            response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE,
                                          "out of file descriptors: retry later\n")
            response.headers["Retry-After"] = str(RETRY_AFTER_S)
            # Free the descriptor once the response is written, without waiting (as
            # websockets does after a refusal) for the client to close its side.
            connection.close_timeout = 0
            return response
        return _only_ws_path(connection, request)

    def faults_changed(self) -> None:
        """Call after adding faults or moving the origin: re-plans one-shot faults."""
        self._faults_changed.set()

    # -- connections -------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        service = self.service
        params = parse_qs(urlsplit(ws.request.path).query, keep_blank_values=True)
        pending = service.authenticate(params, self.clock())
        if isinstance(pending, list):
            await ws.close(pending[0].code, pending[0].reason)
            return
        conn, actions = await run_connect(service, pending, self.faults, self.clock, self)
        if conn is None:
            await ws.close(actions[0].code, actions[0].reason)
            return
        conn.transport = ws
        ws.on_outbound_full = functools.partial(self._outbound_full, conn)
        try:
            await self.backend.connect(conn)
            await self._perform(conn, actions)
            async for frame in ws:
                try:
                    actions = conn.receive(frame, self.clock())
                except Exception:
                    log.exception("unexpected error handling a frame")
                    actions = frame_failed(conn, self.clock())
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
        await run_disconnect(self.service, conn, now, self, ws.close_code)

    async def _perform(self, conn: Connection, actions: list[Action]) -> None:
        ws: ServerConnection = conn.transport
        for action in actions:
            cls = action.__class__
            if cls is Send:
                if ws.protocol.state is OPEN:
                    ws.protocol.send_text(action.payload)
                    ws.send_data()
                    conn.counters.frames_out[action.kind] += 1
            elif cls is Route:
                await self._perform(conn, await run_route(conn, action, self.faults,
                                                          self.clock, self))
            elif cls is Deliver:
                self.deliver([action])
            elif cls is Close:
                # In the background: the frame loop keeps draining what the client
                # already queued (ignored now), so the close handshake can finish.
                self._background(close_ws(ws, action.code, action.reason))
            elif cls is CloseAt:
                delay = max(0.0, action.at - self.clock())
                self._timers[conn.id] = asyncio.get_running_loop().call_later(
                    delay, self._close_later, conn, action.code, action.reason)

    def route(self, origin: Origin[T], route: Route) -> Coroutine[Any, Any, T]:
        """Carry out `route` for `origin` (a connection, a REST caller); its reply."""
        return run_route(origin, route, self.faults, self.clock, self)

    # -- Port: what the core's orders (routing.py) ask of this driver ------------------

    def charge(self, app_id: str) -> Awaitable[bool]:
        return self.ledgers.charge_message(app_id, self.clock())

    def admit(self, app_id: str) -> Awaitable[bool]:
        return self.ledgers.admit_connection(app_id, self.clock())

    def release(self, app_id: str) -> Awaitable[None]:
        return self.ledgers.release_connection(app_id, self.clock())

    def forget(self, conn: Connection) -> Awaitable[None]:
        return self.backend.disconnect(conn)

    def hold(self, seconds: float) -> Awaitable[None]:
        self.service.stats.holds.observe(seconds)
        return hold(seconds)

    def call(self, origin: object, route: Route) -> Awaitable[Any]:
        return call_backend(self.backend, origin, route)

    def _close_later(self, conn: Connection, code: int, reason: str) -> None:
        self._timers.pop(conn.id, None)
        self.close_connection(conn, code, reason)

    def close_connection(self, conn: Connection, code: int, reason: str,
                         going_away_ms: int | None = None) -> bool:
        """Close from outside the frame loop (kick, deploy, expiry); False if closing."""
        actions = conn.close(code, reason, self.clock(), retry_after_ms=going_away_ms)
        if not actions:
            return False
        self._send_close(conn, actions)
        return True

    def _send_close(self, conn: Connection, actions: list[Action]) -> None:
        """Perform a close the core decided: its hint frame, then the close handshake."""
        ws: ServerConnection = conn.transport
        for action in actions:
            if action.__class__ is Send:
                if ws.protocol.state is OPEN:
                    ws.protocol.send_text(action.payload)
                    ws.send_data()
                    conn.counters.frames_out[action.kind] += 1
            else:
                self._background(close_ws(ws, action.code, action.reason))

    def _outbound_full(self, conn: Connection) -> None:
        """The transport holds more than the bound for `conn`: the core decides."""
        for action in conn.outbound_full(self.clock()):
            self._background(close_ws(conn.transport, action.code, action.reason))

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # -- LocalNode: what backends call -------------------------------------------------

    def deliver(self, deliveries: list[Deliver]) -> None:
        faults = self.faults
        if faults.has_delivery_faults or faults.has_buffer_faults:
            self._deliver_with_faults(deliveries)
            return
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
                self._count(d, n)

    def _deliver_with_faults(self, deliveries: list[Deliver]) -> None:
        """The slow path: per-recipient loss/duplication and outbound-buffer bounds.

        Which faults act, and which recipients they hit, is decided once per message
        (`delivery_plan`): a recipient nobody hit costs a dictionary lookup.
        """
        faults = self.faults
        now = self.clock()
        for d in deliveries:
            if not d.targets:
                continue
            n = 0
            app_id = d.targets[0].app_id
            limit = faults.buffer_limit(app_id, now) if faults.has_buffer_faults else None
            counted = d.kind in ("message", "direct")
            acting = faults.delivery_faults(app_id, d.channel, now) if counted else []
            plan = faults.delivery_plan(acting, len(d.targets)) if acting else None
            for i, conn in enumerate(d.targets):
                ws = conn.transport
                if ws.protocol.state is not OPEN:
                    continue
                if limit is not None and ws.transport.get_write_buffer_size() > limit:
                    self._outbound_full(conn)
                    continue
                copies = 1
                if plan:
                    hit = plan.get(i)
                    if hit is not None:
                        copies = hit[0]
                        for fault in hit[1]:
                            fault.hits += 1
                try:
                    for _ in range(copies):
                        ws.protocol.send_text(d.payload)
                        ws.send_data()
                except Exception as exc:  # a socket failing mid-write: skip it
                    log.debug("skipped delivery: %s", exc)
                    continue
                n += copies
            if n:
                self._count(d, n)

    @staticmethod
    def _count(d: Deliver, n: int) -> None:
        counters = d.targets[0].counters
        counters.frames_out[d.kind] += n
        if d.kind == "message" or d.kind == "direct":
            counters.delivered += n

    def close_peer(self, app_id: str, peer_id: str, code: int, reason: str) -> int:
        conns = self.service.hub.peer_connections(app_id, peer_id)
        return sum(self.close_connection(c, code, reason) for c in conns)

    def going_away(self, fraction: float, retry_after_ms: int) -> int:
        """Simulated deploy: `going_away` then 1001 for a seeded fraction of connections."""
        conns = sorted(self.service.connections.values(), key=lambda c: c.id)
        chosen = self.service.pick_fraction(conns, fraction)
        return sum(self.close_connection(c, CloseCode.GOING_AWAY, "going away", retry_after_ms)
                   for c in chosen)

    # -- one-shot connection faults ----------------------------------------------------

    async def _strike_loop(self) -> None:
        while True:
            wait = self.faults.next_strike_in(self.clock())
            self._faults_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._faults_changed.wait(), wait)
            for strike in self.faults.due_strikes(self.clock()):
                try:
                    self.strike(strike)
                except Exception:
                    log.exception("fault %s failed", strike.fault_id)

    def strike(self, strike: ConnectionStrike) -> int:
        """Drop, deploy or close a seeded fraction of the targeted connections (the
        core decides which and how: `Service.strike`), or stall the loop (pause)."""
        if strike.action == "pause":
            log.info("fault %s: the event loop stalls for %g s", strike.fault_id,
                     strike.pause_s)
            time.sleep(strike.pause_s)  # on purpose: nothing runs meanwhile
            return 0
        candidates, hits = self.service.strike(strike, self.faults, self.clock())
        for conn, actions in hits:
            if actions[-1].code == CloseCode.ABNORMAL_CLOSURE:
                conn.transport.transport.abort()  # a drop: no close frame
            else:
                self._send_close(conn, actions)
        log.info("fault %s: %s %d of %d connections", strike.fault_id, strike.action,
                 len(hits), candidates)
        return len(hits)


async def close_ws(ws: ServerConnection, code: int, reason: str) -> None:
    """Close with `code`, cutting the socket if the peer has not taken the close frame
    within CLOSE_TIMEOUT_S: websockets' `close()` first waits for its write buffer to
    drain, without a deadline, so a peer that stopped reading would hold it forever.
    """
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await ws.close(code, reason)
    except TimeoutError:
        ws.transport.abort()


def _only_ws_path(connection: ServerConnection, request: Any) -> Any:
    """Reject any path but /v1 at the HTTP upgrade (404)."""
    if urlsplit(request.path).path != WS_PATH:
        return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
    return None
