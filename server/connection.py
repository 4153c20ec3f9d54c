"""One connection's protocol state machine: the sans-I/O heart of the server.

`receive(frame, now)` validates a client frame in the order of PROTOCOL.md section 3
and returns actions; operations that need the backend come back as a `Route`, which
the adapter hands to the backend before calling `complete` (or `fail`) for the reply.
Nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .actions import Action, Close, Direct, Message, Route, Send
from .codes import CloseCode
from .jsonenc import dumps, loads
from .patterns import channel_problem, is_reserved, peer_id_problem, subscription_key
from .tokenbucket import TokenBucket

if TYPE_CHECKING:
    from .auth import Credential
    from .events import EventSink
    from .stats import AppCounters

__all__ = ["Action", "Connection", "ConnectionSettings", "error_frame"]

MAX_REQUEST_ID_BYTES = 128
SLOW_CONSUMER = "slow consumer"  # the reason of a 1008 close
OVER_QUOTA_MESSAGE = "message quota used up for this period"


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """What every connection of a service reads from the configuration, built once."""

    rate_per_second: float
    burst: float
    max_subscriptions: int
    close_on_unauthorized: bool = False
    cross_instance_send: bool = True  # may `send` reach peers on other instances?


def error_frame(code: str, message: str, request_id: str | None) -> bytes:
    """An `error` frame; the safe encoder, as `requestId` and `message` echo client text."""
    frame = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        frame["requestId"] = request_id
    return dumps(frame)


def _request_id_ok(rid: object) -> bool:
    """1..128 bytes; a lone surrogate (valid JSON) counts 3, as TextEncoder's U+FFFD."""
    return isinstance(rid, str) and 0 < len(rid) <= MAX_REQUEST_ID_BYTES and (
        rid.isascii() or len(rid.encode("utf-8", "surrogatepass")) <= MAX_REQUEST_ID_BYTES)


class Connection:
    __slots__ = ("__weakref__", "app_id", "bucket", "close_code", "counters", "credential",
                 "events", "has_presence", "id", "opened_at", "peer_id", "peer_metadata",
                 "settings", "subscriptions", "transport")

    def __init__(self, settings: ConnectionSettings, counters: AppCounters,
                 events: EventSink | None, conn_id: int, credential: Credential,
                 now: float) -> None:
        self.settings = settings
        self.counters = counters  # the app's counters, shared by its connections
        self.events = events
        self.id = conn_id
        self.credential = credential
        self.app_id = credential.app.id
        self.peer_id = credential.peer_id
        self.peer_metadata = credential.peer_metadata
        self.has_presence = "presence" in credential.actions
        self.subscriptions: dict[str, bool] = {}  # name -> includeSenderMetadata
        self.bucket = TokenBucket(settings.rate_per_second, settings.burst, now)
        self.opened_at = now
        self.close_code: int | None = None  # set once the core decided to close
        self.transport: Any = None  # the adapter's handle; opaque to the core

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.app_id}/{self.peer_id}>"

    @property
    def is_closing(self) -> bool:
        return self.close_code is not None

    # -- inbound -------------------------------------------------------------------

    def receive(self, frame: str | bytes, now: float) -> list[Action]:
        """Handle one inbound WebSocket message (text as str, binary as bytes)."""
        if self.close_code is not None:
            return []
        if not self.bucket.take(now):
            self.counters.frames_in["rate_limited"] += 1
            return self.close(CloseCode.OVER_MESSAGE_RATE, "over message rate", now)
        if frame.__class__ is not str:
            self.counters.frames_in["binary"] += 1
            return self._error("malformed_message", "binary frames are not accepted",
                               None, None, now)
        try:
            msg = loads(frame)
        except orjson.JSONDecodeError:
            self.counters.frames_in["invalid"] += 1
            return self._error("malformed_message", "frame is not valid JSON", None, None,
                               now)
        if msg.__class__ is not dict:
            self.counters.frames_in["invalid"] += 1
            return self._error("malformed_message", "frame must be a JSON object", None,
                               None, now)
        kind = msg.get("type")
        if kind.__class__ is not str:
            self.counters.frames_in["invalid"] += 1
            return self._error("malformed_message", "frame needs a string `type`", None,
                               None, now)
        handler = _HANDLERS.get(kind)
        rid = msg.get("requestId")
        if handler is None:
            self.counters.frames_in["unknown"] += 1
            echo = rid if _request_id_ok(rid) else None
            return self._error("unknown_type", f"unknown type: {kind[:64]}", echo, None, now)
        self.counters.frames_in[kind] += 1
        if rid is not None and not _request_id_ok(rid):
            return self._error("malformed_message",
                               f"requestId must be a string of 1..{MAX_REQUEST_ID_BYTES} bytes",
                               None, kind, now)
        return handler(self, msg, rid, now)

    def _subscribe(self, msg: dict[str, Any], rid: str | None, now: float) -> list[Action]:
        name = msg.get("channel")
        problem = self._channel_problem(name, "subscribe", rid, now)
        if problem is not None:
            return problem
        limit = self.settings.max_subscriptions
        if name not in self.subscriptions and len(self.subscriptions) >= limit:
            return self._error("channel_limit_exceeded",
                               f"subscription limit reached ({limit})",
                               rid, "subscribe", now)
        # Interned: the connections subscribed to one channel hold one copy of its name,
        # not one each from their frames (mortal: gone with the last subscription).
        return [Route("subscribe", rid, sys.intern(name),
                      msg.get("includeSenderMetadata") is True)]

    def _unsubscribe(self, msg: dict[str, Any], rid: str | None, now: float) -> list[Action]:
        name = msg.get("channel")
        problem = channel_problem(name)
        if problem is not None:
            return self._error("invalid_channel", problem, rid, "unsubscribe", now)
        if is_reserved(name):
            return self._error("channel_reserved", f"reserved channel: {name}", rid,
                               "unsubscribe", now)
        if name not in self.subscriptions:
            return self._ack(rid, "unsubscribe", now)
        return [Route("unsubscribe", rid, name)]

    def _publish(self, msg: dict[str, Any], rid: str | None, now: float) -> list[Action]:
        name = msg.get("channel")
        problem = channel_problem(name)
        if problem is not None:
            return self._error("invalid_channel", problem, rid, "publish", now)
        if "data" not in msg:
            return self._error("missing_data", "publish needs `data`", rid, "publish", now)
        problem = self._channel_problem(name, "publish", rid, now, validated=True)
        if problem is not None:
            return problem
        return [Route("publish", rid, Message(self.app_id, name, self.peer_id, msg["data"],
                                               self.peer_metadata, self), charge=True,
                      received_at=now)]

    def _send(self, msg: dict[str, Any], rid: str | None, now: float) -> list[Action]:
        to = msg.get("to")
        problem = peer_id_problem(to)
        if problem is not None:
            return self._error("invalid_peer_id", problem, rid, "send", now)
        if "data" not in msg:
            return self._error("missing_data", "send needs `data`", rid, "send", now)
        if "send" not in self.credential.actions:
            return self._error("action_not_permitted", "action not permitted: send", rid,
                               "send", now)
        return [Route("send", rid, Direct(self.app_id, to, self.peer_id, msg["data"],
                                          self.peer_metadata), charge=True)]

    def _ping(self, msg: dict[str, Any], rid: str | None, now: float) -> list[Action]:
        return [Send(b'{"type":"pong"}', "pong")]

    def _channel_problem(self, name: Any, op: str, rid: str | None, now: float, *,
                         validated: bool = False) -> list[Action] | None:
        """Checks shared by subscribe and publish, in protocol order after the fields."""
        if not validated:
            problem = channel_problem(name)
            if problem is not None:
                return self._error("invalid_channel", problem, rid, op, now)
        if is_reserved(name):
            return self._error("channel_reserved", f"reserved channel: {name}", rid, op, now)
        if op not in self.credential.actions:
            return self._error("action_not_permitted", f"action not permitted: {op}", rid,
                               op, now)
        if not self.credential.allows_channel(name):
            if self.settings.close_on_unauthorized:
                return self.close(CloseCode.CHANNEL_NOT_AUTHORIZED, f"not authorized: {name}"[:120],
                                  now)
            return self._error("channel_not_authorized", f"not authorized: {name}", rid, op,
                               now)
        return None

    # -- routed replies --------------------------------------------------------------

    def complete(self, route: Route, result: Any, now: float) -> list[Action]:
        """The reply once the backend carried out `route`.

        `result` is the presence snapshot for subscribe, and the number of local or
        remote recipients for publish and send.
        """
        if self.close_code is not None:
            return []
        op = route.op
        if op == "publish":
            self.counters.published += 1
            self.counters.publish_time.observe(now - route.received_at)
            return self._ack(route.request_id, op, now)
        if op == "send":
            if not result:
                to = route.body.to
                where = "" if self.settings.cross_instance_send else " on this instance"
                return self._error("peer_not_found", f"peer {to} is not online{where}",
                                   route.request_id, op, now)
            self.counters.sent += 1
            return self._ack(route.request_id, op, now)
        if op == "subscribe":
            self.subscriptions[route.body] = route.include_sender_metadata
            out = self._ack(route.request_id, op, now)
            if self.has_presence:
                frame = {"type": "presence", "channel": subscription_key(route.body)[0],
                         "joined": result or [], "left": []}
                out.append(Send(dumps(frame), "presence"))  # metadata is from tokens
            return out
        self.subscriptions.pop(route.body, None)  # unsubscribe
        return self._ack(route.request_id, op, now)

    def fail(self, route: Route, code: str, message: str, now: float) -> list[Action]:
        """The error reply when the backend could not carry out `route`."""
        if self.close_code is not None:
            return []
        return self._error(code, message, route.request_id, route.op, now)

    def over_quota(self, route: Route, now: float) -> list[Action]:
        """The reply when the app's ledger refused to charge a publish or send."""
        return self.fail(route, "over_message_quota", OVER_QUOTA_MESSAGE, now)

    def outbound_full(self, now: float) -> list[Action]:
        """The driver holds more unsent bytes for this peer than its bound: close 1008.

        The bound is `limits.max_outbound_bytes`, or lower while a `slow_consumer`
        fault is active; the driver measures, the rule and its code live here.
        """
        return self.close(CloseCode.POLICY_VIOLATION, SLOW_CONSUMER, now)

    # -- outbound helpers --------------------------------------------------------------

    def _ack(self, rid: str | None, op: str, now: float) -> list[Action]:
        events = self.events
        if events is not None and events.wants_requests:
            events.emit(now, "ok", conn=self.id, peer=self.peer_id, app=self.app_id, op=op,
                        requestId=rid)
        if rid is None:
            return []
        return [Send(b'{"type":"ack","requestId":' + dumps(rid) + b"}", "ack")]

    def _error(self, code: str, message: str, rid: str | None, op: str | None,
               now: float) -> list[Action]:
        self.counters.errors[code] += 1
        events = self.events
        if events is not None:
            events.emit(now, "error", conn=self.id, peer=self.peer_id, app=self.app_id,
                        op=op, code=code, requestId=rid)
        return [Send(error_frame(code, message, rid), "error")]

    def close(self, code: int, reason: str, now: float,
              retry_after_ms: int | None = None) -> list[Action]:
        """Decide to close this connection (once); counted and logged here.

        With `retry_after_ms` (a deploy, a shutdown) a `going_away` frame carrying the
        hint goes first; it is logged so a client's reconnect can be graded against it.
        """
        if self.close_code is not None:
            return []
        self.close_code = code
        self.counters.closes[str(code)] += 1
        events = self.events
        if events is not None:
            extra = {} if retry_after_ms is None else {"retryAfterMs": retry_after_ms}
            events.emit(now, "close", conn=self.id, peer=self.peer_id, app=self.app_id,
                        code=code, reason=reason, **extra)
        if retry_after_ms is None:
            return [Close(code, reason)]
        hint = b'{"type":"going_away","retryAfterMs":' + dumps(retry_after_ms) + b"}"
        return [Send(hint, "going_away"), Close(code, reason)]


_HANDLERS = {
    "subscribe": Connection._subscribe,
    "unsubscribe": Connection._unsubscribe,
    "publish": Connection._publish,
    "send": Connection._send,
    "ping": Connection._ping,
}
