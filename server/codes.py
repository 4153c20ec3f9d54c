"""The error and close codes of PROTOCOL.md sections 5-6, as data.

One table is the single source of truth: the server's error messages, the clients'
default retry policy, the report's per-code table and the notebooks all read it, so
adding a code is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class Retry(StrEnum):
    """Whether and how a client may retry after a code (the guidance column)."""

    NEVER = "never"  # fix the client; retrying cannot help
    NEVER_ON_CONNECTION = "never_on_connection"  # this credential will not do it
    AFTER_UNSUBSCRIBE = "after_unsubscribe"  # free a subscription slot first
    ONCE_AFTER_DELAY = "once_after_delay"  # sometimes works; do not loop
    AFTER_PERIOD = "after_period"  # wait for the quota period boundary
    BACKOFF = "backoff"  # transient: retry after a short backoff
    RECONNECT_AFTER_HINT = "reconnect_after_hint"  # going_away.retryAfterMs + jitter
    RECONNECT_NEW_TOKEN = "reconnect_new_token"  # fetch a fresh token first
    RECONNECT_AFTER_WAIT = "reconnect_after_wait"  # wait (SDKs: >= 30 s)
    RECONNECT_THROTTLED = "reconnect_throttled"  # back off and lower the send rate
    TERMINAL = "terminal"  # do not reconnect
    RECONNECT_LIGHTER = "reconnect_lighter"  # back off; read faster or subscribe to less
    INSPECT = "inspect"  # read the reason


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """A soft-drop `error` frame code: the connection stays open."""

    code: str
    meaning: str
    retry: Retry
    guidance: str

    @property
    def is_retryable(self) -> bool:
        return self.retry not in (Retry.NEVER, Retry.NEVER_ON_CONNECTION)

    @property
    def is_client_fault(self) -> bool:
        """True when the client sent something it should not have (the client's bug)."""
        return self.retry in (Retry.NEVER, Retry.NEVER_ON_CONNECTION)


class CloseCode(IntEnum):
    """The WebSocket close codes of the service, by name (as websockets' `CloseCode`)."""

    NORMAL_CLOSURE = 1000  # a client's own close; the service never sends it
    GOING_AWAY = 1001
    ABNORMAL_CLOSURE = 1006  # never sent: recorded when a socket dies with no close frame
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    INVALID_TOKEN = 4001
    TOKEN_EXPIRED = 4002
    CHANNEL_NOT_AUTHORIZED = 4003
    OVER_CONCURRENT_LIMIT = 4010
    OVER_MESSAGE_RATE = 4011
    ACCOUNT_SUSPENDED = 4012
    ADMIN_DISCONNECT = 4020


@dataclass(frozen=True, slots=True)
class CloseEntry:
    """A WebSocket close code the service sends: its row of the code table."""

    code: int
    name: str
    meaning: str
    retry: Retry
    guidance: str

    @property
    def is_terminal(self) -> bool:
        return self.retry is Retry.TERMINAL


ERROR_CODES: dict[str, ErrorCode] = {
    e.code: e
    for e in (
        ErrorCode("malformed_message", "not JSON, not an object, no string `type`, bad "
                  "`requestId`, or a binary frame", Retry.NEVER, "never - fix the client"),
        ErrorCode("unknown_type", "`type` is a string the server does not know",
                  Retry.NEVER, "never"),
        ErrorCode("invalid_channel", "channel missing, empty, too long or with control "
                  "characters", Retry.NEVER, "never"),
        ErrorCode("invalid_peer_id", "`to` missing, empty, too long or not printable ASCII",
                  Retry.NEVER, "never"),
        ErrorCode("channel_not_authorized", "channel outside the key/token patterns",
                  Retry.NEVER_ON_CONNECTION, "never on this connection"),
        ErrorCode("channel_reserved", "channel has a reserved prefix", Retry.NEVER, "never"),
        ErrorCode("channel_limit_exceeded", "connection already holds the maximum number "
                  "of subscriptions", Retry.AFTER_UNSUBSCRIBE, "unsubscribe first"),
        ErrorCode("peer_not_found", "`send` target has no connection", Retry.ONCE_AFTER_DELAY,
                  "sometimes; don't loop"),
        ErrorCode("missing_data", "`publish`/`send` without `data`", Retry.NEVER, "never"),
        ErrorCode("action_not_permitted", "action not in the effective actions",
                  Retry.NEVER_ON_CONNECTION, "never on this connection"),
        ErrorCode("over_message_quota", "the app's message quota is used up and no "
                  "overage is possible", Retry.AFTER_PERIOD,
                  "after the period boundary, or after billing changes"),
        ErrorCode("backend_error", "routing fault: backend unreachable or erroring",
                  Retry.BACKOFF, "yes, after a short backoff"),
        ErrorCode("internal_error", "unexpected failure while handling the frame",
                  Retry.BACKOFF, "yes, after a short backoff"),
    )
}

CLOSE_CODES: dict[int, CloseEntry] = {
    c.code: c
    for c in (
        CloseEntry(CloseCode.GOING_AWAY, "going_away",
                   "shutdown or simulated deploy, after `going_away`",
                   Retry.RECONNECT_AFTER_HINT, "reconnect after retryAfterMs (+ jitter)"),
        CloseEntry(CloseCode.POLICY_VIOLATION, "policy_violation",
                   "slow consumer: queued outbound bytes passed limits.max_outbound_bytes",
                   Retry.RECONNECT_LIGHTER,
                   "read faster or subscribe to less; reconnect with backoff"),
        CloseEntry(CloseCode.MESSAGE_TOO_BIG, "message_too_big",
                   "inbound frame larger than 65536 bytes", Retry.NEVER, "split payloads"),
        CloseEntry(CloseCode.INTERNAL_ERROR, "internal_error",
                   "the server could not serve the connection (backend failure at connect, "
                   "keepalive timeout)", Retry.BACKOFF, "reconnect after a backoff"),
        CloseEntry(CloseCode.INVALID_TOKEN, "invalid_token", "authentication failed at connect",
                   Retry.TERMINAL, "terminal: fix credentials"),
        CloseEntry(CloseCode.TOKEN_EXPIRED, "token_expired", "JWT `exp` reached",
                   Retry.RECONNECT_NEW_TOKEN, "fetch a fresh token, reconnect"),
        CloseEntry(CloseCode.CHANNEL_NOT_AUTHORIZED, "channel_not_authorized",
                   "channel outside the credential's scope (only with close_on_unauthorized)",
                   Retry.TERMINAL, "terminal"),
        CloseEntry(CloseCode.OVER_CONCURRENT_LIMIT, "over_concurrent_limit",
                   "app at max_concurrent_connections, no overage possible",
                   Retry.RECONNECT_AFTER_WAIT, "wait (SDKs: >= 30 s), then retry"),
        CloseEntry(CloseCode.OVER_MESSAGE_RATE, "over_message_rate",
                   "per-connection token bucket empty", Retry.RECONNECT_THROTTLED,
                   "reconnect with backoff; throttle"),
        CloseEntry(CloseCode.ACCOUNT_SUSPENDED, "account_suspended", "app suspended",
                   Retry.TERMINAL, "terminal"),
        CloseEntry(CloseCode.ADMIN_DISCONNECT, "admin_disconnect", "REST kick", Retry.TERMINAL,
                   "terminal (application decides)"),
    )
}
