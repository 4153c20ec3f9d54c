"""Per-connection token bucket (PROTOCOL.md section 6, close 4011).

Pure arithmetic over an injected `now`, so the same rules run in real and virtual time.
"""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens a second, holding at most `burst`; one frame costs one token."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend `cost` tokens if the bucket holds them; False when it is empty."""
        elapsed = now - self.updated
        if elapsed > 0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
            self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False
