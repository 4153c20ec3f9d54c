"""A gevent-friendly protocol client, usable inside Locust and outside it.

Built on `wsconn.Connection`, websockets' Sans-I/O protocol on a socket (the asyncio
client does not run under Locust's gevent; plain sockets and threads do, as greenlets
once gevent has patched them, and as real threads outside Locust). One reader per
connection dispatches server frames: replies complete the pending request with the
same `requestId`, uncorrelated errors complete the oldest request that could not
carry one, deliveries are timed publish-to-delivery and handed to the user.

Every `publish`/`send` wraps its payload in the accounting envelope
(`loadtests.envelope`) so receivers can time, de-duplicate and order deliveries and the
analysis can count losses. What the client knows of its connection (open, the close
code, the `going_away` hint, subscriptions, peers) is a `ClientState`, the same one the
virtual engine keeps: the behaviours read it.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import orjson
from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException

from server import jsonenc

from .clientstate import ACK_CHANGES_STATE, ClientState
from .deadlines import DEADLINES
from .envelope import envelope, sequence_of
from .intents import DEFAULT_TIMEOUT_S, Result
from .reporting import Reporter
from .wsconn import Closed, Connection

# Message ids a connection remembers for its live duplicate count: a copy arrives
# within moments of the first (a retried publish), and a set of every id ever received
# grew a soak's load generator by 120 MB a minute. The analysis counts duplicates
# exactly from the event log; this count is the live view.
SEEN_IDS = 4096


class _Pending:
    __slots__ = ("event", "outcome", "report")

    def __init__(self, report: Callable[[str], None] | None = None) -> None:
        self.event = threading.Event()
        self.outcome = "timeout"
        self.report = report  # set for fire-and-forget requests: called with the outcome


class RealtimeClient:
    """One connection to the service; every request is reported through `reporter`."""

    def __init__(self, base_url: str, *, key: str | None = None, token: str | None = None,
                 reporter: Reporter | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 on_frame: Callable[[dict[str, Any]], None] | None = None,
                 name: str = "", sequence: Iterator[int] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.state = ClientState(token)
        self.reporter = reporter or Reporter()
        self.timeout = timeout
        self.on_frame = on_frame
        self.name = name or f"c{id(self):x}"
        self.ws: Connection | None = None
        self.welcome: dict[str, Any] | None = None
        self._ids = itertools.count(1)
        # Message ids must stay unique across reconnects: a user hands its own counter
        # to every client it creates.
        self._seq = sequence if sequence is not None else itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._uncorrelated: collections.deque[_Pending] = collections.deque()
        self._lock = threading.Lock()
        self._last_seq: dict[tuple[str, str], int] = {}
        self._seen: set[str] = set()
        self._seen_order: collections.deque[str] = collections.deque()
        self.received = 0
        self.duplicates = 0
        self.reordered = 0

    # -- what the client knows (its ClientState) -------------------------------------------

    @property
    def token(self) -> str | None:
        return self.state.token

    @property
    def is_open(self) -> bool:
        return self.state.is_open

    @property
    def close_code(self) -> int | None:
        return self.state.close_code

    @property
    def going_away_ms(self) -> int | None:
        return self.state.going_away_ms

    @property
    def subscriptions(self) -> dict[str, float]:
        return self.state.subscriptions

    @property
    def peers(self) -> dict[str, set[str]]:
        return self.state.peers

    # -- connection ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The upgrade URL: the origin, `/v1`, and the credential."""
        params = {"token": self.token} if self.token is not None else {"key": self.key or ""}
        base = self.base_url if self.base_url.endswith("/v1") else f"{self.base_url}/v1"
        return f"{base}?{urlencode(params)}"

    @property
    def peer_id(self) -> str | None:
        return self.welcome["peerId"] if self.welcome else None

    def connect(self, *, attempt: int = 1) -> Result:
        """Open the socket and wait for `welcome` (a rejection is its close code)."""
        started = time.time()
        self.state.connecting()
        try:
            ws = Connection.open(self.url, timeout=self.timeout)
        except InvalidStatus as exc:
            return self._finish("connect", f"http {exc.response.status_code}", started,
                                attempt)
        except (OSError, TimeoutError, WebSocketException) as exc:
            return self._finish("connect", _transport_outcome(exc), started, attempt)
        try:
            welcome = orjson.loads(ws.first_message(self.timeout))
        except Closed as exc:
            ws.abort()
            self.state.closed(exc.code)
            return self._finish("connect", f"close {exc.code}", started, attempt)
        except (TimeoutError, orjson.JSONDecodeError) as exc:
            ws.abort()
            return self._finish("connect", _transport_outcome(exc), started, attempt)
        self.ws = ws
        self.welcome = welcome
        self.state.opened()
        ws.start(self._on_message, self._closed)
        return self._finish("connect", "ok", started, attempt, peer=self.peer_id or "")

    def drain(self, timeout: float = 2.0) -> None:
        """Wait (bounded) for the replies of fired requests still in flight, so a
        client that stops does not leave the server's answers unaccounted."""
        deadline = time.monotonic() + timeout
        while self.is_open and time.monotonic() < deadline and self._in_flight():
            time.sleep(0.01)

    def _in_flight(self) -> bool:
        """Whether a request whose reply is reported when it comes is still out."""
        waiting = list(self._pending.values()) + list(self._uncorrelated)
        return any(p.report is not None for p in waiting)

    def _hand_over(self, pending: _Pending, report: Callable[[str], None]) -> None:
        """A wait interrupted while its request is in flight (Locust stops users by
        killing their greenlets, and may catch one mid-request). The request stays
        pending as a fired one does, so its reply is still reported when it comes
        (`drain` waits for it), or its close; the server counted it, so must we."""
        if pending.event.is_set():
            report(pending.outcome)  # the reply came before the interruption did
        else:
            pending.report = report

    def close(self) -> None:
        """Close from our side (not reported as a server close)."""
        ws = self.ws
        if ws is not None:
            ours = self.state.closed(1000)
            ws.close(timeout=2.0)  # deliveries already on the wire are logged first
            if ours:
                # Logged once the handshake is over: the server delivers until then, so
                # the subscriptions end here, not when we decided to leave.
                self.reporter.note("disconnect", "client")
        self.ws = None

    def _finish(self, op: str, outcome: str, started: float, attempt: int, *,
                channel: str = "", msg_id: str = "", peer: str = "",
                intended_t: float | None = None, nbytes: int = 0) -> Result:
        now = time.time()
        latency = (now - started) * 1000.0
        self.reporter.request(op, outcome, latency, nbytes=nbytes, attempt=attempt,
                              channel=channel, msg_id=msg_id, peer=peer,
                              intended_t=intended_t, t=now)
        return Result(op, outcome, latency, started)

    # -- requests -------------------------------------------------------------------------

    def request(self, op: str, frame: dict[str, Any], *, attempt: int = 1, channel: str = "",
                msg_id: str = "", peer: str = "", intended_t: float | None = None) -> Result:
        """Send a frame with a fresh requestId; wait for its ack or error.

        Under the open model `intended_t` is when the request should have gone out;
        latency is measured from it, so a stalled server is not hidden.
        """
        started = intended_t if intended_t is not None else time.time()
        ws = self.ws
        if ws is None or self.state.close_code is not None:
            return self._finish(op, f"close {self.close_code or 1006}", started, attempt,
                                channel=channel, msg_id=msg_id, peer=peer,
                                intended_t=intended_t)
        rid = f"{self.name}-{next(self._ids)}"
        pending = _Pending()
        self._pending[rid] = pending
        payload = orjson.dumps({**frame, "requestId": rid})
        try:
            ws.send(payload)
        except Closed as exc:
            self._pending.pop(rid, None)
            self._closed(exc.code)
            return self._finish(op, f"close {self.close_code}", started, attempt,
                                channel=channel, msg_id=msg_id, peer=peer,
                                intended_t=intended_t, nbytes=len(payload))
        try:
            DEADLINES.wait(pending.event, self.timeout)
        except BaseException:  # Locust stopping this user mid-request (GreenletExit)
            self._hand_over(pending, lambda outcome: self._finish(
                op, outcome, started, attempt, channel=channel, msg_id=msg_id, peer=peer,
                intended_t=intended_t, nbytes=len(payload)))
            raise
        self._pending.pop(rid, None)
        result = self._finish(op, pending.outcome, started, attempt, channel=channel,
                              msg_id=msg_id, peer=peer, intended_t=intended_t,
                              nbytes=len(payload))
        if op in ACK_CHANGES_STATE and pending.outcome == "ok":
            self.state.acked(op, channel, started + result.latency_ms / 1000.0)
        return result

    def fire(self, op: str, frame: dict[str, Any], *, channel: str = "",
             msg_id: str = "") -> bool:
        """Send a request without waiting (pipelining); its reply is reported when it
        comes, or as the close code if the connection closes first. False if closed.
        """
        started = time.time()
        ws = self.ws
        if ws is None or self.state.close_code is not None:
            return False
        rid = f"{self.name}-{next(self._ids)}"
        payload = orjson.dumps({**frame, "requestId": rid})

        def report(outcome: str) -> None:
            self._finish(op, outcome, started, 1, channel=channel, msg_id=msg_id,
                         nbytes=len(payload))

        self._pending[rid] = _Pending(report)
        try:
            ws.send(payload)
        except Closed as exc:
            self._closed(exc.code)  # reports this request as the close
            return False
        return True

    def subscribe(self, channel: str, *, include_sender_metadata: bool = False,
                  attempt: int = 1) -> Result:
        frame: dict[str, Any] = {"type": "subscribe", "channel": channel}
        if include_sender_metadata:
            frame["includeSenderMetadata"] = True
        return self.request("subscribe", frame, attempt=attempt, channel=channel)

    def unsubscribe(self, channel: str, *, attempt: int = 1) -> Result:
        return self.request("unsubscribe", {"type": "unsubscribe", "channel": channel},
                            attempt=attempt, channel=channel)

    def envelope(self, value: Any, channel: str, sent_at: float) -> tuple[str, dict[str, Any]]:
        """A payload stamped for delivery accounting, and its message id."""
        return envelope(self.reporter.user or self.name, next(self._seq), value, channel,
                        sent_at)

    def publish(self, channel: str, value: Any = None, *, attempt: int = 1,
                intended_t: float | None = None, msg_id: str | None = None,
                data: Any = None) -> Result:
        """Publish; `data` overrides the envelope (retries resend the same message)."""
        if data is None:
            msg_id, data = self.envelope(value, channel, intended_t or time.time())
        return self.request("publish", {"type": "publish", "channel": channel, "data": data},
                            attempt=attempt, channel=channel, msg_id=msg_id or "",
                            intended_t=intended_t)

    def send(self, to: str, value: Any = None, *, attempt: int = 1,
             intended_t: float | None = None, msg_id: str | None = None,
             data: Any = None) -> Result:
        if data is None:
            msg_id, data = self.envelope(value, "", intended_t or time.time())
        return self.request("send", {"type": "send", "to": to, "data": data},
                            attempt=attempt, msg_id=msg_id or "", peer=to,
                            intended_t=intended_t)

    def send_raw(self, op: str, data: str | bytes, *, attempt: int = 1) -> Result:
        """Send any frame (bad input); wait for the uncorrelated error it provokes."""
        started = time.time()
        ws = self.ws
        if ws is None or self.state.close_code is not None:
            return self._finish(op, f"close {self.close_code or 1006}", started, attempt)
        pending = _Pending()
        with self._lock:
            self._uncorrelated.append(pending)
        try:
            ws.send(data, text=isinstance(data, str))
        except Closed as exc:
            self._closed(exc.code)
        nbytes = len(data) if data else 0
        try:
            DEADLINES.wait(pending.event, self.timeout)
        except BaseException:  # as in `request`
            self._hand_over(pending, lambda outcome: self._finish(op, outcome, started,
                                                                  attempt, nbytes=nbytes))
            raise
        with self._lock, contextlib.suppress(ValueError):
            self._uncorrelated.remove(pending)
        return self._finish(op, pending.outcome, started, attempt, nbytes=nbytes)

    # -- inbound ---------------------------------------------------------------------------

    def _on_message(self, raw: bytes) -> None:
        try:
            frame = jsonenc.loads(raw)  # JSON.parse's reading: a `\ud800` in data is fine
        except orjson.JSONDecodeError:
            return
        if isinstance(frame, dict):
            self._dispatch(frame, raw)

    def _dispatch(self, frame: dict[str, Any], raw: str | bytes) -> None:
        kind = frame.get("type")
        if kind == "ack" or kind == "error":
            rid = frame.get("requestId")
            pending = self._pending.get(rid) if rid is not None else None
            if pending is None and kind == "error" and rid is None:
                with self._lock:
                    pending = self._uncorrelated.popleft() if self._uncorrelated else None
            if pending is not None:
                pending.outcome = "ok" if kind == "ack" else str(frame.get("code"))
                pending.event.set()
                if pending.report is not None:
                    self._pending.pop(rid, None)
                    pending.report(pending.outcome)
                return
        elif kind == "message" or kind == "direct":
            self._delivered(kind, frame, len(raw))
        else:
            self.state.on_frame(frame)  # presence, going_away
        if self.on_frame is not None:
            self.on_frame(frame)

    def _delivered(self, kind: str, frame: dict[str, Any], nbytes: int) -> None:
        now = time.time()
        data = frame.get("data")
        envelope = data if isinstance(data, dict) and "id" in data else None
        self.received += 1
        if envelope is None:
            self.reporter.delivery(kind, None, nbytes=nbytes, channel=frame.get("channel", ""),
                                   msg_id="", sender=frame.get("from", ""))
            return
        msg_id = envelope["id"]
        publisher = envelope.get("pub", "")
        channel = frame.get("channel", "")
        if msg_id in self._seen:
            self.duplicates += 1
        else:
            self._remember(msg_id)
            seq = sequence_of(msg_id)
            stream = (publisher, channel)
            if seq is not None:
                if seq < self._last_seq.get(stream, 0):
                    self.reordered += 1
                else:
                    self._last_seq[stream] = seq
        ts = envelope.get("ts")
        latency = (now - ts) * 1000.0 if isinstance(ts, int | float) else None
        self.reporter.delivery(kind, latency, nbytes=nbytes, channel=channel, msg_id=msg_id,
                               sender=publisher)

    def _remember(self, msg_id: str) -> None:
        """Add to the ids seen, forgetting the oldest past `SEEN_IDS`."""
        self._seen.add(msg_id)
        self._seen_order.append(msg_id)
        if len(self._seen_order) > SEEN_IDS:
            self._seen.discard(self._seen_order.popleft())

    def _closed(self, code: int) -> None:
        if self.state.closed(code):
            self.reporter.note("close", f"close {code}")
        outcome = f"close {self.close_code}"
        with self._lock:
            waiting = list(self._pending.values()) + list(self._uncorrelated)
            # Requests reported by callback are reported here, once: drop them.
            fired = [rid for rid, p in self._pending.items() if p.report is not None]
            for rid in fired:
                del self._pending[rid]
            self._uncorrelated = collections.deque(p for p in self._uncorrelated
                                                   if p.report is None)
        for pending in waiting:
            pending.outcome = outcome
            pending.event.set()
            if pending.report is not None:
                pending.report(outcome)
        self.ws = None


def _transport_outcome(exc: BaseException) -> str:
    if isinstance(exc, InvalidURI):  # Locust's failure table then says what is wrong
        return "invalid_url"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "transport_error"


