"""What a client behaviour asks its driver to do: the sans-I/O side of a virtual user.

A behaviour (`loadtests.behaviours`) is a generator: it yields one of these intents,
the driver performs it and sends the result back (`gen.send(result)`). Two drivers
perform them: the Locust users on real sockets and real time (`loadtests.users`), and
the virtual-time engine on the server core itself (`sim.virtual`). The behaviour's
logic (retries, backoffs, budgets, pacing, reconnects) is written once, there.

Nothing here reads a clock or touches a socket. A behaviour reads its clock and the
state of its connection (`ClientView`) from what its driver handed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

__all__ = ["DEFAULT_TIMEOUT_S", "MIN_WAIT_S", "ClientView", "Connect", "Disconnect", "Fire",
           "FreshToken", "GiveUp", "Idle", "Intent", "Renew", "Request", "Result", "SendRaw",
           "Sleep"]

# Below a microsecond there is nothing to wait for, only a trip through the scheduler: a
# behaviour yields no shorter `Sleep`, and a driver skips a shorter wait (an `Idle` wake
# already due).
MIN_WAIT_S = 1e-6
# How long a client waits for a reply before it reports a timeout (a user class's
# `timeout_s` changes it).
DEFAULT_TIMEOUT_S = 10.0


class Result(NamedTuple):
    """How one request ended: "ok", an error code, "close NNNN", "timeout".

    A named tuple: one is made per request, and it costs a third of a frozen dataclass.
    """

    op: str
    outcome: str
    latency_ms: float
    sent_at: float  # unix seconds (the intended time under the open model)

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def close_code(self) -> int | None:
        if self.outcome.startswith("close "):
            return int(self.outcome[6:])
        return None


@dataclass(frozen=True, slots=True)
class Connect:
    """Open a connection and wait for `welcome`. Result: a `Result` (op connect)."""

    attempt: int = 1


# Request and Fire, one per message, are not frozen: a frozen dataclass's __init__ costs
# four times a plain one's (2.6 us against 0.6), a tenth of a round trip in the swarm.
# Treat them as values all the same: a retry is a `dataclasses.replace`.


@dataclass(slots=True)
class Request:
    """Send `frame` with a fresh requestId and wait for its ack, error, the close or
    the client's timeout. Result: a `Result`.

    `intended_t` (open model) is when it should have gone out: latency counts from it.
    """

    op: str
    frame: Mapping[str, Any]
    attempt: int = 1
    channel: str = ""
    msg_id: str = ""
    peer: str = ""
    intended_t: float | None = None


@dataclass(slots=True)
class Fire:
    """Send a request without waiting (pipelining); its reply is reported when it
    comes. Result: False if the connection was already closed."""

    op: str
    frame: Mapping[str, Any]
    channel: str = ""
    msg_id: str = ""


@dataclass(frozen=True, slots=True)
class SendRaw:
    """Send any frame (bad input) and wait for the uncorrelated error it provokes.
    Result: a `Result`."""

    op: str
    data: str | bytes
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait `seconds` (never below `MIN_WAIT_S`: nothing to wait for). Result: None."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Idle:
    """Wake at `first_at`, `first_at + tick_s`, ... until a wake finds the connection
    no longer open; return then. Result: None.

    The same as sleeping a tick and checking, over and over (what an idle subscriber
    does), said once: the virtual engine computes the wake after a close instead of
    simulating every tick of a million idle clients.
    """

    first_at: float
    tick_s: float


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close from the client's side (not a server close). Result: None.

    With `drain_s`, first wait (at most that long, and only while the connection is
    open) for the replies of fired requests still in flight, so a user that stops does
    not leave the server's answers unaccounted.
    """

    drain_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Renew:
    """Replace the client with a fresh one for the next `Connect`: with `token` when
    given, else with the old client's credential (`keep_credential`) or, when False,
    with the API key (what a connect loop does when the token endpoint refused).
    Result: None."""

    token: str | None = None
    keep_credential: bool = True


@dataclass(frozen=True, slots=True)
class FreshToken:
    """Fetch a new JWT from the scenario's token endpoint. Result: str, or None when
    the scenario has none."""


@dataclass(frozen=True, slots=True)
class GiveUp:
    """This user stops for good (logged as `give_up`). The driver does not resume it."""

    reason: str


Intent = Connect | Request | Fire | SendRaw | Sleep | Idle | Disconnect | Renew | FreshToken \
    | GiveUp


class ClientView(Protocol):
    """What a behaviour may read of its current connection (kept by the driver)."""

    @property
    def is_open(self) -> bool: ...

    close_code: int | None
    going_away_ms: int | None  # the last `going_away` hint
    token: str | None
    subscriptions: dict[str, float]  # channel -> when its subscribe was acked
    peers: dict[str, set[str]]  # channel -> peers present, from presence frames
