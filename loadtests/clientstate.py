"""What a client knows of its connection: the state a behaviour reads (`ClientView`).

Sans-I/O: the driver tells it what happened (a connect began, the welcome came, the
connection closed, a request was acked, a server frame arrived) and it keeps the rest.
The protocol client (`loadtests.client`) keeps one per connection on real sockets; the
virtual engine keeps one per virtual client and feeds it the same events, so what a
behaviour reads (is it open, the close code, the `going_away` hint, the subscriptions,
the peers present) follows one set of rules.
"""

from __future__ import annotations

import collections
from typing import Any

__all__ = ["ACK_CHANGES_STATE", "ClientState"]

# The requests whose ack changes the state (`ClientState.acked`): a driver need not call
# it for any other (a publish's ack, one per message, changes nothing).
ACK_CHANGES_STATE = frozenset({"subscribe", "unsubscribe"})


class ClientState:
    """One client's view of its connection; satisfies `intents.ClientView`."""

    __slots__ = ("_peers", "close_code", "going_away_ms", "is_open", "subscriptions", "token")

    def __init__(self, token: str | None = None) -> None:
        self.token = token  # the credential, when a JWT (None: the API key)
        self.is_open = False
        self.close_code: int | None = None
        self.going_away_ms: int | None = None  # the last `going_away` hint
        self.subscriptions: dict[str, float] = {}  # channel -> when its subscribe was acked
        # channel -> peers present; kept across reconnects (presence frames say who left).
        # Made when first used: most clients never see presence (72 bytes each).
        self._peers: collections.defaultdict[str, set[str]] | None = None

    @property
    def peers(self) -> dict[str, set[str]]:
        """Channel -> the peers present there, from presence frames."""
        if self._peers is None:
            self._peers = collections.defaultdict(set)
        return self._peers

    def connecting(self) -> None:
        """A connect begins: what the previous connection knew (its close, its hint, its
        subscriptions) is gone."""
        self.is_open = False
        self.close_code = None
        self.going_away_ms = None
        self.subscriptions.clear()

    def opened(self) -> None:
        """The `welcome` came: the connection is open."""
        self.is_open = True

    def closed(self, code: int) -> bool:
        """The connection ended with `code` (ours: 1000). True the first time: a later
        code does not replace the first (the server's close, then our socket's end)."""
        self.is_open = False
        if self.close_code is None:
            self.close_code = code
            return True
        return False

    def acked(self, op: str, channel: str, at: float) -> None:
        """A request of `op` on `channel` was acked at `at` (unix seconds)."""
        if op == "subscribe":
            self.subscriptions[channel] = at
        elif op == "unsubscribe":
            self.subscriptions.pop(channel, None)

    def on_frame(self, frame: dict[str, Any]) -> None:
        """A decoded server frame other than a reply or a delivery; the kinds that change
        this state (`presence`, `going_away`) are read, any other is ignored."""
        kind = frame.get("type")
        if kind == "presence":
            peers = self.peers[frame.get("channel", "")]
            peers.update(p["peerId"] for p in frame.get("joined", ()))
            peers.difference_update(p["peerId"] for p in frame.get("left", ()))
        elif kind == "going_away":
            self.going_away_ms = frame.get("retryAfterMs")
