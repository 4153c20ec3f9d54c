"""The virtual-time driver of a client behaviour: it performs the behaviour's intents
(`loadtests.intents`) against an `Instance`, through the network model.

The behaviour is the very generator a Locust user drives (`loadtests.behaviours`);
this class is the other adapter. What a real client would log (`RealtimeClient`'s
rows: requests with their outcome and latency, closes, give-ups) goes to the same
event log with the same fields, at virtual times. Deliveries are logged in bulk by
the engine, not here.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import orjson

from loadtests.clientstate import ACK_CHANGES_STATE, ClientState
from loadtests.intents import (
    MIN_WAIT_S,
    Connect,
    Disconnect,
    Fire,
    FreshToken,
    GiveUp,
    Idle,
    Renew,
    Request,
    Result,
    SendRaw,
    Sleep,
)
from server.codes import CloseCode
from server.jsonenc import loads

from .instance import COUNTED, ceil_tick

if TYPE_CHECKING:
    from server.connection import Connection

    from .engine import Engine
    from .instance import Instance
    from .loadgen import ProcessCore

ABNORMAL = CloseCode.ABNORMAL_CLOSURE
# Frames a waiting user resumes on (in a Locust process, only at the end of the loop's
# iteration); the others its socket's reader handles where it reads them.
REPLIES = frozenset(("welcome", "ack", "error"))
SYN_RETRIES = 6  # Linux's tcp_syn_retries: 1 + 2 + 4 + ... s before the connect fails


class _Pending:
    """A request in flight; `started` and `deadline` in virtual seconds (exact: unix
    seconds near 2e9 carry only a quarter of a microsecond)."""

    __slots__ = ("deadline", "done", "fired", "nbytes", "request", "rid", "started")

    def __init__(self, request: Any, started: float, deadline: float, nbytes: int,
                 fired: bool, rid: str | None = None) -> None:
        self.request = request
        self.rid = rid
        self.started = started
        self.deadline = deadline
        self.nbytes = nbytes
        self.fired = fired
        self.done = False


class VirtualClient:
    """One user: its behaviour's generator, its current connection, its requests.

    A million of these are alive at once, so what only some users need is made when
    first needed (the requests in flight, bad input's queue) and dropped when empty,
    and the client is itself its behaviour's `client()`.
    """

    __slots__ = ("behaviour", "conn", "connecting", "core", "credential", "disconnecting",
                 "drain", "engine", "gen", "idle", "instance", "pending", "policy", "rids",
                 "stopped", "syn_tries", "timeout_s", "uncorrelated", "user", "user_class",
                 "view")

    def __init__(self, engine: Engine, user: str, user_class: str, instance: Instance,
                 credential: tuple[str, str], core: ProcessCore | None = None) -> None:
        """`credential`: ("key", value) or ("token", value). The behaviour comes next
        (`drive`): it is made with this client as its `client()`."""
        self.engine = engine
        self.core = core  # its Locust process, when the run models the load generator
        self.user = user
        self.user_class = user_class
        self.instance = instance
        self.credential = credential
        self.view = ClientState(credential[1] if credential[0] == "token" else None)
        self.conn: Connection | None = None
        self.rids = 0
        self.pending: dict[str, _Pending] | None = None  # by requestId, while any
        self.uncorrelated: list[_Pending] | None = None  # bad input, answered in order
        self.connecting: _Pending | None = None
        self.syn_tries = 0
        self.idle: Idle | None = None  # the Idle the behaviour waits in, while open
        self.stopped = False
        self.disconnecting = False
        self.drain: tuple[float, Any] | None = None  # a Disconnect waiting for replies

    def __call__(self) -> ClientState:
        """The behaviour's `client()`: the current connection's view."""
        return self.view

    def drive(self, behaviour: Any) -> None:
        """Take `behaviour` (made with this client as its `client()`) and start it."""
        self.behaviour = behaviour
        params = getattr(behaviour, "params", None)
        self.timeout_s = getattr(params, "timeout_s", self.engine.timeout_s)
        self.policy = behaviour.policy.name
        self.gen = behaviour.on_start()
        self.resume(None)

    # -- driving the behaviour ---------------------------------------------------------

    def resume(self, value: Any) -> None:
        """Send `value` to the behaviour; perform intents until one has to wait."""
        engine = self.engine
        while not self.stopped:
            try:
                intent = self.gen.send(value)
            except StopIteration:
                # `on_start`, or one task, is over: the next task. (The driver's loop,
                # not a generator looping over them: one frame less a user.)
                self.gen = self.behaviour.task()
                value = None
                continue
            cls = intent.__class__
            if cls is Request:
                self._request(intent, fired=False)
                return
            if cls is Sleep:
                if intent.seconds >= MIN_WAIT_S:
                    engine.after(intent.seconds, self._wake if self.core is None
                                 else self._timer_expired)
                    return
                value = None
            elif cls is Idle:
                if self.view.is_open:
                    self.idle = intent
                    return
                engine.at_unix(max(intent.first_at, engine.now()), self._wake)
                return
            elif cls is Connect:
                self._connect(intent.attempt)
                return
            elif cls is Fire:
                value = self._request(intent, fired=True)
            elif cls is SendRaw:
                self._send_raw(intent)
                return
            elif cls is Disconnect:
                if self._disconnect(intent.drain_s):
                    return
                value = None
            elif cls is Renew:
                token = intent.token or (self.view.token if intent.keep_credential else None)
                self.view = ClientState(token)
                self.conn = None
                value = None
            elif cls is FreshToken:
                value = engine.fresh_token(self.user)
            elif cls is GiveUp:
                self.note("give_up", intent.reason)
                self.stopped = True
                return
            else:
                raise TypeError(f"unknown intent {intent!r}")

    def _wake(self) -> None:
        self.resume(None)

    def _timer_expired(self) -> None:
        """A sleep is over; in a Locust process the user runs when its loop runs it."""
        self.core.timer(self._wake)

    def note(self, op: str, outcome: str, t: float | None = None, **fields: str) -> None:
        self.engine.log.row(self.engine.now() if t is None else t, self.user,
                            self.user_class, op, outcome, channel=fields.get("channel", ""),
                            peer=fields.get("peer", ""), policy=self.policy)

    def _report(self, p: _Pending, outcome: str, peer: str = "") -> Result:
        """Log how a request ended (now), as `RealtimeClient._finish` does; its Result."""
        r = p.request
        op = "connect" if r.__class__ is Connect else r.op
        engine = self.engine
        now = engine.env.now
        latency = (now - p.started) * 1000.0
        engine.log.row(engine.epoch + now, self.user, self.user_class, op, outcome, latency,
                       getattr(r, "attempt", 1), p.nbytes, getattr(r, "channel", ""),
                       getattr(r, "msg_id", ""), getattr(r, "peer", "") or peer,
                       getattr(r, "intended_t", None), self.policy)
        return Result(op, outcome, latency, engine.epoch + p.started)

    # -- connecting ------------------------------------------------------------------------

    def _connect(self, attempt: int) -> None:
        engine = self.engine
        now = engine.env.now
        self.view.connecting()
        p = _Pending(Connect(attempt), now, now + self.timeout_s, 0, False)
        self.connecting = p
        self.syn_tries = 0
        engine.timeouts.add(p, self._connect_timed_out, self.timeout_s)
        self._syn()

    def _syn(self) -> None:
        kind, value = self.credential
        if kind == "key" or self.view.token is None:
            params, jwt = {"key": [value if kind == "key" else ""]}, False
        else:
            params, jwt = {"token": [self.view.token]}, True
        instance = self.instance
        core = self.core
        self.engine.to_server(lambda: instance.upgrade(self, params, jwt), core,
                              core.connect_s if core is not None else None)

    def syn_dropped(self, instance: Instance) -> None:
        """The listen backlog was full: the kernel retries the SYN, doubling its wait."""
        p = self.connecting
        if p is None or p.done:
            return
        wait = instance.model.syn_retry_s * (2 ** self.syn_tries)
        self.syn_tries += 1
        if self.syn_tries > SYN_RETRIES:
            return  # the client's own timeout ends it
        self.engine.after(wait, self._syn)

    def abandoned_connect(self) -> bool:
        """The client timed out before its upgrade was served (the server's work is
        still done up to here: a reset costs the accept)."""
        p = self.connecting
        return p is None or p.done

    def welcomed(self, conn: Connection, instance: Instance) -> None:
        """The core welcomed the upgrade (its `welcome` Send follows, in `perform`)."""
        self.conn = conn

    def rejected(self, code: int, t: float) -> None:
        """The upgrade ended in a close before `welcome`."""
        self.engine.to_client(t, lambda: self._connect_done(f"close {code}", code),
                              self.core)

    def _connect_done(self, outcome: str, code: int | None = None) -> None:
        p = self.connecting
        if p is None or p.done:
            return
        p.done = True
        self.connecting = None
        peer = ""
        if code is not None:
            self.view.closed(code)
        elif outcome == "ok":
            self.view.opened()
            peer = self.conn.peer_id if self.conn is not None else ""
        result = self._report(p, outcome, peer)
        self.resume(result)

    def _connect_timed_out(self, p: _Pending) -> None:
        if p is self.connecting and not p.done:
            conn, self.conn = self.conn, None
            if conn is not None:  # welcomed, the welcome still on its way: we hang up
                instance = self.instance
                self.engine.to_server(lambda: instance.submit(
                    lambda: instance.disconnected(conn, ABNORMAL)), self.core)
            self._connect_done("timeout")

    # -- requests ----------------------------------------------------------------------------

    def _request(self, r: Request | Fire, *, fired: bool) -> bool:
        engine = self.engine
        now = engine.env.now
        intended = getattr(r, "intended_t", None)
        started = intended - engine.epoch if intended is not None else now
        conn = self.conn
        if conn is None or not self.view.is_open:
            if fired:
                return False
            code = self.view.close_code or ABNORMAL
            p = _Pending(r, started, now, 0, False)
            engine.soon(lambda: self.resume(self._report(p, f"close {code}")))
            return False
        self.rids += 1
        rid = f"{self.user}-{self.rids}"
        frame = dict(r.frame)
        frame["requestId"] = rid
        text = orjson.dumps(frame).decode()
        p = _Pending(r, started, now + self.timeout_s, len(text), fired, rid)
        if self.pending is None:
            self.pending = {}
        self.pending[rid] = p
        if not fired:
            engine.timeouts.add(p, self._timed_out, self.timeout_s)
        op = "frame" if r.op not in ("subscribe", "unsubscribe", "publish", "send") else r.op
        instance = self.instance
        engine.to_server(lambda: instance.submit(lambda: instance.frame(conn, text, op)),
                         self.core)
        return True

    def _send_raw(self, r: SendRaw) -> None:
        engine = self.engine
        now = engine.env.now
        conn = self.conn
        if conn is None or not self.view.is_open:
            code = self.view.close_code or ABNORMAL
            p = _Pending(r, now, now, 0, False)
            engine.soon(lambda: self.resume(self._report(p, f"close {code}")))
            return
        data = r.data
        p = _Pending(r, now, now + self.timeout_s, len(data), False)
        if self.uncorrelated is None:
            self.uncorrelated = []
        self.uncorrelated.append(p)
        engine.timeouts.add(p, self._timed_out, self.timeout_s)
        instance = self.instance
        if len(data) > instance.service.config.limits.max_frame_bytes:
            # websockets closes 1009 on a frame past max_size, before the core sees it.
            engine.to_server(lambda: instance.submit(lambda: self._too_big(instance, conn)),
                             self.core)
            return
        engine.to_server(lambda: instance.submit(lambda: instance.frame(conn, data, "frame")),
                         self.core)

    def _too_big(self, instance: Instance, conn: Connection) -> None:
        instance.spend("frame")
        if conn.close(CloseCode.MESSAGE_TOO_BIG, "message too big", instance.clock()):
            self.closed_by_server(CloseCode.MESSAGE_TOO_BIG, instance.cursor)

    def _timed_out(self, p: _Pending) -> None:
        if p.done:
            return
        p.done = True
        if p.rid is None:
            if self.uncorrelated:
                with contextlib.suppress(ValueError):
                    self.uncorrelated.remove(p)
        else:
            self._pop_pending(p.rid)
        self.resume(self._report(p, "timeout"))

    def _pop_pending(self, rid: str) -> _Pending | None:
        """The request in flight with this id, forgotten (None: none such)."""
        pending = self.pending
        if pending is None:
            return None
        p = pending.pop(rid, None)
        if not pending:
            self.pending = None
        return p

    def _fired_in_flight(self) -> bool:
        """Whether a fired (pipelined) request still waits for its reply."""
        return self.pending is not None and any(
            q.fired and not q.done for q in self.pending.values())

    def _reply(self, p: _Pending, outcome: str) -> None:
        p.done = True
        now = self.engine.env.now
        result = self._report(p, outcome)
        if p.fired:
            if self.drain is not None and not self._fired_in_flight():
                self._drain_over()
            return
        r = p.request
        if outcome == "ok" and r.op in ACK_CHANGES_STATE:
            self.view.acked(r.op, r.frame.get("channel", ""), self.engine.epoch + now)
        self.resume(result)

    # -- frames from the server ------------------------------------------------------------

    def frame_from_server(self, payload: bytes, kind: str, t: float) -> None:
        """The core sent `payload` to this client at `t`: it arrives a network draw later."""
        core = self.core
        cost = None if core is None or kind not in COUNTED else core.delivery_s
        self.engine.to_client(t, lambda: self._arrived(payload, kind), core, cost, self,
                              kind in REPLIES)

    def _arrived(self, payload: bytes, kind: str) -> None:
        if kind == "welcome":
            self._connect_done("ok")
            return
        if kind == "ack" or kind == "error":
            frame = loads(payload)
            rid = frame.get("requestId")
            p = self._pop_pending(rid) if rid is not None else None
            if p is None and kind == "error" and rid is None and self.uncorrelated:
                p = self.uncorrelated.pop(0)
            if p is not None and not p.done:
                self._reply(p, "ok" if kind == "ack" else str(frame.get("code")))
            return
        self.view.on_frame(loads(payload))

    def presence(self, frame: dict[str, Any]) -> None:
        self.view.on_frame(frame)

    def closed_by_server(self, code: int, t: float, *, clean: bool = True) -> None:
        """The core closed this connection at `t`: the client learns it a draw later;
        the server forgets the socket once the handshake is over (or at once, cut)."""
        conn = self.conn
        instance = self.instance
        engine = self.engine
        if conn is not None:
            if clean:
                engine.to_client(t, lambda: self._closed(code, conn), self.core)
            else:
                engine.at(t, lambda: self._closed(code, conn))
                engine.at(t, lambda: instance.submit(lambda: instance.disconnected(conn, None)))

    def _closed(self, code: int, conn: Connection) -> None:
        if self.conn is not conn or self.disconnecting:
            return
        if self.view.closed(code):
            self.note("close", f"close {code}")
        instance = self.instance
        if code != ABNORMAL:  # echo the close: the server's socket is done
            self.engine.to_server(lambda: instance.submit(
                lambda: instance.disconnected(conn, None)), self.core)
        outcome = f"close {self.view.close_code}"
        resume = self._fail_waiting(outcome)
        self.conn = None
        if resume is not None:
            r = resume.request
            self.resume(Result(r.op, outcome, (self.engine.env.now - resume.started) * 1e3,
                               self.engine.epoch + resume.started))
        elif self.drain is not None:  # a Disconnect was waiting for replies: it is over
            self.drain = None
            self.resume(None)
        elif self.idle is not None:
            idle, self.idle = self.idle, None
            self.engine.at_unix(ceil_tick(idle.first_at, idle.tick_s, self.engine.now()),
                                self._wake)

    def _fail_waiting(self, outcome: str) -> _Pending | None:
        """Every request in flight ends as `outcome` (logged); the one the behaviour
        waits for, if any."""
        waiting = list(self.pending.values()) if self.pending is not None else []
        waiting += self.uncorrelated or ()
        self.pending = self.uncorrelated = None
        resume = None
        for p in waiting:
            if not p.done:
                p.done = True
                self._report(p, outcome)
                if not p.fired:
                    resume = p
        return resume

    # -- closing from our side -------------------------------------------------------------

    def _disconnect(self, drain_s: float) -> bool:
        """Close from our side, after waiting up to `drain_s` for fired requests'
        replies; True if the behaviour waits (for the replies or the handshake)."""
        conn = self.conn
        if conn is None or not self.view.is_open:
            self.conn = None
            return False
        if drain_s > 0 and self._fired_in_flight():
            self.drain = (self.engine.env.now + drain_s, conn)
            self.engine.after(drain_s, self._drain_over)
            return True
        self._close_ours(conn)
        return True

    def _drain_over(self) -> None:
        drain = self.drain
        if drain is None:
            return
        self.drain = None
        if self.conn is drain[1] and self.view.is_open:
            self._close_ours(drain[1])
        else:
            self.resume(None)

    def _close_ours(self, conn: Connection) -> None:
        self.view.closed(1000)
        self.disconnecting = True
        instance = self.instance
        engine = self.engine

        def server_side() -> None:
            instance.disconnected(conn, 1000)
            engine.to_client(instance.cursor, self._disconnected, self.core)

        engine.to_server(lambda: instance.submit(server_side), self.core)

    def _disconnected(self) -> None:
        """The close handshake is over (logged then, as `RealtimeClient.close` does)."""
        self.disconnecting = False
        self.note("disconnect", "client")
        self._fail_waiting("close 1000")
        self.conn = None
        self.resume(None)

    def stop(self) -> None:
        """The run is over: nothing more is performed for this user."""
        self.stopped = True

