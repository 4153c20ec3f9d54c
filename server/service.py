"""The service-wide sans-I/O state: apps, ledgers, the local hub, counters, events.

`authenticate` + `admit` turn an upgrade's query into a welcomed Connection (or a
close), and `disconnected` does the bookkeeping when a socket is gone. Time is always
passed in.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .actions import Action, Close, CloseAt, Send
from .auth import EXPIRY_LEAD_S, AuthFailure, Credential, authenticate
from .codes import CloseCode
from .config import Config
from .connection import Connection, ConnectionSettings
from .events import EventSink
from .hub import Hub
from .jsonenc import dumps
from .patterns import match_channel
from .routing import RestPublisher
from .stats import UNAUTHENTICATED, Stats

if TYPE_CHECKING:
    from .faults import ConnectionStrike, FaultEngine


@dataclass(frozen=True, slots=True)
class Pending:
    """An authenticated upgrade waiting for its connection slot."""

    conn_id: int
    credential: Credential


class Service:
    def __init__(self, config: Config, now: float, *, events: EventSink | None = None,
                 instance_id: str | None = None, cross_instance_send: bool = True) -> None:
        self.config = config
        self.hub = Hub()
        self.stats = Stats()
        self.events = events
        self.instance_id = instance_id
        self.cross_instance_send = cross_instance_send
        limits = config.limits
        self.connection_settings = ConnectionSettings(
            rate_per_second=limits.rate_per_second, burst=limits.burst,
            max_subscriptions=limits.max_subscriptions,
            close_on_unauthorized=config.server.close_on_unauthorized,
            cross_instance_send=cross_instance_send)
        # Instances sharing a Redis must not mint the same peerIds: the instance id
        # is part of the seed.
        seed = config.server.seed
        self.rng = random.Random(seed if instance_id is None else f"{seed}:{instance_id}")
        self.connections: dict[int, Connection] = {}
        self._next_id = 0

    def new_peer_id(self) -> str:
        """A fresh UUID4 peerId drawn from the seeded RNG (reproducible runs)."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def authenticate(self, params: dict[str, list[str]], now: float
                     ) -> Pending | list[Action]:
        """First half of an upgrade: who is it, and may its app connect at all?

        Returns a Pending admission, or the close actions for a rejected socket. The
        driver then runs `routing.run_connect` (faults, the ledger's slot, `admit`).
        """
        self._next_id += 1
        conn_id = self._next_id
        cred = authenticate(self.config, params, now, self.new_peer_id)
        if isinstance(cred, AuthFailure):
            return self._reject(conn_id, cred.app_id, cred.peer_id, cred.close_code,
                                cred.reason, now)
        if cred.app.suspended:
            return self._reject(conn_id, cred.app.id, cred.peer_id, CloseCode.ACCOUNT_SUSPENDED,
                                "account suspended", now)
        return Pending(conn_id, cred)

    def admit(self, pending: Pending, admitted: bool, now: float,
              refused: str | None = None) -> tuple[Connection | None, list[Action]]:
        """Second half: welcome the connection, or close it.

        `admitted` is the ledger's answer (False: close 4010); `refused` is a backend
        failure at connect time (close 1011 with that reason).
        """
        cred = pending.credential
        app = cred.app
        if refused is not None:
            return None, self._reject(pending.conn_id, app.id, cred.peer_id,
                                      CloseCode.INTERNAL_ERROR, refused, now)
        if not admitted:
            return None, self._reject(pending.conn_id, app.id, cred.peer_id,
                                      CloseCode.OVER_CONCURRENT_LIMIT, "over concurrent limit",
                                      now)
        conn = Connection(self.connection_settings, self.stats.app(app.id), self.events,
                          pending.conn_id, cred, now)
        self.connections[conn.id] = conn
        conn.counters.connected()
        self.stats.connected()
        if self.events is not None:
            self.events.emit(now, "connect", conn=conn.id, peer=cred.peer_id, app=app.id,
                             key=cred.key.id, keyType=cred.key_type)
        welcome: dict[str, Any] = {
            "type": "welcome", "peerId": cred.peer_id,
            "expiresAt": None if cred.expires_at is None else int(cred.expires_at),
            "serverTime": int(now * 1000),
            "maxMessageSize": self.config.limits.max_frame_bytes,
        }
        metadata = dict(cred.metadata) if cred.metadata else {}
        if self.instance_id is not None:
            metadata.setdefault("instanceId", self.instance_id)
        if metadata:
            welcome["metadata"] = metadata
        actions: list[Action] = [Send(dumps(welcome), "welcome")]  # token metadata
        if cred.expires_at is not None:
            actions.append(CloseAt(cred.expires_at - EXPIRY_LEAD_S, CloseCode.TOKEN_EXPIRED,
                                   "token expired"))
        return conn, actions

    def _reject(self, conn_id: int, app_id: str | None, peer_id: str | None, code: int,
                reason: str, now: float) -> list[Action]:
        self.stats.app(app_id or UNAUTHENTICATED).closes[str(code)] += 1
        if self.events is not None:
            self.events.emit(now, "reject", conn=conn_id, peer=peer_id, app=app_id,
                             code=code, reason=reason)
        return [Close(code, reason)]

    def disconnected(self, conn: Connection, now: float, code: int | None = None) -> bool:
        """Account for a connection whose socket is gone; False if already done.

        The adapter releases the ledger slot and the backend forgets subscriptions.
        """
        if self.connections.pop(conn.id, None) is None:
            return False
        conn.counters.connections_now -= 1
        self.stats.disconnected()
        if self.events is not None:
            self.events.emit(now, "disconnect", conn=conn.id, peer=conn.peer_id,
                             app=conn.app_id, code=code if code is not None else conn.close_code,
                             durationS=round(now - conn.opened_at, 6))
        return True

    def rest_publisher(self, app_id: str) -> RestPublisher:
        """The origin of a REST publish for `app_id` (counted with the app's sockets)."""
        return RestPublisher(app_id, self.stats.app(app_id))

    def strike_targets(self, strike: ConnectionStrike, faults: FaultEngine
                       ) -> tuple[list[Connection], list[Connection]]:
        """The connections a one-shot fault may hit (its apps, its channels' subscribers,
        in connection order), and the seeded choice of them it hits."""
        conns = [c for c in sorted(self.connections.values(), key=lambda c: c.id)
                 if (strike.apps is None or c.app_id in strike.apps)
                 and (strike.channels is None
                      or any(match_channel(strike.channels, s) for s in c.subscriptions))]
        return conns, faults.pick(strike, conns)

    def strike(self, strike: ConnectionStrike, faults: FaultEngine, now: float
               ) -> tuple[int, list[tuple[Connection, list[Action]]]]:
        """What a one-shot fault does: how many connections it could hit, and the close
        actions of each it hits (a drop's is a Close 1006: the driver cuts the socket
        without sending it; a deploy's starts with its `going_away` hint). A pause hits
        none: its driver stalls for `strike.pause_s`."""
        if strike.action == "pause":  # the instance stalls; no connection is hit
            return 0, []
        conns, chosen = self.strike_targets(strike, faults)
        reason = f"fault {strike.fault_id}"
        out = []
        for conn in chosen:
            if strike.action == "drop":
                actions = conn.close(CloseCode.ABNORMAL_CLOSURE, f"dropped ({reason})", now)
            elif strike.action == "going_away":
                actions = conn.close(CloseCode.GOING_AWAY, f"going away ({reason})", now,
                                     retry_after_ms=strike.retry_after_ms)
            else:
                actions = conn.close(strike.code, reason, now)
            if actions:
                out.append((conn, actions))
        return len(conns), out

    def pick_fraction(self, conns: list[Connection], fraction: float) -> list[Connection]:
        """A seeded random `fraction` of `conns` (all when fraction >= 1)."""
        if fraction >= 1:
            return list(conns)
        k = round(len(conns) * fraction)
        return self.rng.sample(conns, k) if k else []
