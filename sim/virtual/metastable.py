"""Bronson et al.'s retry metastability (HotOS 2021, section 2.1) as a SimPy queue.

One server works through a FIFO queue at a fixed capacity (300/s: 1/300 s of work per
request, one at a time). Clients arrive as a Poisson stream, wait 1 s for an answer and
retry once when none came; that decision is our default policy's (`after_error` with
`max_attempts=2` and no backoff), fed the timeout as `backend_error`, the transient
code it retries. The server does the work of every request it dequeues, even one whose
client stopped waiting: that wasted work is what keeps the overload going.

The trigger is a 10 s outage. In the default `stall` mode the server serves nothing
during it while requests keep arriving (a stuck database, or TCP holding the requests
until the link heals): when it ends, the backlog is all stale, every new request times
out behind it and is retried, and the load sticks near twice the offered load with no
goodput, at any offered load above capacity / 2. In `drop` mode the requests of the
outage are lost instead; then the only spike is the retries of its last second, which
at 280/s lifts the queue to just under the timeout, so whether it sticks is a matter
of chance: the published mechanism needs the backlog.

Standalone for now: the full virtual engine will run this as a publish workload against
the real server core, with its per-operation costs in place of the fixed service time.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Literal

import simpy

from loadtests.retry import DefaultPolicy

TIMEOUT_CODE = "backend_error"  # how a timeout reaches the policy: transient, retried


@dataclass(frozen=True, slots=True)
class MetastableSetup:
    """The published example's numbers; the windows are where the rates are read."""

    offered_per_s: float = 280.0
    capacity_per_s: float = 300.0
    timeout_s: float = 1.0
    max_attempts: int = 2  # one retry
    outage_start_s: float = 30.0
    outage_s: float = 10.0
    # Long enough for 140/s to drain its backlog: stale work clears at only
    # capacity - 2 * offered = 20/s while every request still times out (about 2 min).
    duration_s: float = 300.0
    before_s: float = 10.0  # the window read before the outage ...
    after_s: float = 60.0  # ... and the one at the end of the run, once settled
    outage: Literal["stall", "drop"] = "stall"
    seed: int = 1

    @property
    def outage_end_s(self) -> float:
        return self.outage_start_s + self.outage_s

    def windows(self) -> dict[str, tuple[float, float]]:
        """Where the rates are read: before the outage, during it, and settled after."""
        return {"before": (max(0.0, self.outage_start_s - self.before_s),
                           self.outage_start_s),
                "during": (self.outage_start_s, self.outage_end_s),
                "after": (max(self.outage_end_s, self.duration_s - self.after_s),
                          self.duration_s)}


@dataclass(slots=True)
class _Counts:
    """Timestamps of what the windows count."""

    offered: list[float] = field(default_factory=list)  # first attempts sent
    retries: list[float] = field(default_factory=list)  # retries sent
    goodput: list[float] = field(default_factory=list)  # answers received in time


@dataclass(frozen=True, slots=True)
class WindowRates:
    """Per-second rates in one window, of what the clients sent and got."""

    start_s: float
    end_s: float
    offered_per_s: float  # first attempts
    attempts_per_s: float  # first attempts and retries, lost ones included
    goodput_per_s: float  # answers that came before their timeout


class _Attempt:
    __slots__ = ("answered", "deadline_s")

    def __init__(self, deadline_s: float) -> None:
        self.deadline_s = deadline_s
        self.answered = False


class _FifoServer:
    """One worker, a FIFO queue, a fixed service time; it serves stale requests too."""

    def __init__(self, env: simpy.Environment, setup: MetastableSetup,
                 counts: _Counts) -> None:
        self.env, self.setup, self.counts = env, setup, counts
        self.queue: deque[_Attempt] = deque()
        self._wakeup: simpy.Event | None = None
        env.process(self._serve())

    def in_outage(self) -> bool:
        return self.setup.outage_start_s <= self.env.now < self.setup.outage_end_s

    def submit(self, attempt: _Attempt) -> None:
        if self.setup.outage == "drop" and self.in_outage():
            return  # lost on the way
        self.queue.append(attempt)
        if self._wakeup is not None:
            self._wakeup.succeed()
            self._wakeup = None

    def _serve(self) -> Generator[simpy.Event, None, None]:
        service_s = 1.0 / self.setup.capacity_per_s
        while True:
            if self.in_outage():
                yield self.env.timeout(self.setup.outage_end_s - self.env.now)
            if not self.queue:
                self._wakeup = self.env.event()
                yield self._wakeup
                continue
            attempt = self.queue.popleft()
            yield self.env.timeout(service_s)
            if self.env.now <= attempt.deadline_s and not self.in_outage():
                attempt.answered = True
                self.counts.goodput.append(self.env.now)


def _request(env: simpy.Environment, server: _FifoServer, policy: DefaultPolicy,
             counts: _Counts) -> Generator[simpy.Event, None, None]:
    number = 1
    while True:
        policy.on_request(is_retry=number > 1)
        (counts.offered if number == 1 else counts.retries).append(env.now)
        attempt = _Attempt(env.now + server.setup.timeout_s)
        server.submit(attempt)
        yield env.timeout(server.setup.timeout_s)  # an answer before now was in time
        policy.on_result(attempt.answered)
        if attempt.answered:
            return
        decision = policy.after_error("publish", TIMEOUT_CODE, number)
        if not decision.retry:
            return
        if decision.delay_s > 0:
            yield env.timeout(decision.delay_s)
        number += 1


def _arrivals(env: simpy.Environment, server: _FifoServer, policy: DefaultPolicy,
              counts: _Counts, rng: random.Random) -> Generator[simpy.Event, None, None]:
    while True:
        yield env.timeout(rng.expovariate(server.setup.offered_per_s))
        env.process(_request(env, server, policy, counts))


@dataclass(frozen=True, slots=True)
class MetastableResult:
    """The rates per window, and how long goodput took to come back after the outage."""

    setup: MetastableSetup
    windows: dict[str, WindowRates]
    recovered_after_s: float | None  # None: goodput was still down when the run ended


def metastable_model(setup: MetastableSetup) -> MetastableResult:
    """Run the example once; deterministic for `setup.seed`."""
    env = simpy.Environment()
    counts = _Counts()
    server = _FifoServer(env, setup, counts)
    policy = DefaultPolicy(rng=random.Random(f"policy:{setup.seed}"), backoff="none",
                           max_attempts=setup.max_attempts)
    env.process(_arrivals(env, server, policy, counts,
                          random.Random(f"arrivals:{setup.seed}")))
    env.run(until=setup.duration_s)
    windows = {name: _rates(counts, start, end)
               for name, (start, end) in setup.windows().items()}
    return MetastableResult(setup, windows, _recovered_after(setup, counts.goodput))


def _rates(counts: _Counts, start_s: float, end_s: float) -> WindowRates:
    def per_s(times: list[float]) -> float:
        return sum(start_s <= t < end_s for t in times) / (end_s - start_s)

    offered = per_s(counts.offered)
    return WindowRates(start_s, end_s, offered, offered + per_s(counts.retries),
                       per_s(counts.goodput))


def _recovered_after(setup: MetastableSetup, goodput: list[float]) -> float | None:
    """Seconds from the outage's end to the end of the last second with goodput under
    half the offered rate (a threshold Poisson noise does not cross at these rates)."""
    seconds = math.floor(setup.duration_s - setup.outage_end_s)
    per_second = [0] * seconds
    for t in goodput:
        index = math.floor(t - setup.outage_end_s)
        if 0 <= index < seconds:
            per_second[index] += 1
    low = [i for i, n in enumerate(per_second) if n < setup.offered_per_s / 2]
    if not low:
        return 0.0
    return None if low[-1] == seconds - 1 else float(low[-1] + 1)
