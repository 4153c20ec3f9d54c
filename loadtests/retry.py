"""Retry policies: what a simulated client does after an error frame or a close.

How clients retry decides whether a fault stays a blip or becomes an outage (retry
storms, thundering herds after a deploy), so the policy is a variable of the experiment:
each Locust user class names one in the scenario, and runs compare them.

- `default` follows the retry guidance of PROTOCOL.md sections 5-6. It does not list
  codes: it reads `server.codes` (the single table) and acts on each code's `Retry`
  kind, so a code added to the table is handled here without a change. Its waits use
  one of the backoff strategies of `loadtests.backoff`, and it can be bounded by a
  retry budget and gRPC-style throttling (`loadtests.budget`).
- `naive` retries every error and every close at once, with no limit: the retry storm
  the others are measured against.
- `none` never retries: the lower bound (every fault is a lost request or user).
- `"package.module:ClassName"` plugs in a user's own `RetryPolicy` subclass.

`attempt` is 1-based throughout: the number of attempts of the logical operation (or
connection attempts) already made, so the first decision after a failure sees 1.

Every random draw uses the `random.Random` the policy was given, so a seeded user makes
the same decisions on every run.
"""

from __future__ import annotations

import importlib
import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from server.codes import CLOSE_CODES, ERROR_CODES, Retry

from .backoff import BACKOFFS, Backoff, make_backoff, seconds
from .budget import RetryBudget, RetryThrottle

__all__ = [
    "ACTIONS",
    "BACKOFFS",
    "CLOSE_RULES",
    "ERROR_RULES",
    "POLICIES",
    "Backoff",
    "Decision",
    "DefaultPolicy",
    "NaivePolicy",
    "NoRetryPolicy",
    "RetryBudget",
    "RetryPolicy",
    "RetryThrottle",
    "make_backoff",
    "make_policy",
]

ACTIONS = (None, "unsubscribe_oldest", "refresh_token", "throttle")


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after one failure."""

    retry: bool  # try again (the same request, or reconnect for closes)
    delay_s: float = 0.0  # wait this long first
    action: str | None = None  # one of ACTIONS, done before the retry
    terminal: bool = False  # for closes: stop this user's connection for good
    reason: str = ""  # short human text, for the event log


class RetryPolicy:
    """Base class of every policy, and of a user's own (plug it in by import path).

    It keeps the accounting every policy shares: `on_request`/`on_result` feed the
    optional `budget` and `throttle`, and `admit_retry` passes a retry decision through
    them. A subclass decides in `after_error` and `after_close`, and returns
    `self.admit_retry(decision)` for request retries it wants bounded.

    Parameters come from the scenario as keyword arguments; a subclass takes the ones it
    knows and hands the rest to `super().__init__`, which rejects leftovers with a
    ValueError naming the field.

    The built-in policies are slotted (every user has one: a `__dict__` each was about
    100 bytes at a million users); a subclass without `__slots__` has a `__dict__` as
    usual.
    """

    __slots__ = ("attempts", "budget", "retries", "retries_denied_by_budget",
                 "retries_denied_by_throttle", "rng", "throttle")

    name: ClassVar[str] = "custom"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__  # a plugged-in class reports under its own name

    def __init__(self, *, rng: random.Random | None = None, **params: Any) -> None:
        if params:
            field = sorted(params)[0]
            known = _keyword_parameters(type(self))
            hint = f"known: {', '.join(known)}" if known else "it takes no parameters"
            raise ValueError(f"retry.{field}: unknown field for policy {self.name!r} "
                             f"({hint})")
        self.rng = rng if rng is not None else random.Random()
        self.budget: RetryBudget | None = None
        self.throttle: RetryThrottle | None = None
        self.attempts = 0
        self.retries = 0
        self.retries_denied_by_budget = 0
        self.retries_denied_by_throttle = 0

    def after_error(self, op: str, code: str, attempt: int) -> Decision:
        """Whether and when to resend `op` after an error frame with `code`."""
        raise NotImplementedError

    def after_timeout(self, op: str, attempt: int) -> Decision:
        """Whether and when to resend `op` that got no reply in time: by default not
        (the server may well have done it; see `DefaultPolicy`'s `retry_timeouts`)."""
        return Decision(False, reason="timeout: not retried")

    def after_close(self, code: int, attempt: int,
                    retry_after_ms: int | None = None) -> Decision:
        """Whether and when to reconnect after a close (1006: dropped, no close frame)."""
        raise NotImplementedError

    def on_request(self, is_retry: bool) -> None:
        """Every request sent (connects included): first attempts pay into the budget."""
        self.attempts += 1
        if is_retry:
            self.retries += 1
        elif self.budget is not None:
            self.budget.deposit()

    def on_result(self, ok: bool) -> None:
        """Every request's outcome: failures drain the throttle, successes refill it."""
        if self.throttle is not None:
            self.throttle.record(ok)

    def admit_retry(self, decision: Decision) -> Decision:
        """`decision`, or a refusal when the throttle or the budget does not allow a retry.

        The throttle is asked first, so a retry it refuses does not spend budget.
        """
        if not decision.retry:
            return decision
        if self.throttle is not None and not self.throttle.allows_retry:
            self.retries_denied_by_throttle += 1
            return Decision(False, reason="retry throttled")
        if self.budget is not None and not self.budget.try_withdraw():
            self.retries_denied_by_budget += 1
            return Decision(False, reason="retry budget exhausted")
        return decision

    @property
    def stats(self) -> dict[str, int]:
        return {
            "attempts": self.attempts,
            "retries": self.retries,
            "retries_denied_by_budget": self.retries_denied_by_budget,
            "retries_denied_by_throttle": self.retries_denied_by_throttle,
        }


class NoRetryPolicy(RetryPolicy):
    """Never retry, never reconnect: every fault costs the request or the user."""

    __slots__ = ()
    name = "none"

    def after_error(self, op: str, code: str, attempt: int) -> Decision:
        return Decision(False, reason="policy none: never retry")

    def after_close(self, code: int, attempt: int,
                    retry_after_ms: int | None = None) -> Decision:
        return Decision(False, terminal=True, reason="policy none: never reconnect")


class NaivePolicy(RetryPolicy):
    """Retry everything at once, forever: no backoff, no cap, no budget, no actions.

    Deliberately bad. It even reconnects after terminal closes and resends requests the
    server will always reject, which is what some real clients do.
    """

    __slots__ = ()
    name = "naive"

    def after_error(self, op: str, code: str, attempt: int) -> Decision:
        return Decision(True, reason="policy naive: retry at once")

    def after_close(self, code: int, attempt: int,
                    retry_after_ms: int | None = None) -> Decision:
        return Decision(True, reason="policy naive: reconnect at once")


Rule = Callable[["DefaultPolicy", str, int, "int | None"], Decision]


class DefaultPolicy(RetryPolicy):
    """PROTOCOL.md sections 5-6, read from `server.codes`: one rule per `Retry` kind.

    Request retries (after error frames) are capped by `max_attempts` and pass through
    the budget and the throttle when those are configured. Reconnects (after closes) are
    not: a budget sized for requests would strand a user after a few deploys, and
    real SDKs (and gRPC's own throttling) leave connection establishment to backoff
    alone. `max_reconnects` (default: no limit) caps one connection's reconnect loop.
    """

    __slots__ = ("backoff", "floor_4010_s", "jitter_1001_s", "max_attempts", "max_reconnects",
                 "peer_not_found_delay_s", "quota_probe_s", "retry_timeouts")
    name = "default"

    def __init__(
        self,
        *,
        rng: random.Random | None = None,
        backoff: str = "full_jitter",
        base_s: float = 0.1,
        cap_s: float = 5.0,
        max_attempts: int | None = 5,
        max_reconnects: int | None = None,
        budget: float | dict[str, Any] | None = None,
        throttle: bool | dict[str, Any] | None = False,
        floor_4010_s: float = 30.0,
        jitter_1001_s: float = 1.0,
        peer_not_found_delay_s: float = 1.0,
        quota_probe_s: float = 5.0,
        retry_timeouts: bool = False,
        **params: Any,
    ) -> None:
        super().__init__(rng=rng, **params)
        self.backoff: Backoff = make_backoff(backoff, base_s, cap_s, self.rng)
        self.max_attempts = _count_or_none("retry.max_attempts", max_attempts)
        self.max_reconnects = _count_or_none("retry.max_reconnects", max_reconnects)
        self.budget = RetryBudget.from_spec(budget)
        self.throttle = RetryThrottle.from_spec(throttle)
        self.floor_4010_s = seconds("retry.floor_4010_s", floor_4010_s)
        self.jitter_1001_s = seconds("retry.jitter_1001_s", jitter_1001_s)
        self.peer_not_found_delay_s = seconds("retry.peer_not_found_delay_s",
                                              peer_not_found_delay_s)
        self.quota_probe_s = seconds("retry.quota_probe_s", quota_probe_s)
        if not isinstance(retry_timeouts, bool):
            raise ValueError(f"retry.retry_timeouts: must be true or false, got "
                             f"{retry_timeouts!r}")
        self.retry_timeouts = retry_timeouts

    # -- entry points ------------------------------------------------------------------

    def after_error(self, op: str, code: str, attempt: int) -> Decision:
        _check_attempt(attempt)
        entry = ERROR_CODES.get(code)
        if entry is None:
            # PROTOCOL.md 5 lets servers add codes; clients must tolerate them, not retry
            # them. An unknown code carries no guidance, and blindly resending a request
            # the server rejected for a reason we cannot read is how retry storms start
            # (gRPC likewise retries only the codes it is told are retryable).
            return Decision(False, reason=f"{code}: unknown code, not retried")
        decision = ERROR_RULES[entry.retry](self, f"{code}: {entry.guidance}", attempt, None)
        if not decision.retry:
            return decision
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return Decision(False, reason=f"{code}: gave up after {attempt} attempts")
        return self.admit_retry(decision)

    def after_timeout(self, op: str, attempt: int) -> Decision:
        """With `retry_timeouts`, a timeout is retried as a transient error is (backoff,
        `max_attempts`, the budget and the throttle): what many clients do, and what
        turns an overloaded server's slow replies into more load (Bronson et al.)."""
        _check_attempt(attempt)
        if not self.retry_timeouts:
            return super().after_timeout(op, attempt)
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return Decision(False, reason=f"timeout: gave up after {attempt} attempts")
        return self.admit_retry(self._with_backoff("timeout: retried with backoff",
                                                   attempt, None))

    def after_close(self, code: int, attempt: int,
                    retry_after_ms: int | None = None) -> Decision:
        _check_attempt(attempt)
        entry = CLOSE_CODES.get(code)
        if entry is None:
            # 1006 (dropped by a fault, no close frame) and codes the table does not know:
            # the connection is gone for a reason that may well pass, so come back, but
            # with backoff so a flapping network does not become a reconnect storm.
            kind, label = Retry.BACKOFF, f"close {code}: not in the table, reconnect"
        else:
            kind, label = entry.retry, f"close {code} {entry.name}: {entry.guidance}"
        decision = CLOSE_RULES[kind](self, label, attempt, retry_after_ms)
        if not decision.retry:
            return Decision(False, terminal=True, reason=decision.reason)
        if self.max_reconnects is not None and attempt >= self.max_reconnects:
            return Decision(False, terminal=True,
                            reason=f"close {code}: gave up after {attempt} attempts")
        return decision

    def on_result(self, ok: bool) -> None:
        super().on_result(ok)
        if ok:
            self.backoff.reset()  # the retry sequence is over (decorrelated jitter)

    # -- one rule per Retry kind ---------------------------------------------------------

    def _no_retry(self, label: str, attempt: int, hint: int | None) -> Decision:
        return Decision(False, reason=label)

    def _with_backoff(self, label: str, attempt: int, hint: int | None) -> Decision:
        return Decision(True, self.backoff.delay(attempt), reason=label)

    def _after_unsubscribe(self, label: str, attempt: int, hint: int | None) -> Decision:
        return Decision(True, action="unsubscribe_oldest", reason=label)

    def _once_after_delay(self, label: str, attempt: int, hint: int | None) -> Decision:
        if attempt > 1:
            return Decision(False, reason=f"{label} (already retried once)")
        return Decision(True, self.peer_not_found_delay_s, reason=label)

    def _probe_period(self, label: str, attempt: int, hint: int | None) -> Decision:
        # The client cannot see the period boundary (only the REST usage call, with the
        # app's secret, can), so it probes rarely rather than hammering a spent quota.
        return Decision(True, self.quota_probe_s, reason=label)

    def _after_hint(self, label: str, attempt: int, hint: int | None) -> Decision:
        # The jitter spreads the reconnects of every client told the same retryAfterMs.
        wait_s = max(0, hint or 0) / 1000
        return Decision(True, wait_s + self.rng.uniform(0.0, self.jitter_1001_s),
                        reason=label)

    def _refresh_token(self, label: str, attempt: int, hint: int | None) -> Decision:
        # At once the first time; if a fresh token is refused as expired again (clock
        # skew, or no way to get one), back off instead of looping at full speed.
        delay_s = 0.0 if attempt == 1 else self.backoff.delay(attempt - 1)
        return Decision(True, delay_s, action="refresh_token", reason=label)

    def _after_floor(self, label: str, attempt: int, hint: int | None) -> Decision:
        # The backoff on top of the floor keeps rejected clients from returning together.
        return Decision(True, self.floor_4010_s + self.backoff.delay(attempt), reason=label)

    def _throttled(self, label: str, attempt: int, hint: int | None) -> Decision:
        return Decision(True, self.backoff.delay(attempt), action="throttle", reason=label)


# The rules the default policy applies per `Retry` kind. Kinds that only make sense for
# one side still get a rule on the other, so a code added to either table with any kind
# is handled; tests check both tables cover every kind.
ERROR_RULES: dict[Retry, Rule] = {
    Retry.NEVER: DefaultPolicy._no_retry,
    Retry.NEVER_ON_CONNECTION: DefaultPolicy._no_retry,
    Retry.AFTER_UNSUBSCRIBE: DefaultPolicy._after_unsubscribe,
    Retry.ONCE_AFTER_DELAY: DefaultPolicy._once_after_delay,
    Retry.AFTER_PERIOD: DefaultPolicy._probe_period,
    Retry.BACKOFF: DefaultPolicy._with_backoff,
    Retry.RECONNECT_AFTER_HINT: DefaultPolicy._with_backoff,  # no hint on an error frame
    Retry.RECONNECT_NEW_TOKEN: DefaultPolicy._refresh_token,
    Retry.RECONNECT_AFTER_WAIT: DefaultPolicy._after_floor,
    Retry.RECONNECT_THROTTLED: DefaultPolicy._throttled,
    Retry.TERMINAL: DefaultPolicy._no_retry,
    Retry.RECONNECT_LIGHTER: DefaultPolicy._with_backoff,  # never on an error frame
    Retry.INSPECT: DefaultPolicy._no_retry,  # no reason to inspect: like an unknown code
}

CLOSE_RULES: dict[Retry, Rule] = {
    Retry.NEVER: DefaultPolicy._no_retry,  # 1009: the payload will not shrink
    Retry.NEVER_ON_CONNECTION: DefaultPolicy._no_retry,  # the same credential again
    Retry.AFTER_UNSUBSCRIBE: DefaultPolicy._with_backoff,  # a new connection holds none
    Retry.ONCE_AFTER_DELAY: DefaultPolicy._once_after_delay,
    Retry.AFTER_PERIOD: DefaultPolicy._probe_period,
    Retry.BACKOFF: DefaultPolicy._with_backoff,
    Retry.RECONNECT_AFTER_HINT: DefaultPolicy._after_hint,
    Retry.RECONNECT_NEW_TOKEN: DefaultPolicy._refresh_token,
    Retry.RECONNECT_AFTER_WAIT: DefaultPolicy._after_floor,
    Retry.RECONNECT_THROTTLED: DefaultPolicy._throttled,
    Retry.TERMINAL: DefaultPolicy._no_retry,
    Retry.RECONNECT_LIGHTER: DefaultPolicy._with_backoff,  # 1008: a slow consumer
    Retry.INSPECT: DefaultPolicy._with_backoff,  # a reason to read: it may recover
}

POLICIES: dict[str, type[RetryPolicy]] = {
    cls.name: cls for cls in (DefaultPolicy, NaivePolicy, NoRetryPolicy)
}


def make_policy(spec: str | dict[str, Any] | None, *,
                rng: random.Random | None = None) -> RetryPolicy:
    """The policy a scenario names: "default" | "naive" | "none" | "pkg.mod:Class", or a
    table {"policy": name, ...parameters}. ValueError (one line, naming the field) when
    the spec is invalid.
    """
    if spec is None:
        name, params = "default", {}
    elif isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, dict):
        params = dict(spec)
        name = params.pop("policy", "default")
        if not isinstance(name, str):
            raise ValueError(f"retry.policy: must be a string, got {name!r}")
    else:
        raise ValueError(f"retry: must be a policy name or a table, got {spec!r}")
    if "rng" in params:
        raise ValueError("retry.rng: not a scenario field (the user seeds the policy)")
    cls = policy_class(name)
    try:
        return cls(rng=rng, **params)
    except TypeError as exc:  # a plugged-in class with a fixed signature
        raise ValueError(f"retry.policy: {name} rejected its parameters: {exc}") from exc


def policy_class(name: str) -> type[RetryPolicy]:
    """A built-in policy by name, or a RetryPolicy subclass by "package.module:Class"."""
    if name in POLICIES:
        return POLICIES[name]
    module_name, colon, attr = name.partition(":")
    if not colon or not module_name or not attr:
        raise ValueError(f"retry.policy: must be one of {', '.join(POLICIES)} or "
                         f"'package.module:ClassName', got {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"retry.policy: cannot import {module_name!r} "
                         f"({type(exc).__name__}: {_one_line(exc)})") from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"retry.policy: module {module_name!r} has no {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, RetryPolicy)):
        raise ValueError(f"retry.policy: {name!r} is not a subclass of "
                         "loadtests.retry.RetryPolicy")
    return cls


def _check_attempt(attempt: int) -> None:
    if attempt < 1:
        raise ValueError(f"attempt is 1-based (attempts already made), got {attempt}")


def _count_or_none(field: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field}: must be an integer >= 1, got {value!r}")
    return value


def _keyword_parameters(cls: type) -> list[str]:
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters if p.kind is p.KEYWORD_ONLY and p.name != "rng"]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
