"""The service-wide sans-I/O state: apps, ledgers, the local hub, counters, events.

`open` turns an upgrade's query into a welcomed Connection (or a close), and
`disconnected` does the bookkeeping when a socket is gone. Time is always passed in.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import orjson

from . import codes
from .actions import Close, CloseAt, Send
from .auth import EXPIRY_LEAD_S, AuthFailure, authenticate
from .billing import Ledger
from .config import Config
from .connection import Connection
from .events import EventSink
from .hub import Hub
from .stats import UNAUTHENTICATED, Stats


class Service:
    def __init__(self, config: Config, now: float, *, events: EventSink | None = None,
                 instance_id: str | None = None, cross_instance_send: bool = True) -> None:
        self.config = config
        self.ledgers = {app.id: Ledger.open(app.plan, now) for app in config.apps}
        self.hub = Hub()
        self.stats = Stats()
        self.events = events
        self.instance_id = instance_id
        self.cross_instance_send = cross_instance_send
        self.rng = random.Random(config.server.seed)
        self.connections: dict[int, Connection] = {}
        self._next_id = 0

    def new_peer_id(self) -> str:
        """A fresh UUID4 peerId drawn from the seeded RNG (reproducible runs)."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def open(self, params: dict[str, list[str]], now: float
             ) -> tuple[Connection | None, list[Any]]:
        """Authenticate and admit an upgraded socket; welcome it or close it."""
        self._next_id += 1
        conn_id = self._next_id
        cred = authenticate(self.config, params, now, self.new_peer_id)
        if isinstance(cred, AuthFailure):
            return None, self._reject(conn_id, None, None, cred.close_code, cred.reason, now)
        app = cred.app
        if app.suspended:
            return None, self._reject(conn_id, app.id, cred.peer_id, codes.ACCOUNT_SUSPENDED,
                                      "account suspended", now)
        if not self.ledgers[app.id].admit_connection(now):
            return None, self._reject(conn_id, app.id, cred.peer_id,
                                      codes.OVER_CONCURRENT_LIMIT, "over concurrent limit",
                                      now)
        conn = Connection(self, conn_id, cred, now)
        self.connections[conn_id] = conn
        conn.counters.connected()
        self.stats.connected()
        if self.events is not None:
            self.events.emit(now, "connect", conn=conn_id, peer=cred.peer_id, app=app.id,
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
        actions: list[Any] = [Send(orjson.dumps(welcome), "welcome")]
        if cred.expires_at is not None:
            actions.append(CloseAt(cred.expires_at - EXPIRY_LEAD_S, codes.TOKEN_EXPIRED,
                                   "token expired"))
        return conn, actions

    def _reject(self, conn_id: int, app_id: str | None, peer_id: str | None, code: int,
                reason: str, now: float) -> list[Any]:
        self.stats.app(app_id or UNAUTHENTICATED).closes[str(code)] += 1
        if self.events is not None:
            self.events.emit(now, "reject", conn=conn_id, peer=peer_id, app=app_id,
                             code=code, reason=reason)
        return [Close(code, reason)]

    def disconnected(self, conn: Connection, now: float, code: int | None = None) -> bool:
        """Account for a connection whose socket is gone; False if already done.

        The backend forgets its subscriptions (and announces `left`) separately.
        """
        if self.connections.pop(conn.id, None) is None:
            return False
        conn.ledger.release_connection(now)
        conn.counters.connections_now -= 1
        self.stats.disconnected()
        if self.events is not None:
            self.events.emit(now, "disconnect", conn=conn.id, peer=conn.peer_id,
                             app=conn.app_id, code=code if code is not None else conn.close_code,
                             durationS=round(now - conn.opened_at, 6))
        return True

    def ledger(self, app_id: str) -> Ledger:
        return self.ledgers[app_id]

    def pick_fraction(self, conns: list[Connection], fraction: float) -> list[Connection]:
        """A seeded random `fraction` of `conns` (all when fraction >= 1)."""
        if fraction >= 1:
            return list(conns)
        k = round(len(conns) * fraction)
        return self.rng.sample(conns, k) if k else []
