"""The virtual-time engine: a scenario's server instances and users on one SimPy clock.

SimPy's `Environment` is the event queue (its `Timeout` events, with callbacks, not
processes: a process per user would add a generator and two events per intent). The
server is the real core (`instance.Instance`), the users the real behaviours driven by
`clients.VirtualClient`; the model (`model.Model`) gives only time: CPU per operation,
network draws, the listen backlog.

Virtual unix time is `epoch + env.now`: the run directory reads like a real run's.
"""

from __future__ import annotations

import bisect
import collections
import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import simpy

from loadtests.eventlog import FLUSH_S, EventLog
from server.actions import Deliver
from server.jsonenc import loads

from .instance import COUNTED, Instance
from .loadgen import ProcessCore, process_cores
from .model import LoadGenerator, Model, WakeCurve


class Timer:
    """A scheduled callback that can be cancelled (token expiry, a wake)."""

    __slots__ = ("cancelled", "fn")

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn
        self.cancelled = False

    def __call__(self, _event: Any = None) -> None:
        if not self.cancelled:
            self.fn()


class HeapQueue:
    """A plain event heap with SimPy's `Environment` surface that the engine uses
    (`now`, `run(until)`): (time, sequence, callback) tuples, nothing per event but the
    tuple. `Engine(queue="simpy")` runs the same engine on SimPy's queue instead."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def call_at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn))

    def run(self, until: float) -> int:
        """Run every event up to `until`; how many ran."""
        heap = self._heap
        pop = heapq.heappop
        n = 0
        while heap and heap[0][0] <= until:
            t, _, fn = pop(heap)
            self.now = t
            fn()
            n += 1
        self.now = until
        return n


class SimPyQueue:
    """SimPy's `Environment` as the event queue: a `Timeout` with a callback per event."""

    def __init__(self) -> None:
        self.env = simpy.Environment()

    @property
    def now(self) -> float:
        return self.env.now

    def call_at(self, t: float, fn: Callable[[], None]) -> None:
        self.env.timeout(max(0.0, t - self.env.now)).callbacks.append(lambda _e: fn())

    def run(self, until: float) -> int:
        before = len(self.env._queue)
        self.env.run(until=until)
        return max(0, before - len(self.env._queue))  # an estimate: SimPy keeps no count


QUEUES = {"heap": HeapQueue, "simpy": SimPyQueue}


class Timeouts:
    """Every request's deadline, in one FIFO per timeout: requests that wait the same
    timeout have their deadlines in the order they were sent, so one pending event per
    lane (the head's deadline) replaces one heap entry per request."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lanes: dict[float, _Lane] = {}

    def add(self, pending: Any, on_timeout: Callable[[Any], None],
            timeout_s: float) -> None:
        lane = self.lanes.get(timeout_s)
        if lane is None:
            lane = self.lanes[timeout_s] = _Lane(self.engine)
        lane.add(pending, on_timeout)


class _Lane:
    """The deadlines of one timeout, in send order."""

    __slots__ = ("armed", "engine", "queue")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue: collections.deque[tuple[float, Any, Callable[[Any], None]]] = \
            collections.deque()
        self.armed = False

    def add(self, pending: Any, on_timeout: Callable[[Any], None]) -> None:
        self.queue.append((pending.deadline, pending, on_timeout))
        if not self.armed:
            self._arm()

    def _arm(self) -> None:
        while self.queue and self.queue[0][1].done:
            self.queue.popleft()
        if not self.queue:
            self.armed = False
            return
        self.armed = True
        self.engine.env.call_at(self.queue[0][0], self._fire)

    def _fire(self) -> None:
        now = self.engine.env.now
        queue = self.queue
        while queue and queue[0][0] <= now + 1e-9:
            _, pending, on_timeout = queue.popleft()
            if not pending.done:
                on_timeout(pending)
        self._arm()


class Engine:
    """The clock, the network, the event log and the instances of one virtual run."""

    def __init__(self, model: Model, *, epoch: float, origin: float, seed: int,
                 log: EventLog, timeout_s: float, log_deliveries: bool = True,
                 queue: str = "heap", load_generator: int = 0,
                 load_costs: LoadGenerator | None = None) -> None:
        """`load_generator`: how many load processes to model (0: none, each user a
        client on its own device), with `load_costs` (default: the model's Locust
        process, `model.load_generator`)."""
        self.env: HeapQueue | SimPyQueue = QUEUES[queue]()
        self.model = model
        self.epoch = epoch
        self.origin = origin
        self.log = log
        self.timeout_s = timeout_s
        self.log_deliveries = log_deliveries
        self.np_rng = np.random.default_rng(seed)
        net = model.network
        self._mu = math.log(net.median_ms / 1000.0)
        self._sigma = net.sigma
        self._cap = net.cap_ms / 1000.0
        self.timeouts = Timeouts(self)
        self._draws: list[float] = []
        self._draw_i = 0
        self.delivery_rng = np.random.default_rng([seed, 1])
        self._delivery_draws: list[float] = []
        self._delivery_i = 0
        self._fanout: _Fanout | None = None  # the last fan-out's frame, read
        # how much later than its publish a mirror's copy of a message was made
        # (`cluster.MIRROR_SPREAD_S`): its deliveries' latency counts from then
        self.ts_shift = 0.0
        self.instances: list[Instance] = []
        self.deliveries = 0  # delivered frames (message and direct)
        self.events_run = 0  # events the queue has run (progress: events/s)
        self._latency_counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        steal = self.steal if model.colocated else None
        self.cores = process_cores(load_costs or model.load_generator, load_generator,
                                   self.env, steal, WakeCurve(model.wake_cpu_curve)
                                   ) if load_generator else []
        if any(core.flushes for core in self.cores):
            self.env.call_at(FLUSH_S, self._flush_logs)

    def _flush_logs(self) -> None:
        """Each load process's event log flushes, once a `FLUSH_S` (its greenlet)."""
        for core in self.cores:
            core.flush()
        self.env.call_at(self.env.now + FLUSH_S, self._flush_logs)

    # -- time -------------------------------------------------------------------------------

    def clock(self) -> float:
        """Virtual unix seconds (the core's clock)."""
        return self.epoch + self.env.now

    now = clock

    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Call `fn` at virtual time `t` (seconds since the epoch, not unix)."""
        self.env.call_at(t, fn)

    def timer(self, t: float, fn: Callable[[], None]) -> Timer:
        """`at`, cancellable."""
        timer = Timer(fn)
        self.at(t, timer)
        return timer

    def at_unix(self, t: float, fn: Callable[[], None]) -> None:
        self.at(t - self.epoch, fn)

    def after(self, seconds: float, fn: Callable[[], None]) -> None:
        self.at(self.env.now + seconds, fn)

    def soon(self, fn: Callable[[], None]) -> None:
        self.at(self.env.now, fn)

    # -- one machine: other processes on the instances' cores -------------------------------

    def host_core(self) -> Instance:
        """The instance core another process's work lands on: the least busy (the
        scheduler wakes a runnable process on an idle CPU), the first on a tie."""
        return min(self.instances, key=lambda i: (len(i.queue), max(i.free_at, self.env.now)))

    def steal(self, at: float, seconds: float) -> None:
        """Another process's `seconds` of CPU from `at`, on an instance core."""
        if self.instances and seconds > 0:
            self.env.call_at(max(at, self.env.now), lambda: self.host_core().lend(seconds))

    def fresh_token(self, user: str) -> str | None:
        """`FreshToken`: as under `rtmsim run`, whose swarm has no token endpoint."""
        return None

    # -- the network --------------------------------------------------------------------------

    def one_way(self) -> float:
        """One network draw, seconds (from a block drawn by numpy, refilled as used)."""
        i = self._draw_i
        if i >= len(self._draws):
            self._refill()
            i = 0
        self._draw_i = i + 1
        return self._draws[i]

    def _refill(self) -> None:
        if self._sigma == 0:
            self._draws = [math.exp(self._mu)] * DRAW_BLOCK
        else:
            block = np.exp(self.np_rng.normal(self._mu, self._sigma, DRAW_BLOCK))
            self._draws = np.minimum(block, self._cap).tolist()
        self._draw_i = 0

    def to_server(self, fn: Callable[[], None], core: ProcessCore | None = None,
                  cost: float | None = None) -> None:
        """A client frame leaves now (or, from a load-generator process, once the
        process has written it, `cost` by default a send's) and reaches its instance a
        draw later."""
        if core is None:
            self.env.call_at(self.env.now + self.one_way(), fn)
            return
        call_at, one_way = self.env.call_at, self.one_way
        core.write(lambda leaves: call_at(leaves + one_way(), fn), cost)

    def to_client(self, t: float, fn: Callable[[], None], core: ProcessCore | None = None,
                  cost: float | None = None, key: Any = None, reply: bool = True) -> None:
        """A server frame written at virtual time `t` reaches its client a draw later
        (in a load-generator process, `fn` runs once the process has read it from the
        socket `key`: `cost`, by default a reply's; a `reply` resumes its user only at
        the end of the loop's iteration, see `loadgen`)."""
        arrives = t + self.one_way()
        if core is None:
            self.env.call_at(arrives, fn)
            return
        read_s = core.receive_s if cost is None else cost
        call_at = self.env.call_at
        self.env.call_at(arrives, lambda: core.read(fn if key is None else key, read_s,
                                                    lambda done: call_at(done, fn), reply))

    def process_core(self, index: int) -> ProcessCore | None:
        """The load-generator core of user number `index` (Locust hands users to its
        processes in turn), or None when the run models no load generator."""
        cores = self.cores
        return cores[index % len(cores)] if cores else None

    # -- bulk deliveries ----------------------------------------------------------------------

    @property
    def latency_hist(self) -> np.ndarray:
        """Deliveries by latency, in the bins of `LATENCY_BOUNDS_MS` (one more at the
        end for those above the last bound)."""
        return np.array(self._latency_counts, dtype=np.int64)

    def delivery_draws(self, n: int) -> list[float]:
        """The next `n` network draws of deliveries (seconds), from a block drawn by
        numpy: a fan-out reaches about 5 clients an instance at a million clients, and
        numpy's calls per fan-out cost more than the arithmetic. The delivery rng's
        stream is the one a draw per fan-out made (the same normals, in order)."""
        i = self._delivery_i
        draws = self._delivery_draws
        if i + n > len(draws):
            block = np.exp(self.delivery_rng.normal(self._mu, self._sigma,
                                                    max(DRAW_BLOCK, n)))
            draws = self._delivery_draws = draws[i:] + np.minimum(block, self._cap).tolist()
            i = 0
        self._delivery_i = i + n
        return draws[i:i + n]

    def delivered(self, d: Deliver, targets: tuple[Any, ...], copies: list[int] | None,
                  start: float, per: float) -> None:
        """One fan-out: counted, and its frames' arrival times drawn (recipient i's
        frame is written at `start + per * i`, i from 1, and arrives a draw later)."""
        if d.kind not in COUNTED:
            frame = loads(d.payload)
            end = start + per * len(targets)
            core = targets[0].transport.core
            self.to_client(end, lambda: [c.transport.presence(frame) for c in targets
                                         if c.close_code is None],
                           core, None if core is None else core.delivery_s * len(targets),
                           reply=False)
            return
        if copies is not None:
            targets = tuple(t for t, k in zip(targets, copies, strict=True) for _ in range(k))
        n = len(targets)
        self.deliveries += n
        draws = self.delivery_draws(n) if self._sigma else [math.exp(self._mu)] * n
        fanout = self._fanout
        if fanout is None or fanout.payload != d.payload or fanout.kind != d.kind:
            # The same message reaches every instance (a Redis hop): read its frame once.
            fanout = self._fanout = _Fanout(d)
        ts = fanout.ts
        if ts is not None:
            ts += self.ts_shift
        if not self.cores and not self.log_deliveries and ts is not None:
            # Only the histogram (a scale run): each latency in one expression, no lists.
            counts, bounds, epoch, bisect_left = self._latency_counts, _BOUNDS, self.epoch, \
                bisect.bisect_left
            for i, draw in enumerate(draws, 1):
                counts[bisect_left(bounds, (start + per * i + draw + epoch - ts) * 1000.0)] += 1
            return
        arrive = [start + per * i + draw for i, draw in enumerate(draws, 1)]
        if not self.cores:
            self._read(fanout, targets, arrive, self.ts_shift)
            return
        by_core: dict[int, list[int]] = {}
        for i, conn in enumerate(targets):
            by_core.setdefault(id(conn.transport.core), []).append(i)
        for picks in by_core.values():
            order = sorted(picks, key=arrive.__getitem__)
            _Landing(self, fanout, [targets[i] for i in order],
                     [arrive[i] for i in order], self.ts_shift).schedule()

    def _read(self, fanout: _Fanout, targets: Sequence[Any], read: list[float],
              shift: float = 0.0) -> None:
        """Deliveries read by their clients at virtual times `read`: the latency
        histogram, and a log row each. (In plain floats: numpy's calls cost more than
        the arithmetic for the handful of recipients of a fan-out on one instance.)"""
        epoch = self.epoch
        times = [t + epoch for t in read]
        ts = fanout.ts
        if ts is not None:
            ts += shift
            lats: list[float | None] = [(t - ts) * 1000.0 for t in times]
            counts, bounds = self._latency_counts, _BOUNDS
            for lat in lats:
                counts[bisect.bisect_left(bounds, lat)] += 1
        else:
            lats = [None] * len(times)
        if not self.log_deliveries:
            return
        row = self.log.row
        kind, nbytes, channel = fanout.kind, fanout.nbytes, fanout.channel
        msg_id, sender = fanout.msg_id, fanout.sender
        for conn, t, lat in zip(targets, times, lats, strict=True):
            c = conn.transport
            row(t, c.user, c.user_class, "deliver", kind, lat, 1, nbytes, channel, msg_id,
                sender, None, c.policy)


class _Fanout:
    """What every frame of one fan-out shares (read once from its payload)."""

    __slots__ = ("channel", "kind", "msg_id", "nbytes", "payload", "sender", "ts")

    def __init__(self, d: Deliver) -> None:
        self.payload = d.payload
        frame = loads(d.payload)
        data = frame.get("data")
        env_ok = isinstance(data, dict) and "id" in data
        self.msg_id = data["id"] if env_ok else ""
        self.sender = data.get("pub", "") if env_ok else frame.get("from", "")
        ts = data.get("ts") if env_ok else None
        self.ts = ts if isinstance(ts, int | float) else None
        self.channel = frame.get("channel", "")
        self.nbytes = len(d.payload)
        self.kind = d.kind


class _Landing:
    """A fan-out's frames reaching one load-generator process, in arrival order: those
    that arrive before the first of them could have been read (a wake and a read) in
    one event, as frames the loop finds together (the frames of one fan-out arrive
    within a millisecond or so; a far network draw waits for its own event, so it
    does not hold the process's clock ahead of other frames, and no frame is read
    before it arrived)."""

    __slots__ = ("arrive", "engine", "fanout", "i", "shift", "targets")

    def __init__(self, engine: Engine, fanout: _Fanout, targets: list[Any],
                 arrive: list[float], shift: float = 0.0) -> None:
        self.engine = engine
        self.fanout = fanout
        self.targets = targets
        self.arrive = arrive
        self.shift = shift
        self.i = 0

    def schedule(self) -> None:
        self.engine.env.call_at(self.arrive[self.i], self._land)

    def _land(self) -> None:
        arrive, i = self.arrive, self.i
        core = self.targets[i].transport.core
        until = self.engine.env.now + min(LANDING_HORIZON_S, core.wake_s + core.delivery_s)
        j = bisect.bisect_right(arrive, until, lo=i)
        targets = self.targets[i:j]
        engine, fanout, shift = self.engine, self.fanout, self.shift
        core.read_batch([(c.transport, core.delivery_s,
                          lambda t, c=c: engine._read(fanout, (c,), [t], shift), False)
                         for c in targets])
        self.i = j
        if j < len(arrive):
            self.schedule()


LANDING_HORIZON_S = 0.002


DRAW_BLOCK = 65536  # network draws made at a time
# Delivery latency histogram bounds (ms), log-spaced: what a run too big for rows keeps.
LATENCY_BOUNDS_MS = np.round(np.logspace(-2, 5, 141), 6)
_BOUNDS = LATENCY_BOUNDS_MS.tolist()  # for bisect: np.searchsorted's bins, side "left"

