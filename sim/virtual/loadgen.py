"""The load generator of a real run, in virtual time: one event loop per Locust process.

Under `rtmsim run` every user lives in a Locust process: one gevent loop on one core
that builds, writes, reads and reports every frame its users exchange. What the users
measure is the server's time plus that process's: a reply waits behind the deliveries
read before it, and a closed loop's rate is bounded by the process, not the server.
`--load-generator` puts that process in the model (`model.LoadGenerator` gives its
costs); without it each virtual user is a client on its own device, which is what a
capacity plan wants.

The process is modelled as the loop it is, not as a FIFO of frames, because the order
of its work is what a user's latency is made of (measured 2026-12-07: the client event
log of a real quota-exhaustion run, 10 closed-loop publishers and 20 subscribers in
one process, read in time order):

- one **iteration** handles the sockets that were ready when it began, in that order;
  a socket's reader wakes (`wake_us`) and reads every frame buffered in it when its
  turn comes, those that arrived since the iteration began included (a delivery
  `delivery_us` each, a reply `receive_us`); a socket that became ready meanwhile
  waits for the next iteration;
- the users whose timers expired meanwhile run first in the next iteration, one after
  another (each stamps its request when its turn comes, after the sends of those
  ahead of it, as greenlets run one at a time), and write then; an idle loop sleeps
  until its first timer in whole milliseconds, rounded up (libev's epoll backend,
  `EV_TS_TO_MSEC`), and wakes a little later still (`timer_wake_curve`): a sleep of
  25 ms from an idle loop lasts 25.3 ms here, one of 5.3 ms 6.1 ms, and users whose
  timers fall in the same millisecond run together;
- a reply resumes the user waiting for it only at the end of the iteration (gevent
  switches to it from a callback), after every delivery read in it;
- once a second the event log's greenlet turns the rows logged since into a Parquet
  file (`flush_us` + `flush_row_us` a row: 17 ms for 7,000 rows here), and every
  user of the process waits it out: a stall that reaches the p99 of a light load.

So the acks of publishes that fanned out come back together, after all their
deliveries; the users' next writes leave together; and closed loops bunch into the
convoys that real runs show (3.0 publishes a convoy in a real quota-exhaustion run
with its Locust process pinned, 1.65 in the model of before timers were quantised: a
pass then had fewer frames to read a socket, 1.4 against 2.2, and the publishes
waited on fewer others). A FIFO of frames, the model before, sent each ack right
after its own deliveries and spread the publishers out instead (the same calibration:
publish p99 1.3 ms against 2.9 ms with the loop; 10 ms real: README, Performance).

A core here is the loop's state: the frames waiting in each socket, the sockets of the
iteration under way, one event per socket read. On one machine with the server
(`Model.colocated`) the process has no core of its own: each read and write is also
handed to `steal`, which puts it on the least busy instance core, where it delays the
server's jobs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Protocol

from .model import LoadGenerator, WakeCurve

# What a read reports to: the virtual time its frame has been read (a delivery) or its
# user resumed (a reply).
Done = Callable[[float], None]


class Clock(Protocol):
    now: float

    def call_at(self, t: float, fn: Callable[[], None]) -> None: ...


class ProcessCore:
    """One Locust process's loop: when the frames its users write leave, and when the
    frames they receive have been read."""

    __slots__ = ("_order", "_planned", "_planned_at", "_resume", "_sends", "_sockets",
                 "_state", "_timers", "_turns", "busy_s", "clock", "connect_s", "delivery_s",
                 "flush_row_s", "flush_s", "free_at", "receive_s", "rows", "send_s", "steal",
                 "timer_s", "timer_wake", "wake_cpu", "wake_s")

    def __init__(self, costs: LoadGenerator, clock: Clock,
                 steal: Callable[[float, float], None] | None = None,
                 wake_cpu: Callable[[float], float] | None = None) -> None:
        self.send_s = costs.send_us / 1e6
        self.connect_s = (costs.send_us + costs.connect_us) / 1e6  # an upgrade's write
        self.receive_s = costs.receive_us / 1e6
        self.delivery_s = costs.delivery_us / 1e6
        self.wake_s = costs.wake_us / 1e6
        self.flush_s = costs.flush_us / 1e6
        self.flush_row_s = costs.flush_row_us / 1e6
        self.timer_s = costs.timer_ms / 1e3
        self.timer_wake = WakeCurve(costs.timer_wake_curve)
        self.rows = 0  # logged since the last flush (a row a frame read)
        self.clock = clock
        self.free_at = 0.0  # when the work given so far ends (idle: in the past)
        self.busy_s = 0.0  # CPU given
        self.steal = steal  # (start, seconds): the same work on a shared core
        self._sockets: dict[Any, list[tuple[float, Done, bool]]] = {}  # frames unread
        self._order: list[Any] = []  # the iteration's sockets still to read, reversed
        self._resume: list[Done] = []  # the iteration's replies' users
        self._sends: list[tuple[float, Done]] = []  # (cost, done): for the next iteration
        self._timers: list[Callable[[], None]] = []  # users to run first in the next one
        self._turns: list[Callable[[], None]] = []  # those of the iteration under way
        self._state = IDLE
        self._planned = 0  # which call of `_begin` is the one due (WAKING)
        self._planned_at = 0.0  # and when
        # An idle core runs its first work slower (`Model.wake_cpu_curve`): seconds
        # idle -> extra CPU seconds.
        self.wake_cpu = wake_cpu

    def write(self, done: Done, cost: float | None = None) -> None:
        """A user writes a frame now (or a greenlet does `cost` of work): `done(t)` with
        the time it is done (an idle loop does it at once; a busy one first thing in
        its next iteration)."""
        now = self.clock.now
        cost = self.send_s if cost is None else cost
        if self._state == IDLE and self.free_at <= now:
            cost += self._woken(now)
            self._work(now, cost)
            self.free_at = now + cost
            done(self.free_at)
            return
        self._sends.append((cost, done))
        self._wake(now)

    def timer(self, fn: Callable[[], None]) -> None:
        """A greenlet's timer has expired now: `fn` runs when the loop runs it (a busy
        loop first thing in its next iteration; an idle one when its wait for the
        first timer, in whole `timer_s`, ends, or sooner if a frame wakes it)."""
        self._timers.append(fn)
        if self._state != IDLE:
            return  # it runs in the iteration due, or the next one
        now = self.clock.now
        if self.free_at < now and self.timer_s > 0:
            idle = now - self.free_at  # since the loop went to sleep, the timer's wait
            waited = math.ceil(idle / self.timer_s - 1e-9) * self.timer_s
            self._wake(self.free_at + waited + self.timer_wake(waited))
        else:
            self._wake(now)

    @property
    def flushes(self) -> bool:
        return self.flush_s > 0 or self.flush_row_s > 0

    def flush(self) -> None:
        """The event log's flush: its greenlet's timer fired."""
        self.timer(self._flush)

    def _flush(self) -> None:
        """The rows logged since the last flush, written out."""
        cost = self.flush_s + self.flush_row_s * self.rows
        self.rows = 0
        self.write(_nothing, cost)

    def read(self, key: Any, cost: float, done: Done, reply: bool) -> None:
        """A frame for the socket `key` reaches the process now: `done(t)` is called
        with the time it has been read (`reply`: the time its user resumes)."""
        self.read_batch([(key, cost, done, reply)])

    def read_batch(self, items: list[tuple[Any, float, Done, bool]]) -> None:
        """`read` of frames that reach the process together."""
        sockets = self._sockets
        for key, cost, done, reply in items:
            frames = sockets.get(key)
            if frames is None:
                sockets[key] = [(cost, done, reply)]
            else:
                frames.append((cost, done, reply))
        self._wake(self.clock.now)

    def _wake(self, at: float) -> None:
        """Begin an iteration at `at` (or once the work under way ends), unless one
        is under way or due sooner."""
        at = max(at, self.free_at)
        if self._state == IDLE or (self._state == WAKING and at < self._planned_at):
            self._state = WAKING
            self._planned += 1
            self._planned_at = at
            self.clock.call_at(at, functools.partial(self._begin, self._planned))

    def _begin(self, planned: int) -> None:
        """An iteration: the users whose timers expired, the waiting writes, then the
        sockets ready now, in order."""
        if planned != self._planned:  # a frame woke the loop before its timer
            return
        now = self.clock.now
        if self.free_at > now:  # a user wrote at the end of the last one
            self._state = IDLE
            self._wake(self.free_at)
            return
        self._state = BUSY
        self._order = list(reversed(self._sockets))  # what the poll found ready
        t = self._write_out(now, now + self._woken(now))
        self._turns, self._timers = self._timers[::-1], []
        self.clock.call_at(t, self._timer_turn)

    def _timer_turn(self) -> None:
        """The next user whose timer expired runs (it stamps its request now) and
        writes; the next one runs when it is done, as greenlets do one at a time; the
        sockets' turns follow the last."""
        now = self.clock.now
        if not self._turns:
            self._step()
            return
        self._turns.pop()()  # its writes join `_sends`: the loop is busy
        self.clock.call_at(self._write_out(now, now), self._timer_turn)

    def _write_out(self, now: float, t: float) -> float:
        """The queued writes, one after another from `t` (the loop busy since `now`);
        when they are done."""
        for cost, done in self._sends:
            t += cost
            done(t)
        self._sends = []
        self._work(now, t - now)
        self.free_at = t
        return t

    def _step(self) -> None:
        """The next socket's turn: its reader reads all it holds now."""
        now = self.clock.now
        order = self._order
        while order:
            frames = self._sockets.pop(order.pop(), None)
            if frames is None:
                continue
            t = now + self.wake_s
            self.rows += len(frames)
            for cost, _, _ in frames:
                t += cost
            for _, done, reply in frames:
                if reply:
                    self._resume.append(done)
                else:
                    done(t)
            self._work(now, t - now)
            self.free_at = t
            self.clock.call_at(t, self._step)
            return
        # The iteration is over: its replies' users resume, and they may write at
        # once (an idle loop); what is left begins the next iteration.
        self._state = IDLE
        resume, self._resume = self._resume, []
        for done in resume:
            done(now)
        if self._sockets or self._sends or self._timers:
            self._wake(now)

    def _woken(self, now: float) -> float:
        """The extra CPU of work that finds the loop idle since `free_at`."""
        idle = now - self.free_at
        return self.wake_cpu(idle) if self.wake_cpu is not None and idle > 0 else 0.0

    def _work(self, start: float, seconds: float) -> None:
        self.busy_s += seconds
        if self.steal is not None and seconds > 0:
            self.steal(start, seconds)


IDLE, WAKING, BUSY = 0, 1, 2


def _nothing(_t: float) -> None:
    return None


def process_cores(costs: LoadGenerator, processes: int, clock: Clock,
                  steal: Callable[[float, float], None] | None = None,
                  wake_cpu: Callable[[float], float] | None = None) -> list[ProcessCore]:
    """The cores of `processes` load processes with these costs."""
    return [ProcessCore(costs, clock, steal, wake_cpu) for _ in range(max(1, processes))]
