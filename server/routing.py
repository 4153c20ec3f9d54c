"""The order of every routed operation and of a connect, once, for every driver.

A `Route` (a socket's subscribe, unsubscribe, publish or send, or a REST publish) is
carried out in one order: charge the app's quota, then the fault engine's decision
(hold, fail), then the backend, then the reply (hold after, complete or fail). The
order lives in `run_route`; `run_connect` does the same for an upgrade (connect
faults, hold, refuse, the ledger's connection slot, then `Service.admit`) and
`run_disconnect` for the way back.

Each order is an `async def` over a `Port`: the few things only a driver can do
(charge a ledger, hold, call the backend, ...), each returning an awaitable. Nothing
here imports asyncio: a coroutine is a generator the driver resumes, so the asyncio
node awaits the order directly (its port returns real coroutines), the test driver
finishes it in one `send` (its port's awaitables are ready at once), and a
virtual-time engine can resume it when its clock reaches a hold. (A generator of step
objects did the same job but cost 5% of a publish round trip.) The time is read from
the driver's `clock` only where it matters: at the fault decision and at the reply.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .actions import Action, Message, Route
from .auth import MAX_PEER_METADATA_BYTES
from .backend import BackendError
from .config import Key
from .connection import OVER_QUOTA_MESSAGE, Connection
from .jsonenc import dumps
from .patterns import channel_problem, is_reserved, match_any, peer_id_problem

if TYPE_CHECKING:
    from .backend import Backend
    from .faults import FaultEngine
    from .service import Pending, Service
    from .stats import AppCounters

log = logging.getLogger("rtmsim.server")

R = TypeVar("R", covariant=True)


# -- the port: what the core asks its driver to do ---------------------------------------

class Port(Protocol):
    """A driver's side of the orders: each call returns an awaitable of its result."""

    def charge(self, app_id: str) -> Awaitable[bool]:
        """Charge one message to the app's ledger: True if charged."""

    def admit(self, app_id: str) -> Awaitable[bool]:
        """A connection slot from the app's ledger: True if granted."""

    def release(self, app_id: str) -> Awaitable[None]:
        """Give a closed connection's slot back."""

    def forget(self, conn: Connection) -> Awaitable[None]:
        """The backend forgets a closed connection (subscriptions, reachability)."""

    def hold(self, seconds: float) -> Awaitable[None]:
        """Wait `seconds` (an injected latency)."""

    def call(self, origin: object, route: Route) -> Awaitable[Any]:
        """The backend call that carries out `route` (see `call_backend`)."""


Clock = Callable[[], float]


# -- origins: who gets the reply -----------------------------------------------------------

class Origin(Protocol[R]):
    """Who asked for a route, and how it is answered: a `Connection`, a `RestPublisher`."""

    app_id: str

    def complete(self, route: Route, result: Any, now: float) -> R: ...

    def fail(self, route: Route, code: str, message: str, now: float) -> R: ...

    def over_quota(self, route: Route, now: float) -> R: ...


# The HTTP status of each code a routed REST publish can end with.
HTTP_STATUS = {"over_message_quota": 429, "backend_error": 503, "internal_error": 500}


@dataclass(frozen=True, slots=True)
class RestReply:
    """What the REST handler answers: its status and JSON body."""

    status: int
    body: dict[str, Any]


def refusal(status: int, code: str, message: str) -> RestReply:
    """A REST request refused before it is routed (not counted: nothing was sent)."""
    return RestReply(status, {"error": code, "message": message})


class RestPublisher:
    """A REST publish's origin: no socket, the same reply and counting rules."""

    __slots__ = ("app_id", "counters")

    def __init__(self, app_id: str, counters: AppCounters) -> None:
        self.app_id = app_id
        self.counters = counters

    @staticmethod
    def refuse_channel(channel: str, key: Key) -> RestReply | None:
        """The URL's channel checked as a socket's publish checks it (400, 403)."""
        problem = channel_problem(channel)
        if problem:
            return refusal(400, "invalid_channel", problem)
        if is_reserved(channel):
            return refusal(403, "channel_reserved", f"reserved channel: {channel}")
        if not match_any(key.channel_patterns, channel):
            return refusal(403, "channel_not_authorized", f"not authorized: {channel}")
        return None

    def publish(self, channel: str, body: dict[str, Any]) -> Route | RestReply:
        """The route of a publish on this app's behalf (no origin to exclude), or the
        refusal of a body without `data`, with a bad `from` or `peerMetadata`."""
        if "data" not in body:
            return refusal(400, "missing_data", "publish needs `data`")
        sender = body.get("from", "system")
        problem = peer_id_problem(sender)
        if problem:
            return refusal(400, "invalid_peer_id", f"from: {problem}")
        meta = body.get("peerMetadata")
        if meta is not None and not isinstance(meta, dict):
            return refusal(400, "invalid_request", "peerMetadata: must be an object")
        if meta is not None and len(dumps(meta)) > MAX_PEER_METADATA_BYTES:
            return refusal(400, "invalid_request",
                           f"peerMetadata: larger than {MAX_PEER_METADATA_BYTES} bytes")
        return Route("publish", None, Message(self.app_id, channel, sender, body["data"],
                                              meta, None), charge=True)

    def complete(self, route: Route, result: Any, now: float) -> RestReply:
        self.counters.published += 1
        return RestReply(200, {"channel": route.channel, "delivered": result})

    def fail(self, route: Route, code: str, message: str, now: float) -> RestReply:
        self.counters.errors[code] += 1
        return RestReply(HTTP_STATUS.get(code, 500), {"error": code, "message": message})

    def over_quota(self, route: Route, now: float) -> RestReply:
        return self.fail(route, "over_message_quota", OVER_QUOTA_MESSAGE, now)


# -- the orders ------------------------------------------------------------------------------

def call_backend(backend: Backend, origin: object, route: Route) -> Awaitable[Any]:
    """The backend call that carries out `route` for `origin` (for the driver to await)."""
    op = route.op
    if op == "publish":
        return backend.publish(route.body)
    if op == "send":
        return backend.send(route.body)
    if op == "subscribe":
        return backend.subscribe(origin, route.body,  # type: ignore[arg-type]
                                 route.include_sender_metadata)
    return backend.unsubscribe(origin, route.body)  # type: ignore[arg-type]


async def run_route(origin: Origin[R], route: Route, faults: FaultEngine, clock: Clock,
                    port: Port) -> R:
    """Quota, then faults, then the backend, then the reply: the tail of the
    validation order. Any exception, raised here or by the port, ends as a reply:
    `backend_error` for a `BackendError`, `internal_error` for anything else.
    """
    after = 0.0
    try:
        if route.charge and not await port.charge(origin.app_id):
            return origin.over_quota(route, clock())
        if faults.has_route_faults:
            fail, before, after = faults.on_route(route.op, origin.app_id, route.channel,
                                                  clock())
            if before:
                await port.hold(before)
            if fail is not None:
                return origin.fail(route, fail.code, fail.message, clock())
        result = await port.call(origin, route)
    except BackendError as exc:
        return origin.fail(route, "backend_error", str(exc) or "backend unavailable",
                           clock())
    except Exception:
        log.exception("unexpected error routing %s", route.op)
        return internal_error(origin, route, clock())
    if after:
        await port.hold(after)
    return origin.complete(route, result, clock())


def internal_error(origin: Origin[R], route: Route, now: float) -> R:
    """The reply when carrying out `route` raised unexpectedly."""
    return origin.fail(route, "internal_error", "internal error", now)


def frame_failed(conn: Connection, now: float) -> list[Action]:
    """The reply when handling a frame raised unexpectedly (the driver logs it)."""
    return internal_error(conn, Route("frame", None, None), now)


async def run_connect(service: Service, pending: Pending, faults: FaultEngine, clock: Clock,
                      port: Port) -> tuple[Connection | None, list[Action]]:
    """Connect faults (hold, refuse 1011), then the ledger's slot (4010), then admit.

    An exception from the port (the ledger unreachable) is not answered here: it ends
    the upgrade in the driver, as a failed handshake.
    """
    app_id = pending.credential.app.id
    refused = None
    if faults.has_route_faults:
        fail, before, _ = faults.on_route("connect", app_id, None, clock())
        if before:
            await port.hold(before)
        refused = fail.message if fail else None
    admitted = refused is None and await port.admit(app_id)
    return service.admit(pending, admitted, clock(), refused)


async def run_disconnect(service: Service, conn: Connection, now: float, port: Port,
                         code: int | None = None) -> bool:
    """Count a gone connection once, then free its ledger slot, then the backend
    forgets it; False when it was already counted.

    A failure to free or forget is logged, not answered: the socket is gone.
    """
    if not service.disconnected(conn, now, code):
        return False
    try:
        await port.release(conn.app_id)
        await port.forget(conn)
    except Exception:
        log.exception("failed to forget a connection")
    return True
