"""The calibration steps: each loads the server with one kind of operation and
returns `Row`s (operations done, server CPU used; the load's own CPU for the record
and for the raw client's costs, `rawclient.py`), one per kind of phase.

Between steps every socket is closed and the server is seen to have forgotten it
(its `/v1/usage` counts no connection), so no step pays for the last one's cleanup.
A phase that ends on the server's side later than on ours (a disconnect, a kick)
ends at that same check: the REST reads it costs are an operation of their own
(`rest_get`), measured by their own step.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from loadtests.benchconfig import PUBLISHABLE_KEY, SECRET, SECRET_KEY_ID
from loadtests.rawws import SubscribeError, Subscriber
from server.auth import mint_token
from server.config import Key

from .clients import (
    Peer,
    Requester,
    address,
    close_clients,
    open_clients,
    run_each,
    run_for,
)
from .fit import Row
from .servers import CalibrationError, Served, core_seconds

SETTLE_POLLS = 14  # 1 ms, 2 ms, ... 8 s in all
PAYLOAD = orjson.dumps({"text": "x" * 53})  # the benchmarks' 64-byte `data`
TOKEN_TTL_S = 3600
SIGNING_KEY = Key(id=SECRET_KEY_ID, secret=SECRET)
# The nuisance operations: costs the fit needs for the phases that include them,
# not part of the model.
NUISANCE = ("rest_get", "rest_kick")


@dataclass(frozen=True)
class Scale:
    """How much each step does. The defaults take about a minute in all."""

    seconds: float = 3.0  # per step
    sockets: int = 4  # closed loops in flight in a request step
    turn_sockets: int = 16  # in flight in the turn steps (turns.py), the server saturated
    batch: int = 100  # connections opened, then closed, per connect phase
    upgrades_in_flight: int = 4
    channels: int = 50  # subscribed, then unsubscribed, per socket and phase
    fanout: tuple[int, ...] = (0, 10, 50)  # subscribers of the publish steps
    kicks: tuple[int, ...] = (4, 32)  # connections of the kicked peer
    latency_samples: int = 2000

    @classmethod
    def for_seconds(cls, seconds: float) -> Scale:
        """Below a second per step (a test), smaller batches so each phase still runs."""
        if seconds >= 1:
            return cls(seconds=seconds)
        return cls(seconds=seconds, batch=20, channels=10, latency_samples=200)


@dataclass
class Meter:
    """Server CPU between two readings, the server core's (busy, interrupts), and the
    load's CPU: this process's, where the raw clients run (all threads; the others
    apart, as a check that they idle)."""

    server: Served
    core: int | None
    idle_per_s: float = 0.0

    def read(self) -> tuple[float, float, float, float, float, float]:
        """(wall, server CPU, server core busy, its interrupts, load CPU, load CPU of
        the threads other than this one), seconds."""
        busy, irq = core_seconds(self.core) if self.core is not None else (0.0, 0.0)
        # process_time (CLOCK_PROCESS_CPUTIME_ID, all threads, ns-precise even for the
        # running one): the clock bench/planload.py reads for its load process
        return (time.perf_counter(), self.server.cpu_s(), busy, irq, time.process_time(),
                other_threads_cpu_s())


def other_threads_cpu_s() -> float:
    """CPU seconds run by this process's threads other than the calling one (the event
    loop's): uvloop's libuv workers, pyarrow's jemalloc thread. From schedstat, which is
    exact for a thread that is not running, as these should not be during a step."""
    me = threading.get_native_id()
    total = 0
    for task in os.listdir("/proc/self/task"):
        if int(task) == me:
            continue
        try:
            with open(f"/proc/self/task/{task}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return total / 1e9


@dataclass
class Tally:
    """Phases of one kind summed into one row."""

    step: str
    ops: dict[str, float] = field(default_factory=dict)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    busy_s: float = 0.0
    irq_s: float = 0.0
    load_s: float = 0.0
    load_others_s: float = 0.0
    in_flight: int = 0  # requests in flight in a closed-loop request step (0: not one)

    def add(self, before: tuple[float, ...], after: tuple[float, ...],
            ops: dict[str, float]) -> None:
        self.wall_s += after[0] - before[0]
        self.cpu_s += after[1] - before[1]
        self.busy_s += after[2] - before[2]
        self.irq_s += after[3] - before[3]
        self.load_s += after[4] - before[4]
        self.load_others_s += after[5] - before[5]
        for op, n in ops.items():
            self.ops[op] = self.ops.get(op, 0) + n

    def row(self, idle_per_s: float) -> Row:
        w = self.wall_s or float("nan")
        flight = {"in_flight": self.in_flight} if self.in_flight else {}
        return Row(self.step, dict(self.ops), self.cpu_s - idle_per_s * self.wall_s,
                   self.wall_s, {**flight, "server_cpu_s": round(self.cpu_s, 6),
                                 "server_busy": round(self.cpu_s / w, 3),
                                 "core_busy": round(self.busy_s / w, 3),
                                 "core_irq": round(self.irq_s / w, 3),
                                 "load_cpu_s": round(self.load_s, 6),
                                 "load_busy": round(self.load_s / w, 3),
                                 "load_other_threads_cpu_s": round(self.load_others_s,
                                                                   6)})


class Session:
    """One server under calibration: its URLs, a REST client, the CPU meter."""

    def __init__(self, server: Served, meter: Meter, scale: Scale,
                 log: Callable[[str], None]) -> None:
        self.server = server
        self.meter = meter
        self.scale = scale
        self.log = log
        self.host, self.port = address(server.ws_url)
        self.http = aiohttp.ClientSession(
            base_url=server.admin_url, headers={"Authorization":
                                                f"Bearer {SECRET_KEY_ID}:{SECRET}"})
        self.tokens = itertools.count()

    async def close(self) -> None:
        await self.http.close()

    # -- REST ----------------------------------------------------------------------

    async def rest(self, method: str, path: str, body: Any = None) -> Any:
        try:
            async with self.http.request(method, path, json=body) as resp:
                if resp.status != 200:
                    raise CalibrationError(f"{method} {path}: HTTP {resp.status}: "
                                           f"{(await resp.text())[:200]}")
                return await resp.json()
        except aiohttp.ClientError as exc:
            raise CalibrationError(f"{method} {path} failed: {exc}") from None

    async def connections_now(self) -> int:
        return int((await self.rest("GET", "/v1/usage"))["concurrentNow"])

    async def settle(self, expected: int = 0) -> int:
        """Wait until the server counts `expected` connections; the polls it took."""
        for i in range(SETTLE_POLLS):
            if await self.connections_now() == expected:
                return i + 1
            await asyncio.sleep(0.001 * 2 ** i)
        raise CalibrationError(f"the server still counts connections other than the "
                               f"{expected} expected after {SETTLE_POLLS} polls")

    # -- sockets -------------------------------------------------------------------

    def key_path(self) -> str:
        return f"/v1?key={PUBLISHABLE_KEY}"

    def token_path(self, peer_id: str | None = None) -> str:
        peer = peer_id or f"cal-{next(self.tokens)}"
        token = mint_token(SIGNING_KEY, {"sub": peer, "exp": int(time.time()) + TOKEN_TTL_S})
        return f"/v1?token={token}"

    async def requesters(self, n: int) -> list[Requester]:
        return await open_clients(lambda: Requester(self.host, self.port, self.key_path()),
                                  self.server.ws_url, n)

    async def done_with(self, clients: list[Any]) -> None:
        """Close `clients` and wait until the server has forgotten them (unmeasured)."""
        await close_clients(clients)
        await self.settle(0)

    def until(self, start: float) -> bool:
        """True while a step that began at `start` has time left."""
        return time.perf_counter() - start < self.scale.seconds


# -- the steps ------------------------------------------------------------------------


async def idle(s: Session) -> float:
    """The idle server's CPU per second (timers, nothing else), over a third of a step."""
    await s.settle(0)
    before = s.meter.read()
    await asyncio.sleep(max(0.2, s.scale.seconds / 3))
    after = s.meter.read()
    return max(0.0, (after[1] - before[1]) / (after[0] - before[0]))


async def rest_get(s: Session) -> list[Row]:
    """GET /v1/usage, the read that ends a disconnect phase."""
    t = Tally("rest_get")
    start = time.perf_counter()
    before = s.meter.read()
    n = 0
    while n == 0 or time.perf_counter() - start < s.scale.seconds / 3:
        await asyncio.gather(*(s.connections_now() for _ in range(s.scale.sockets)))
        n += s.scale.sockets
    t.add(before, s.meter.read(), {"rest_get": n})
    return [t.row(s.meter.idle_per_s)]


async def connects(s: Session, credential: str) -> list[Row]:
    """Open a batch (key or JWT) until welcomed, close it with a closing handshake until
    forgotten; again until the step's time is up."""
    op = f"connect_{credential}"
    opened, closed = Tally(op), Tally(f"disconnect_after_{credential}")
    start = time.perf_counter()
    batch = s.scale.batch
    while not opened.ops or s.until(start):
        paths = ([s.key_path()] * batch if credential == "key"
                 else [s.token_path() for _ in range(batch)])  # minted before measuring
        todo = iter(paths)
        before = s.meter.read()
        clients = await open_clients(lambda todo=todo: Requester(s.host, s.port, next(todo)),
                                     s.server.ws_url, batch, s.scale.upgrades_in_flight)
        middle = s.meter.read()
        opened.add(before, middle, {op: batch})
        await close_clients(clients, s.scale.upgrades_in_flight)
        polls = await s.settle(0)
        closed.add(middle, s.meter.read(), {"disconnect": batch, "rest_get": polls})
    return [opened.row(s.meter.idle_per_s), closed.row(s.meter.idle_per_s)]


async def subscriptions(s: Session, sockets: int | None = None, prefix: str = ""
                        ) -> list[Row]:
    """Each socket subscribes to channels of its own (no one else there: an empty
    presence snapshot, no deltas), then unsubscribes them; again until time is up."""
    n = sockets or s.scale.sockets
    clients = await s.requesters(n)
    sub = Tally(f"{prefix}subscribe", in_flight=n)
    unsub = Tally(f"{prefix}unsubscribe", in_flight=n)
    start = time.perf_counter()
    rounds = itertools.count()
    while not sub.ops or s.until(start):
        r = next(rounds)
        names = [[orjson.dumps(f"cal/sub/{k}/{r}/{i}") for i in range(s.scale.channels)]
                 for k in range(len(clients))]
        subs = [[b'{"type":"subscribe","channel":' + n + b',"requestId":"s"}' for n in ns]
                for ns in names]
        unsubs = [[b'{"type":"unsubscribe","channel":' + n + b',"requestId":"u"}'
                   for n in ns] for ns in names]
        before = s.meter.read()
        n = await run_each(clients, subs, (b'"ack"', b'"presence"'))
        middle = s.meter.read()
        sub.add(before, middle, {"subscribe": n})
        n = await run_each(clients, unsubs, (b'"ack"',))
        unsub.add(middle, s.meter.read(), {"unsubscribe": n})
    await s.done_with(clients)
    return [sub.row(s.meter.idle_per_s), unsub.row(s.meter.idle_per_s)]


def publish_frame(channel: str) -> Callable[[int, int], bytes]:
    head = b'{"type":"publish","channel":' + orjson.dumps(channel) + b',"data":' + PAYLOAD
    return lambda k, i: head + b',"requestId":"p' + str(k).encode() + b'"}'


async def fanout(s: Session, subscribers: int, sockets: int | None = None,
                 name: str | None = None) -> list[Row]:
    """Closed-loop publishers to a channel of `subscribers` (who only count frames)."""
    channel = f"cal/fan/{subscribers}"
    # ready on the presence snapshot, which follows the ack: no answer still in flight
    subs = await open_clients(lambda: Subscriber(s.host, s.port, s.key_path(), channel,
                                                 ready=b'"type":"presence"'),
                              s.server.ws_url, subscribers)
    try:
        await asyncio.wait_for(asyncio.gather(*(c.subscribed for c in subs)), 30)
    except SubscribeError as exc:
        raise CalibrationError(str(exc)) from None
    in_flight = sockets or s.scale.sockets
    pubs = await s.requesters(in_flight)
    t = Tally(name or f"publish_to_{subscribers}", in_flight=in_flight)
    before = s.meter.read()
    n = await run_for(pubs, s.scale.seconds, publish_frame(channel), (b'"ack"',))
    t.add(before, s.meter.read(), {"publish": n, "delivery": n * subscribers})
    lost = sum(1 for c in subs if c.closed.done())
    if lost:
        raise CalibrationError(f"{lost} subscriber(s) closed by the server while publishing")
    await s.done_with([*subs, *pubs])
    return [t.row(s.meter.idle_per_s)]


async def batching(s: Session) -> dict[str, float]:
    """CPU per publish (no subscriber) with 1 and with 8 sockets in flight, for the
    record (not fitted): how much cheaper an operation gets when the server finds
    several ready at once (one wake-up, one loop turn for all of them)."""
    out = {}
    for n in (1, 8):
        pubs = await s.requesters(n)
        t = Tally(f"publish_x{n}")
        before = s.meter.read()
        done = await run_for(pubs, s.scale.seconds / 2, publish_frame("cal/batch"),
                             (b'"ack"',))
        t.add(before, s.meter.read(), {"publish": done})
        await s.done_with(pubs)
        row = t.row(s.meter.idle_per_s)
        out[f"publish_us_{n}_in_flight"] = round(row.cpu_s / done * 1e6, 2)
        out[f"server_busy_{n}_in_flight"] = row.extra["server_busy"]
    return out


def spin_rate(seconds: float = 0.2) -> float:
    """Loop turns of plain Python per CPU second of this process: how fast this vCPU
    is right now (a shared machine's speed drifts, up to 2x, README Performance)."""
    n = 0
    start = time.process_time()
    while (spent := time.process_time() - start) < seconds:
        for _ in range(1000):
            n += 1
    return n / spent


async def sends(s: Session, sockets: int | None = None, name: str = "send") -> list[Row]:
    """Closed-loop direct sends, each to a peer of its own (one `direct` delivered)."""
    in_flight = sockets or s.scale.sockets
    targets = await open_clients(lambda: Peer(s.host, s.port, s.key_path()),
                                 s.server.ws_url, in_flight)
    senders = await s.requesters(in_flight)
    heads = [b'{"type":"send","to":' + orjson.dumps(p.peer_id) + b',"data":' + PAYLOAD
             + b',"requestId":"d"}' for p in targets]
    t = Tally(name, in_flight=in_flight)
    before = s.meter.read()
    n = await run_for(senders, s.scale.seconds, lambda k, i: heads[k], (b'"ack"',))
    t.add(before, s.meter.read(), {"send": n, "delivery": n})
    await s.done_with([*targets, *senders])
    return [t.row(s.meter.idle_per_s)]


FRAMES = (("ping", b'{"type":"ping"}', b'"pong"'),
          ("bad_frame", b'{"type":"nope","requestId":"b"}', b'"error"'))


async def frames(s: Session, sockets: int | None = None, prefix: str = "",
                 kinds: tuple[str, ...] = ("ping", "bad_frame")) -> list[Row]:
    """Frames answered at once: an app-level ping (pong), then an unknown type (error)."""
    rows = []
    in_flight = sockets or s.scale.sockets
    for name, frame, answer in FRAMES:
        if name not in kinds:
            continue
        clients = await s.requesters(in_flight)
        t = Tally(f"{prefix}{name}", in_flight=in_flight)
        before = s.meter.read()
        n = await run_for(clients, s.scale.seconds / 2, lambda k, i, f=frame: f, (answer,))
        t.add(before, s.meter.read(), {"frame": n})
        await s.done_with(clients)
        rows.append(t.row(s.meter.idle_per_s))
    return rows


async def kicks(s: Session) -> list[Row]:
    """Admin kicks (REST DELETE /v1/peers/P) of a peer with N JWT connections: each is
    closed 4020 by the server, then forgotten. Two sizes of N separate the REST call
    from the per-connection close."""
    tallies = {n: Tally(f"kick_{n}") for n in s.scale.kicks}
    opened = Tally("connect_jwt_kicked")
    start = time.perf_counter()
    while not opened.ops or s.until(start):
        for n, t in tallies.items():
            peer = f"cal-kick-{uuid.uuid4().hex[:12]}"
            paths = iter([s.token_path(peer) for _ in range(n)])
            before = s.meter.read()
            clients = await open_clients(lambda paths=paths: Peer(s.host, s.port,
                                                                  next(paths)),
                                         s.server.ws_url, n, s.scale.upgrades_in_flight)
            middle = s.meter.read()
            opened.add(before, middle, {"connect_jwt": n})
            reply = await s.rest("DELETE", f"/v1/peers/{peer}")
            if reply.get("closed") != n:
                raise CalibrationError(f"a kick of {n} connections closed {reply}")
            await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), 30)
            polls = await s.settle(0)
            t.add(middle, s.meter.read(), {"rest_kick": 1, "close": n, "disconnect": n,
                                           "rest_get": polls})
            codes = {c.close_code for c in clients}
            if codes != {4020}:
                raise CalibrationError(f"kicked connections closed with {sorted(codes)}")
    return [opened.row(s.meter.idle_per_s),
            *(t.row(s.meter.idle_per_s) for t in tallies.values())]


async def rest_publishes(s: Session) -> list[Row]:
    """Closed-loop REST publishes (keep-alive) to a channel nobody subscribes to."""
    path = f"/v1/channels/{quote('cal/rest', safe='')}/publish"
    body = {"data": orjson.loads(PAYLOAD)}
    counts = [0] * s.scale.sockets
    start = time.perf_counter()

    async def loop(k: int) -> None:
        while counts[k] == 0 or s.until(start):
            await s.rest("POST", path, body)
            counts[k] += 1

    t = Tally("rest_publish")
    before = s.meter.read()
    await asyncio.gather(*(loop(k) for k in range(s.scale.sockets)))
    t.add(before, s.meter.read(), {"rest_publish": sum(counts)})
    return [t.row(s.meter.idle_per_s)]
