"""Brooker's optimistic-concurrency contention model, driven by our backoff classes.

The model behind the charts of "Exponential Backoff And Jitter" (AWS Architecture Blog,
2015): N clients each update one versioned row exactly once (read the version, write
with it; the write fails if another client got in first), every message takes
|Normal(10 ms, 2 ms)|, and a failed write is followed by a backoff before the next read.
Reproducing his figures with `loadtests.backoff` unchanged is the evidence that our
strategies are the ones the article compares.

Attempt numbering, mapped rather than guessed: his client increments its counter before
computing the wait, so after the first failed write n = 1 and exponential backoff waits
min(cap, base * 2 ** 1) = 2 * base. Our `Backoff.delay(attempt)` takes the number of
attempts already made and waits min(cap, base * 2 ** (attempt - 1)), so `delay(1)` is
`base`. His n is therefore our `attempt = n + 1`: exact for none, exponential, full and
equal jitter. Decorrelated jitter ignores the number except that `delay(1)` starts a new
sequence; with n + 1 >= 2 it never restarts, and each client's strategy is fresh (its
previous sleep is `base`), which is exactly his per-client state.

"Calls" are write attempts reaching the server; "time" is when the last client has its
successful write's reply, which is when the event queue runs dry.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Generator
from dataclasses import dataclass

import simpy

from loadtests.backoff import Backoff, make_backoff

BASE_S = 0.005
CAP_S = 2.0
NET_MEAN_S = 0.010
NET_SD_S = 0.002
# The strategies of the article, by our names.
STRATEGIES = ("none", "exponential", "full_jitter", "equal_jitter", "decorrelated_jitter")


@dataclass(frozen=True, slots=True)
class OccTrial:
    """One trial's outcome."""

    calls: int  # write attempts that reached the server
    completion_s: float  # when the last client's successful write was answered


@dataclass(frozen=True, slots=True)
class OccResult:
    """Means over trials, and their standard errors (to size the trial count)."""

    strategy: str
    clients: int
    trials: int
    mean_calls: float
    mean_completion_s: float
    sem_calls: float
    sem_completion_s: float


class _Row:
    """The server's single row: a version that a write with the current one bumps."""

    __slots__ = ("version", "writes")

    def __init__(self) -> None:
        self.version = 0
        self.writes = 0

    def write(self, version: int) -> bool:
        self.writes += 1
        if version != self.version:
            return False
        self.version += 1
        return True


def _net(rng: random.Random) -> float:
    return abs(rng.normalvariate(NET_MEAN_S, NET_SD_S))


def brooker_backoff(backoff: Backoff, n: int) -> float:
    """Brooker's wait once his counter is `n` (1 after the first failed write).

    His exponent is n; ours is attempt - 1 (`delay(1)` waits `base`): attempt = n + 1.
    """
    return backoff.delay(n + 1)


def _client(env: simpy.Environment, row: _Row, backoff: Backoff,
            rng: random.Random) -> Generator[simpy.Event, None, None]:
    failures = 0  # Brooker's attempt counter n
    yield env.timeout(_net(rng))  # the first read request
    while True:
        version = row.version  # the read, answered ...
        yield env.timeout(_net(rng))  # ... one network delay later
        yield env.timeout(_net(rng))  # the write request
        ok = row.write(version)
        yield env.timeout(_net(rng))  # the write's reply
        if ok:
            return
        failures += 1
        yield env.timeout(_net(rng) + brooker_backoff(backoff, failures))


def occ_trial(strategy: str, clients: int, rng: random.Random) -> OccTrial:
    """One trial: all `clients` start at time 0 and each updates the row once."""
    env = simpy.Environment()
    row = _Row()
    for _ in range(clients):
        env.process(_client(env, row, make_backoff(strategy, BASE_S, CAP_S, rng), rng))
    env.run()
    return OccTrial(row.writes, env.now)


def occ_model(strategy: str, clients: int = 100, trials: int = 100,
              seed: int = 1) -> OccResult:
    """Means over `trials` independent trials, each seeded from (seed, strategy, trial)."""
    runs = [occ_trial(strategy, clients, random.Random(f"occ:{seed}:{strategy}:{trial}"))
            for trial in range(trials)]
    calls = [run.calls for run in runs]
    times = [run.completion_s for run in runs]
    return OccResult(strategy, clients, trials, statistics.fmean(calls),
                     statistics.fmean(times), _sem(calls), _sem(times))


def _sem(values: list[float] | list[int]) -> float:
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
