"""Client-side limits on retrying: a retry budget and gRPC-style retry throttling.

Backoff spaces one client's retries out in time but does not bound how many there are:
during an outage every request fails, and a client retrying each one up to N times
multiplies the load on a server that is already failing (a retry storm). The two
mechanisms here bound the multiplication, and a run can compare them:

- `RetryBudget` (Finagle's RetryBudget, without its time window): retries may be at most
  a fraction of first attempts, plus a small fixed allowance so that a fresh client,
  which has made no requests yet, can still retry at all. Over a client's lifetime
  `retries <= ratio * first_attempts + min_retries`, so retries add at most `ratio`
  (say 10%) to the load however long the outage lasts.
- `RetryThrottle` (gRPC's retryThrottling, gRFC A6): a token count that failures drain
  and successes refill slowly; retries stop while it is at or below half. It reacts to
  the current failure rate rather than to the lifetime ratio, so it stops retries quickly
  when most requests fail and resumes them once requests succeed again.
"""

from __future__ import annotations

import math

DEFAULT_MIN_RETRIES = 10  # a fresh client's allowance, before any first attempt paid in
DEFAULT_MAX_TOKENS = 10.0
DEFAULT_TOKEN_RATIO = 0.1
_MILLI = 1000  # gRPC keeps tokens to three decimals; integers keep the arithmetic exact


class RetryBudget:
    """At most `ratio` retries per first attempt, plus `min_retries` over the lifetime.

    Each first attempt deposits `ratio`; each retry withdraws one, and is refused when
    the balance cannot cover it. The withdrawal happens when the retry is decided, not
    when it is sent, so two failures in a row cannot both spend the last retry.
    """

    __slots__ = ("first_attempts", "min_retries", "ratio", "retries")

    def __init__(self, ratio: float, min_retries: int = DEFAULT_MIN_RETRIES) -> None:
        self.ratio = ratio
        self.min_retries = min_retries
        self.first_attempts = 0
        self.retries = 0

    @property
    def balance(self) -> float:
        """Retries still allowed now."""
        return self.ratio * self.first_attempts + self.min_retries - self.retries

    def deposit(self) -> None:
        """A first attempt was sent."""
        self.first_attempts += 1

    def try_withdraw(self) -> bool:
        """Spend one retry if the budget holds it; False (nothing spent) when it does not."""
        if self.retries + 1 > self.ratio * self.first_attempts + self.min_retries:
            return False
        self.retries += 1
        return True

    @classmethod
    def from_spec(cls, value: object, field: str = "retry.budget") -> RetryBudget | None:
        """None/false (off), a ratio, or a table {ratio, min_retries}."""
        if value is None or value is False:
            return None
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"ratio", "min_retries"})
            if unknown:
                raise ValueError(f"{field}.{unknown[0]}: unknown field "
                                 "(known: ratio, min_retries)")
            if "ratio" not in value:
                raise ValueError(f"{field}.ratio: required")
            ratio = _ratio(f"{field}.ratio", value["ratio"])
            min_retries = value.get("min_retries", DEFAULT_MIN_RETRIES)
            if isinstance(min_retries, bool) or not isinstance(min_retries, int) \
                    or min_retries < 0:
                raise ValueError(f"{field}.min_retries: must be an integer >= 0, "
                                 f"got {min_retries!r}")
            return cls(ratio, min_retries)
        return cls(_ratio(field, value))


class RetryThrottle:
    """gRPC retry throttling: `tokens` start at `max_tokens`; each failed attempt costs
    one (down to 0), each success earns `token_ratio` (up to `max_tokens`); retries are
    allowed only while tokens > max_tokens / 2.
    """

    __slots__ = ("_max_milli", "_ratio_milli", "_tokens_milli")

    def __init__(self, max_tokens: float = DEFAULT_MAX_TOKENS,
                 token_ratio: float = DEFAULT_TOKEN_RATIO) -> None:
        self._max_milli = round(max_tokens * _MILLI)
        self._ratio_milli = round(token_ratio * _MILLI)
        self._tokens_milli = self._max_milli

    @property
    def tokens(self) -> float:
        return self._tokens_milli / _MILLI

    @property
    def max_tokens(self) -> float:
        return self._max_milli / _MILLI

    @property
    def token_ratio(self) -> float:
        return self._ratio_milli / _MILLI

    def record(self, ok: bool) -> None:
        """Account one attempt's outcome."""
        if ok:
            self._tokens_milli = min(self._max_milli, self._tokens_milli + self._ratio_milli)
        else:
            self._tokens_milli = max(0, self._tokens_milli - _MILLI)

    @property
    def allows_retry(self) -> bool:
        return 2 * self._tokens_milli > self._max_milli

    @classmethod
    def from_spec(cls, value: object, field: str = "retry.throttle") -> RetryThrottle | None:
        """None/false (off), true (gRPC's example: 10 tokens, ratio 0.1), or a table."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if not isinstance(value, dict):
            raise ValueError(f"{field}: must be true, false or a table "
                             f"{{max_tokens, token_ratio}}, got {value!r}")
        unknown = sorted(set(value) - {"max_tokens", "token_ratio"})
        if unknown:
            raise ValueError(f"{field}.{unknown[0]}: unknown field "
                             "(known: max_tokens, token_ratio)")
        max_tokens = value.get("max_tokens", DEFAULT_MAX_TOKENS)
        token_ratio = value.get("token_ratio", DEFAULT_TOKEN_RATIO)
        # gRPC's limits: 0 < max_tokens <= 1000, token_ratio > 0 (three decimals).
        if not _is_number(max_tokens) or not 0 < max_tokens <= 1000:
            raise ValueError(f"{field}.max_tokens: must be a number in (0, 1000], "
                             f"got {max_tokens!r}")
        if not _is_number(token_ratio) or round(token_ratio * _MILLI) < 1:
            raise ValueError(f"{field}.token_ratio: must be a number >= 0.001, "
                             f"got {token_ratio!r}")
        return cls(float(max_tokens), float(token_ratio))


def _ratio(field: str, value: object) -> float:
    if not _is_number(value) or not 0 <= value <= 1:
        raise ValueError(f"{field}: must be a fraction between 0 and 1 (0.1 = 10% of "
                         f"requests may be retries), got {value!r}")
    return float(value)


def _is_number(value: object) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and math.isfinite(value))
