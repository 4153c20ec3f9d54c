"""The accounting envelope every `publish` and `send` carries, defined once.

`{"id", "ts", "pub", "ch", "v"}`: the message id (`publisher:n`, n counting up per
publisher across its reconnects), when it was sent (unix seconds, the intended time
under the open model), who sent it, to which channel ("" for a direct message), and the
value. Receivers time, de-duplicate and order deliveries by it; the analysis counts
losses by it. Both the protocol client and the behaviours stamp payloads here.
"""

from __future__ import annotations

from typing import Any


def envelope(publisher: str, n: int, value: Any, channel: str, sent_at: float
             ) -> tuple[str, dict[str, Any]]:
    """The message id of `publisher`'s `n`-th message, and its payload."""
    msg_id = f"{publisher}:{n}"
    return msg_id, {"id": msg_id, "ts": sent_at, "pub": publisher, "ch": channel, "v": value}


def sequence_of(msg_id: str) -> int | None:
    """The `n` of a message id, None when it is not one of ours."""
    _, _, tail = msg_id.rpartition(":")
    return int(tail) if tail.isdigit() else None
