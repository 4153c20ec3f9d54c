"""The routing seam: how publish, send and presence cross connections (and instances).

The core never knows which backend runs. A backend routes; each instance's `Hub`
knows its own connections, and the `LocalNode` (the asyncio adapter) writes frames
and closes sockets. The in-memory backend is one instance; the Redis backend spans
several.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .actions import Deliver, Direct, Message
    from .connection import Connection


class BackendError(Exception):
    """Routing failed; the client gets `backend_error` and the connection stays open."""

    code = "backend_error"


class LocalNode(Protocol):
    """What a backend may ask of the instance it runs in."""

    def deliver(self, deliveries: list[Deliver]) -> None: ...

    def close_peer(self, app_id: str, peer_id: str, code: int, reason: str) -> int: ...


class Backend(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def connect(self, conn: Connection) -> None:
        """Make a new connection reachable by `send` and kicks."""
        ...

    async def subscribe(self, conn: Connection, name: str, with_meta: bool
                        ) -> list[dict[str, Any]]:
        """Register a subscription; return the presence snapshot for the subscriber."""
        ...

    async def unsubscribe(self, conn: Connection, name: str) -> None: ...

    async def publish(self, msg: Message) -> int:
        """Route a message to every subscriber; the number of recipients."""
        ...

    async def send(self, msg: Direct) -> int:
        """Route a direct message to every connection of a peer; 0 when it has none."""
        ...

    async def disconnect(self, conn: Connection) -> None: ...

    async def channel_peers(self, app_id: str, channel: str) -> list[dict[str, Any]]: ...

    async def kick(self, app_id: str, peer_id: str, code: int, reason: str) -> int:
        """Close every connection of a peer, on every instance; how many closed."""
        ...

    def state(self) -> dict[str, Any]:
        """What `/sim/v1/stats` shows of the backend (kind, health)."""
        ...
