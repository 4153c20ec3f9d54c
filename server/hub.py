"""The local routing index of one server instance: who is subscribed to what.

Pure bookkeeping, no I/O: it answers "which local connections receive this message",
"which connections does this peer have here" and keeps presence counts per
(channel, peer). Backends route between instances; each instance's hub delivers to
its own connections. Presence is kept per concrete channel, and per pattern for
wildcard subscriptions, so `room/*` (a wildcard) and `room/\\*` (the literal channel
`room/*`) have separate presence sets (choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .actions import Deliver, Direct, Message
from .jsonenc import dumps
from .patterns import match_channel, subscription_key

if TYPE_CHECKING:
    from .connection import Connection


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A peer's first connection joined, or its last one left, a channel here."""

    app_id: str
    key: str  # the concrete channel, or the pattern of a wildcard subscription
    peer_id: str
    metadata: dict[str, Any] | None
    joined: bool
    wildcard: bool = False


class AppIndex:
    __slots__ = ("exact", "peers", "presence", "wildcard")

    def __init__(self) -> None:
        self.exact: dict[str, dict[Connection, bool]] = {}  # channel -> {conn: with_meta}
        self.wildcard: dict[str, dict[Connection, bool]] = {}  # pattern -> {conn: ...}
        # peerId -> its connection here, or {connection: None} when it has several
        # (most peers have one: a dict each is 200 bytes a connection)
        self.peers: dict[str, Connection | dict[Connection, None]] = {}
        # (is_wildcard, channel or pattern) -> {peerId: connections}
        self.presence: dict[tuple[bool, str], dict[str, int]] = {}


class Hub:
    def __init__(self) -> None:
        self.apps: dict[str, AppIndex] = {}

    def _index(self, app_id: str) -> AppIndex:
        index = self.apps.get(app_id)
        if index is None:
            index = self.apps[app_id] = AppIndex()
        return index

    # -- connections -------------------------------------------------------------

    def add(self, conn: Connection) -> None:
        index = self._index(conn.app_id)
        held = index.peers.get(conn.peer_id)
        if held is None:
            index.peers[conn.peer_id] = conn
        elif type(held) is dict:
            held[conn] = None
        elif held is not conn:
            index.peers[conn.peer_id] = {held: None, conn: None}

    def remove(self, conn: Connection) -> list[PresenceChange]:
        """Forget a closed connection; the presence changes it causes."""
        index = self.apps.get(conn.app_id)
        if index is None:
            return []
        out = []
        for name in list(conn.subscriptions):
            change = self.unsubscribe(conn, name)
            if change is not None:
                out.append(change)
        held = index.peers.get(conn.peer_id)
        if held is conn:
            del index.peers[conn.peer_id]
        elif type(held) is dict:
            held.pop(conn, None)
            if not held:
                del index.peers[conn.peer_id]
        return out

    def peer_connections(self, app_id: str, peer_id: str) -> tuple[Connection, ...]:
        index = self.apps.get(app_id)
        if index is None:
            return ()
        return _held(index.peers.get(peer_id))

    def connections(self) -> list[Connection]:
        return [c for index in self.apps.values() for held in index.peers.values()
                for c in _held(held)]

    # -- subscriptions and presence ------------------------------------------------

    def subscribe(self, conn: Connection, name: str, with_meta: bool, *,
                  is_new: bool) -> PresenceChange | None:
        """Record a subscription; the presence change it causes, if any.

        A repeat subscribe (`is_new` false) only updates `includeSenderMetadata`.
        """
        index = self._index(conn.app_id)
        key, wild = subscription_key(name)
        table = index.wildcard if wild else index.exact
        table.setdefault(key, {})[conn] = with_meta
        if not is_new or not conn.has_presence:
            return None
        counts = index.presence.setdefault((wild, key), {})
        n = counts.get(conn.peer_id, 0)
        counts[conn.peer_id] = n + 1
        if n:
            return None
        return PresenceChange(conn.app_id, key, conn.peer_id, conn.peer_metadata, True, wild)

    def unsubscribe(self, conn: Connection, name: str) -> PresenceChange | None:
        """Drop a subscription; the presence change it causes, if any."""
        index = self.apps.get(conn.app_id)
        if index is None:
            return None
        key, wild = subscription_key(name)
        table = index.wildcard if wild else index.exact
        subs = table.get(key)
        if subs is None or subs.pop(conn, "absent") == "absent":
            return None
        if not subs:
            del table[key]
        if not conn.has_presence:
            return None
        counts = index.presence.get((wild, key))
        if not counts or conn.peer_id not in counts:
            return None
        n = counts[conn.peer_id] - 1
        if n:
            counts[conn.peer_id] = n
            return None
        del counts[conn.peer_id]
        if not counts:
            del index.presence[(wild, key)]
        return PresenceChange(conn.app_id, key, conn.peer_id, conn.peer_metadata, False, wild)

    def presence_deliveries(self, change: PresenceChange) -> list[Deliver]:
        """The `presence` delta for this instance's subscribers of the channel.

        Connections of the peer itself and connections without the presence action
        are not told.
        """
        index = self.apps.get(change.app_id)
        if index is None:
            return []
        table = index.wildcard if change.wildcard else index.exact
        targets = tuple(c for c in table.get(change.key, ())
                        if c.has_presence and c.peer_id != change.peer_id)
        if not targets:
            return []
        entry = presence_entry(change.peer_id, change.metadata)
        frame = {"type": "presence", "channel": change.key,
                 "joined": [entry] if change.joined else [],
                 "left": [] if change.joined else [entry]}
        return [Deliver(targets, dumps(frame), "presence")]  # metadata is from tokens

    def local_presence(self) -> list[PresenceChange]:
        """A `joined` change for every (app, channel, peer) present here (resync)."""
        out = []
        for app_id, index in self.apps.items():
            for (wild, key), counts in index.presence.items():
                for peer_id in counts:
                    conns = _held(index.peers.get(peer_id))
                    meta = conns[0].peer_metadata if conns else None
                    out.append(PresenceChange(app_id, key, peer_id, meta, True, wild))
        return out

    def presence_snapshot(self, app_id: str, key: str, wildcard: bool,
                          exclude_peer: str | None) -> list[dict[str, Any]]:
        """Peers present in a channel (or wildcard pattern), as `presence.joined` entries."""
        index = self.apps.get(app_id)
        if index is None:
            return []
        counts = index.presence.get((wildcard, key), {})
        out = []
        for peer_id in counts:
            if peer_id == exclude_peer:
                continue
            conns = _held(index.peers.get(peer_id))
            meta = conns[0].peer_metadata if conns else None
            out.append(presence_entry(peer_id, meta))
        return out

    # -- delivery --------------------------------------------------------------------

    def deliver_message(self, msg: Message) -> list[Deliver]:
        """The frames that carry one published message to local subscribers.

        One copy per connection even when several subscriptions match (choice);
        deliveries through a wildcard are filtered by the subscriber's own scope.
        """
        index = self.apps.get(msg.app_id)
        if index is None:
            return []
        channel = msg.channel
        exact = index.exact.get(channel)
        if index.wildcard:
            targets: dict[Connection, bool] = dict(exact) if exact else {}
            for pattern, subs in index.wildcard.items():
                if match_channel(pattern, channel):
                    for conn, with_meta in subs.items():
                        if conn.credential.allows_channel(channel):
                            targets[conn] = targets.get(conn, False) or with_meta
        elif exact:
            targets = exact
        else:
            return []
        origin = msg.origin
        frame = {"type": "message", "channel": channel, "from": msg.sender, "data": msg.data}
        if msg.sender_metadata is None:
            # A message from another instance (origin None) goes to every target.
            plain = tuple(targets) if origin is None else \
                tuple(c for c in targets if c is not origin)
            return [Deliver(plain, dumps(frame), "message", channel)] if plain else []
        plain_list, meta_list = [], []
        for conn, with_meta in targets.items():
            if conn is not origin:
                (meta_list if with_meta else plain_list).append(conn)
        out = []
        if plain_list:
            out.append(Deliver(tuple(plain_list), dumps(frame), "message", channel))
        if meta_list:
            frame["fromMetadata"] = msg.sender_metadata
            out.append(Deliver(tuple(meta_list), dumps(frame), "message", channel))
        return out

    def deliver_direct(self, msg: Direct) -> list[Deliver]:
        """The frame that carries a `send` to every local connection of the target peer."""
        targets = self.peer_connections(msg.app_id, msg.to)
        if not targets:
            return []
        frame: dict[str, Any] = {"type": "direct", "from": msg.sender, "data": msg.data}
        if msg.sender_metadata is not None:
            frame["fromMetadata"] = msg.sender_metadata
        return [Deliver(targets, dumps(frame), "direct")]


def _held(held: Connection | dict[Connection, None] | None) -> tuple[Connection, ...]:
    """A peer's connections from its `AppIndex.peers` entry, in the order they came."""
    if held is None:
        return ()
    return tuple(held) if type(held) is dict else (held,)


def presence_entry(peer_id: str, metadata: dict[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {"peerId": peer_id}
    return {"peerId": peer_id, "metadata": metadata}
