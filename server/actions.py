"""What the sans-I/O core asks its adapter to do.

Small frozen records: the core returns them, the adapter performs them (send bytes,
close a socket, hand a route to the backend). Nothing here touches I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connection import Connection


@dataclass(frozen=True, slots=True)
class Send:
    """Send one frame to the connection the core is handling."""

    payload: bytes
    kind: str  # the frame's `type`, for counters


@dataclass(frozen=True, slots=True)
class Deliver:
    """Send one frame to many connections (fan-out, presence deltas)."""

    targets: tuple[Connection, ...]
    payload: bytes
    kind: str
    channel: str | None = None  # for delivery faults targeted by channel


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection the core is handling with this code."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class CloseAt:
    """Close the connection at `at` (scenario clock) unless it closed before."""

    at: float
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Message:
    """A publish on its way through the backend to subscribers."""

    app_id: str
    channel: str
    sender: str
    data: Any
    sender_metadata: dict[str, Any] | None
    origin: Connection | None  # excluded from delivery; None for REST publishes


@dataclass(frozen=True, slots=True)
class Direct:
    """A `send` on its way through the backend to every connection of a peer."""

    app_id: str
    to: str
    sender: str
    data: Any
    sender_metadata: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Route:
    """An operation the backend must carry out before the core can answer.

    `op` is subscribe, unsubscribe, publish or send; `body` is what the backend needs
    (a channel name, a Message or a Direct). `routing.run_route` orders what
    follows: charge the quota when `charge` is set, faults, the backend call, then
    `complete(route, result, now)` or `fail(...)` on the origin for the reply.
    """

    op: str
    request_id: str | None
    body: Any
    include_sender_metadata: bool = False
    charge: bool = False  # counts against the app's message quota before routing
    received_at: float = 0.0  # its frame's receipt: a publish's server time starts here

    @property
    def channel(self) -> str | None:
        """The channel the operation is about (None for `send`)."""
        body = self.body
        if isinstance(body, str):
            return body
        return getattr(body, "channel", None)


# What `Connection.receive` and friends return, and what a driver performs.
Action = Send | Deliver | Close | CloseAt | Route
