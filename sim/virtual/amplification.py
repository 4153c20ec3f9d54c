"""Retry amplification against a failing backend: the Google SRE book's figures.

Chapter 21 ("Handling Overload"): with at most three attempts per request, a backend
that fails everything sees just under 3x its offered load; a per-client retry budget of
10% keeps that to about 1.1x. Chapter 22 ("Addressing Cascading Failures"): three layers
that each make four attempts multiply to 4 ** 3 = 64 attempts at the bottom.

No clock is needed: amplification is a count, so these drive our policies' real decision
functions (`on_request`, `after_error`, `on_result`, which pass retries through the
budget) in a plain loop, one request at a time. The failure is `backend_error`, the code
the server answers when routing cannot reach its backend (`Retry.BACKOFF` in the codes
table), so the default policy's own rule decides each retry.

Our budget (`loadtests.budget.RetryBudget`) adds a fixed allowance of `min_retries`
(10) to a client's lifetime, so the 10% figure reaches 1.1x only for a client that
makes many requests: 1.1 + 10 / requests.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from loadtests.retry import DefaultPolicy

FAILING_CODE = "backend_error"


@dataclass(frozen=True, slots=True)
class Amplification:
    """Attempts that reached the backend per request offered."""

    requests: int
    attempts: int

    @property
    def factor(self) -> float:
        return self.attempts / self.requests


def sre_policy(max_attempts: int, budget: float | None = None,
               seed: int = 1) -> DefaultPolicy:
    """The default policy capped at `max_attempts`, with a retry budget `budget` (a ratio)."""
    return DefaultPolicy(rng=random.Random(f"sre:{seed}"), max_attempts=max_attempts,
                         budget=budget)


def request_attempts(policy: DefaultPolicy, succeeds: Callable[[], bool]) -> int:
    """Attempts one logical request makes under `policy`; `succeeds` answers each."""
    attempt = 1
    while True:
        policy.on_request(is_retry=attempt > 1)
        ok = succeeds()
        policy.on_result(ok)
        if ok:
            return attempt
        decision = policy.after_error("publish", FAILING_CODE, attempt)
        if not decision.retry:
            return attempt
        attempt += 1


def amplification(policy: DefaultPolicy, requests: int,
                  failure_rate: float = 1.0, seed: int = 1) -> Amplification:
    """Send `requests` through one client's `policy` to a backend failing at `failure_rate`."""
    rng = random.Random(f"backend:{seed}")

    def succeeds() -> bool:
        return rng.random() >= failure_rate

    attempts = sum(request_attempts(policy, succeeds) for _ in range(requests))
    return Amplification(requests, attempts)


def layered_attempts(layers: int, attempts_per_layer: int, seed: int = 1) -> int:
    """Attempts reaching the bottom when each of `layers` retries its own failed calls.

    Every layer runs its own policy; a call to the layer below fails whenever the
    bottom does, which here is always (a backend failing everything).
    """
    policies = [sre_policy(attempts_per_layer, seed=seed + layer) for layer in range(layers)]
    bottom = 0

    def call(depth: int) -> bool:
        nonlocal bottom
        if depth == layers:
            bottom += 1
            return False
        request_attempts(policies[depth], lambda: call(depth + 1))
        return False

    call(0)
    return bottom
