"""Backoff strategies: how long a client waits before its next try.

The set is the one compared in the AWS Architecture Blog article "Exponential Backoff And
Jitter" (none, constant, exponential, full jitter, equal jitter, decorrelated jitter), so
a run can show what the article shows: plain exponential backoff keeps failed clients in
lockstep and the server sees synchronised waves, while jitter spreads them out.

`attempt` is 1-based everywhere in this package: it is the number of attempts of the
operation already made, so `delay(1)` is the wait before the first retry, and
`base * 2 ** (attempt - 1)`: the first retry waits `base`, the second `2 * base`, and
so on up to `cap`. The article's simulator counts one step further (its counter is 1
after the first failure and it waits `base * 2 ** n`, so its first retry waits
`2 * base`): `sim.virtual.occ` reproduces its figures with `delay(n + 1)`.

Every random draw uses the `random.Random` passed in, so a seeded run (and a test) gets
the same delays every time.
"""

from __future__ import annotations

import math
import random
from typing import ClassVar

# 2.0 ** 1024 overflows a float; past this exponent every ceiling is the cap anyway.
_MAX_EXPONENT = 1023


class Backoff:
    """One strategy: `delay(attempt)` seconds to wait before the next try."""

    __slots__ = ("base_s", "cap_s", "rng")
    name: ClassVar[str] = ""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng

    def delay(self, attempt: int) -> float:
        """Seconds to wait after `attempt` attempts (1 = after the first failure)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state: the operation succeeded. Stateless strategies ignore it."""

    def ceiling(self, attempt: int) -> float:
        """The capped exponential curve, min(cap, base * 2 ** (attempt - 1))."""
        _check_attempt(attempt)
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt - 1, _MAX_EXPONENT))


class NoBackoff(Backoff):
    """Retry at once: the baseline every other strategy is compared with."""

    __slots__ = ()
    name = "none"

    def delay(self, attempt: int) -> float:
        _check_attempt(attempt)
        return 0.0


class ConstantBackoff(Backoff):
    """Always `base`: simple, but failed clients stay synchronised."""

    __slots__ = ()
    name = "constant"

    def delay(self, attempt: int) -> float:
        _check_attempt(attempt)
        return self.base_s


class ExponentialBackoff(Backoff):
    """Doubling up to `cap`, no jitter: less total work, still synchronised waves."""

    __slots__ = ()
    name = "exponential"

    def delay(self, attempt: int) -> float:
        return self.ceiling(attempt)


class FullJitterBackoff(Backoff):
    """uniform(0, ceiling): the article's recommendation for the least server work."""

    __slots__ = ()
    name = "full_jitter"

    def delay(self, attempt: int) -> float:
        return self.rng.uniform(0.0, self.ceiling(attempt))


class EqualJitterBackoff(Backoff):
    """ceiling/2 + uniform(0, ceiling/2): keeps some wait, at the price of more work."""

    __slots__ = ()
    name = "equal_jitter"

    def delay(self, attempt: int) -> float:
        half = self.ceiling(attempt) / 2
        return half + self.rng.uniform(0.0, half)


class DecorrelatedJitterBackoff(Backoff):
    """min(cap, uniform(base, previous * 3)), starting from previous = base.

    Stateful: each wait depends on the previous one, not on the attempt number. The
    state is one retry sequence's, so it resets when the operation succeeds (`reset`)
    and when a new sequence starts (`delay(1)`); otherwise a client that once backed
    off to the cap would start its next, unrelated retry sequence there.
    """

    __slots__ = ("previous_s",)
    name = "decorrelated_jitter"

    def __init__(self, base_s: float, cap_s: float, rng: random.Random) -> None:
        super().__init__(base_s, cap_s, rng)
        self.previous_s = base_s

    def delay(self, attempt: int) -> float:
        _check_attempt(attempt)
        if attempt == 1:
            self.reset()
        self.previous_s = min(self.cap_s, self.rng.uniform(self.base_s, self.previous_s * 3))
        return self.previous_s

    def reset(self) -> None:
        self.previous_s = self.base_s


BACKOFFS: dict[str, type[Backoff]] = {
    cls.name: cls
    for cls in (NoBackoff, ConstantBackoff, ExponentialBackoff, FullJitterBackoff,
                EqualJitterBackoff, DecorrelatedJitterBackoff)
}


def make_backoff(name: str, base_s: float, cap_s: float,
                 rng: random.Random | None = None) -> Backoff:
    """The strategy called `name`; ValueError naming the field when a value is invalid."""
    if name not in BACKOFFS:
        raise ValueError(f"retry.backoff: must be one of {', '.join(BACKOFFS)}, got {name!r}")
    base_s = seconds("retry.base_s", base_s)
    cap_s = seconds("retry.cap_s", cap_s)
    if cap_s < base_s:
        raise ValueError(f"retry.cap_s: must be >= base_s ({base_s}), got {cap_s}")
    return BACKOFFS[name](base_s, cap_s, rng if rng is not None else random.Random())


def seconds(field: str, value: object) -> float:
    """`value` as a finite number of seconds >= 0, else ValueError naming `field`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field}: must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{field}: must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_attempt(attempt: int) -> None:
    if attempt < 1:
        raise ValueError(f"attempt is 1-based (attempts already made), got {attempt}")
