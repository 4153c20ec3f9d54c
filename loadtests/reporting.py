"""Where a client's outcomes go: Locust's request event and the raw event log.

Locust groups failures by the exception's message, so a failed request is reported
with an exception whose text is the error code (`backend_error`) or the close code
(`close 4011`): the failure table then reads per code.
"""

from __future__ import annotations

import time
from typing import Any

from .eventlog import EventLog

REQUEST_TYPE = "WS"


class CodeError(Exception):
    """A failed request; its message is the protocol code, for Locust's failure table."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Reporter:
    """Reports one user's requests and deliveries (to Locust when it runs)."""

    def __init__(self, environment: Any = None, log: EventLog | None = None, *,
                 user: str = "", user_class: str = "", policy: str = "") -> None:
        self.events = environment.events if environment is not None else None
        self.log = log
        self.user = user
        self.user_class = user_class
        self.policy = policy

    def request(self, op: str, outcome: str, latency_ms: float, *, nbytes: int = 0,
                attempt: int = 1, channel: str = "", msg_id: str = "", peer: str = "",
                intended_t: float | None = None, t: float | None = None) -> None:
        """One request finished (at `t`, default now); `outcome` is "ok" or its code."""
        if self.events is not None:
            self.events.request.fire(
                request_type=REQUEST_TYPE, name=op, response_time=latency_ms,
                response_length=nbytes,
                exception=None if outcome == "ok" else CodeError(outcome),
                context={"user": self.user, "attempt": attempt})
        if self.log is not None:
            self.log.row(time.time() if t is None else t, self.user, self.user_class, op,
                         outcome, latency_ms, attempt, nbytes, channel, msg_id, peer,
                         intended_t, self.policy)

    def delivery(self, kind: str, latency_ms: float | None, *, nbytes: int, channel: str,
                 msg_id: str, sender: str) -> None:
        """A message or direct arrived; latency is publish-to-delivery when known."""
        if self.events is not None and latency_ms is not None:
            self.events.request.fire(request_type=REQUEST_TYPE, name="deliver",
                                     response_time=latency_ms, response_length=nbytes,
                                     exception=None, context={"user": self.user})
        if self.log is not None:
            self.log.row(time.time(), self.user, self.user_class, "deliver", kind, latency_ms,
                         1, nbytes, channel, msg_id, sender, None, self.policy)

    def note(self, op: str, outcome: str, **fields: Any) -> None:
        """An event that is not a request: a close received, a subscription held."""
        if self.log is not None:
            self.log.row(time.time(), self.user, self.user_class, op, outcome,
                         channel=fields.get("channel", ""), peer=fields.get("peer", ""),
                         msg_id=fields.get("msg_id", ""), policy=self.policy)
