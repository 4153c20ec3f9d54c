"""The in-memory backend: one instance, routing straight through its own hub."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backend import LocalNode
from .patterns import subscription_key

if TYPE_CHECKING:
    from .actions import Direct, Message
    from .connection import Connection
    from .hub import Hub


class MemoryBackend:
    def __init__(self, hub: Hub, node: LocalNode) -> None:
        self.hub = hub
        self.node = node

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def connect(self, conn: Connection) -> None:
        self.hub.add(conn)

    async def subscribe(self, conn: Connection, name: str, with_meta: bool
                        ) -> list[dict[str, Any]]:
        is_new = name not in conn.subscriptions
        change = self.hub.subscribe(conn, name, with_meta, is_new=is_new)
        if change is not None:
            self.node.deliver(self.hub.presence_deliveries(change))
        key, wild = subscription_key(name)
        return self.hub.presence_snapshot(conn.app_id, key, wild, conn.peer_id)

    async def unsubscribe(self, conn: Connection, name: str) -> None:
        change = self.hub.unsubscribe(conn, name)
        if change is not None:
            self.node.deliver(self.hub.presence_deliveries(change))

    async def publish(self, msg: Message) -> int:
        deliveries = self.hub.deliver_message(msg)
        if not deliveries:
            return 0
        self.node.deliver(deliveries)
        return sum(len(d.targets) for d in deliveries)

    async def send(self, msg: Direct) -> int:
        deliveries = self.hub.deliver_direct(msg)
        if not deliveries:
            return 0
        self.node.deliver(deliveries)
        return len(deliveries[0].targets)

    async def disconnect(self, conn: Connection) -> None:
        for change in self.hub.remove(conn):
            self.node.deliver(self.hub.presence_deliveries(change))

    async def channel_peers(self, app_id: str, channel: str) -> list[dict[str, Any]]:
        return self.hub.presence_snapshot(app_id, channel, False, None)

    async def kick(self, app_id: str, peer_id: str, code: int, reason: str) -> int:
        return self.node.close_peer(app_id, peer_id, code, reason)

    def state(self) -> dict[str, Any]:
        return {"kind": "memory"}
