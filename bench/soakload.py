"""The soak load: thousands of connections that mostly sit, a few that talk, some that churn.

Runs in its own process as `python -m bench.load soak ...`; `bench.soak` orchestrates it
and reads the server's own figures meanwhile. Roles, fixed at the start (`Roles.plan`):

- stable subscribers: connect once, subscribe to one of CHANNELS channels, stay;
- churners: subscribers that leave and come back every `churn_s` (0.8-1.2x, the first
  stay drawn in [0, churn_s) so the reconnects are spread out), re-subscribing each time.
  A leave is a clean close frame most of the time (LEAVES), otherwise the socket goes
  without one: an EOF (FIN) or a TCP RST, so every server path of a vanishing client runs;
- publishers: publish to the channels in turn, one publish per PUBLISH_INTERVAL_S each;
- senders: `send` to a random stable subscriber (its peerId from its `welcome`), one
  per SEND_INTERVAL_S each.

Publishers and senders neither subscribe nor churn, and send targets are stable, so in a
healthy run no error frame is expected at all and every count can be checked: a stable
subscriber was subscribed before the first publish and never leaves, so the messages
the stable subscribers must have received is exact (the stable subscribers of a
publish's channel, summed over the acked publishes); the same for direct messages.

Every frame is parsed (orjson is cheap next to the server's own work at these rates) and
counted by type; error frames by code; closes we did not ask for by close code (1006:
the socket went without a close frame).

With the orchestrator: JSON lines out, commands on stdin. `ready` -> "go" -> open every
connection, `connected` -> the load for `--seconds`, then stop talking and churning, wait
for the last acks, `loaded` (connections held) -> "close" -> close every connection with
a close frame -> `result`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from loadtests.rawws import RawClient

from .childio import LoadError, address, emit, read_command

CHANNELS = 50
PUBLISHER_FRACTION = 0.01  # of the connections; at least one
SENDER_FRACTION = 0.01
PUBLISH_INTERVAL_S = 1.0  # per publisher: 2000 connections -> 20 publishes/s in all
SEND_INTERVAL_S = 1.0
LEAVES = (("clean", 0.8), ("eof", 0.1), ("reset", 0.1))  # how a churner leaves
CONNECT_CONCURRENCY = 100
CONNECT_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 30.0
RETRY_BACKOFF_S = 1.0
CLOSE_TIMEOUT_S = 10.0  # for the server's answer to our close frame
DRAIN_TIMEOUT_S = 10.0  # for the last acks and deliveries once the load stops
POLL_S = 0.05
PAD = "x" * 48  # a publish's data is about 64 bytes


@dataclass(frozen=True)
class Roles:
    """How many connections of each kind."""

    stable: int
    churners: int
    publishers: int
    senders: int

    @classmethod
    def plan(cls, connections: int, churn_fraction: float) -> Roles:
        """The split of `connections`; ValueError when it leaves no stable subscriber."""
        publishers = max(1, round(connections * PUBLISHER_FRACTION))
        senders = max(1, round(connections * SENDER_FRACTION))
        churners = round(connections * churn_fraction)
        stable = connections - publishers - senders - churners
        if stable < 1:
            raise ValueError(f"{connections} connections leave no stable subscriber after "
                             f"{publishers} publisher(s), {senders} sender(s) and {churners} "
                             "churner(s): open more connections or churn fewer")
        return cls(stable, churners, publishers, senders)

    def as_dict(self) -> dict[str, int]:
        return {"stable_subscribers": self.stable, "churners": self.churners,
                "publishers": self.publishers, "senders": self.senders,
                "channels": CHANNELS}


@dataclass
class Tally:
    """What the clients saw, summed over every connection."""

    connects: int = 0
    reconnects: int = 0  # churn cycles completed (left, then connected and subscribed)
    failed_connects: Counter[str] = field(default_factory=Counter)
    leaves: Counter[str] = field(default_factory=Counter)  # churn leaves by kind
    published: int = 0  # publishes acked
    sent: int = 0  # sends acked
    frames: Counter[str] = field(default_factory=Counter)  # received, by type
    errors: Counter[str] = field(default_factory=Counter)  # error frames, by code
    unexpected_closes: Counter[str] = field(default_factory=Counter)  # by close code
    stable_expected: int = 0  # message frames the stable subscribers must receive
    stable_received: int = 0
    direct_received: int = 0  # direct frames (every target is a stable subscriber)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connects": self.connects, "reconnects": self.reconnects,
            "failed_connects": dict(self.failed_connects), "leaves": dict(self.leaves),
            "published": self.published, "sent": self.sent,
            "delivered": self.frames["message"] + self.frames["direct"],
            "frames": dict(self.frames), "errors": dict(self.errors),
            "unexpected_closes": dict(self.unexpected_closes),
            "stable": {"expected": self.stable_expected, "received": self.stable_received,
                       "direct_expected": self.sent, "direct_received": self.direct_received},
        }


class SoakConn(RawClient):
    """One connection; parses every frame and reports to its `Soak`."""

    def __init__(self, soak: Soak, channel: int | None, stable: bool) -> None:
        super().__init__(soak.host, soak.port, soak.path)
        self.soak = soak
        self.channel = channel  # index into soak.channels; None: does not subscribe
        self.stable = stable
        self.peer_id: str | None = None
        self.subscribed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.in_flight = 0  # publishes and sends awaiting their ack
        self.leaving: str | None = None  # how we closed it; None: we did not

    def on_welcome(self, payload: bytes) -> None:
        self.soak.tally.frames["welcome"] += 1
        self.peer_id = orjson.loads(payload)["peerId"]
        if self.channel is None:
            self.subscribed.set_result(False)
        else:
            self.send_text(orjson.dumps({"type": "subscribe", "requestId": "sub",
                                         "channel": self.soak.channels[self.channel]}))

    def on_text(self, payload: bytes) -> None:
        frame = orjson.loads(payload)
        kind = frame.get("type")
        tally = self.soak.tally
        tally.frames[kind] += 1
        if kind == "message":
            if self.stable:
                tally.stable_received += 1
        elif kind == "direct":
            tally.direct_received += 1
        elif kind == "ack":
            self.soak.acked(self, frame.get("requestId"))
        elif kind == "error":
            tally.errors[str(frame.get("code"))] += 1
            rid = frame.get("requestId")
            if rid == "sub":
                self.subscribed.set_result(False)
            elif rid is not None:
                self.in_flight -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.subscribed.done():
            self.subscribed.set_result(False)
        if self.peer_id is None:
            return  # never opened: a failed connect, counted by its caller
        if self.leaving is None or (self.leaving == "clean" and self.close_code != 1000):
            self.soak.tally.unexpected_closes[str(self.close_code or 1006)] += 1

    def leave(self, how: str) -> None:
        """Go away: `clean` (close frame, await the server's), `eof` or `reset`."""
        self.leaving = how
        if how == "clean":
            self.send_close(1000)
        elif how == "eof":
            self.close()
        else:
            self.reset()


class Soak:
    """The whole load of one client process."""

    def __init__(self, url: str, roles: Roles, churn_s: float, seed: int) -> None:
        self.host, self.port, self.path = address(url)
        self.roles = roles
        self.churn_s = churn_s
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.channels = [f"soak/{i}" for i in range(CHANNELS)]
        self.stable_per_channel: Counter[int] = Counter()
        self.stable: list[SoakConn] = []
        self.talkers: list[SoakConn] = []
        self.live: set[SoakConn] = set()
        self.stop = asyncio.Event()

    # -- connections ---------------------------------------------------------------

    async def connect(self, channel: int | None, stable: bool = False) -> SoakConn | None:
        """Open one connection (and subscribe it); None after CONNECT_ATTEMPTS failures."""
        loop = asyncio.get_running_loop()
        for attempt in range(CONNECT_ATTEMPTS):
            conn = SoakConn(self, channel, stable)
            try:
                await loop.create_connection(lambda c=conn: c, self.host, self.port)
                await asyncio.wait_for(conn.opened, CONNECT_TIMEOUT_S)
                await asyncio.wait_for(asyncio.shield(conn.subscribed), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                conn.leaving = "failed"
                conn.reset()
                self.tally.failed_connects[f"{type(exc).__name__}: {exc}"[:100]] += 1
                if attempt + 1 < CONNECT_ATTEMPTS:
                    await asyncio.sleep(RETRY_BACKOFF_S)
                continue
            self.tally.connects += 1
            self.live.add(conn)
            conn.closed.add_done_callback(lambda _, c=conn: self.live.discard(c))
            return conn
        return None

    async def open_all(self) -> list[SoakConn | None]:
        """Every role's first connection, CONNECT_CONCURRENCY at a time; churners' last."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        r = self.roles

        async def one(channel: int | None, stable: bool) -> SoakConn | None:
            async with gate:
                return await self.connect(channel, stable)

        stable = await asyncio.gather(*(one(i % CHANNELS, True) for i in range(r.stable)))
        talkers = await asyncio.gather(*(one(None, False)
                                         for _ in range(r.publishers + r.senders)))
        churners = await asyncio.gather(*(one((r.stable + i) % CHANNELS, False)
                                          for i in range(r.churners)))
        for conn in stable:
            if conn is not None and conn.subscribed.result():
                self.stable.append(conn)
                self.stable_per_channel[conn.channel] += 1  # type: ignore[index]
        self.talkers = [c for c in talkers if c is not None]
        return churners

    # -- requests -----------------------------------------------------------------

    def publish(self, conn: SoakConn, n: int) -> None:
        channel = n % CHANNELS
        conn.in_flight += 1
        conn.send_text(orjson.dumps({"type": "publish", "channel": self.channels[channel],
                                     "data": {"n": n, "pad": PAD},
                                     "requestId": f"p{channel}.{n}"}))

    def send(self, conn: SoakConn, n: int) -> None:
        target = self.rng.choice(self.stable)
        conn.in_flight += 1
        conn.send_text(orjson.dumps({"type": "send", "to": target.peer_id,
                                     "data": {"n": n, "pad": PAD}, "requestId": f"d{n}"}))

    def acked(self, conn: SoakConn, rid: str | None) -> None:
        if rid == "sub":
            conn.subscribed.set_result(True)
        elif rid is not None and rid.startswith("p"):
            conn.in_flight -= 1
            self.tally.published += 1
            self.tally.stable_expected += self.stable_per_channel[int(rid[1:rid.index(".")])]
        elif rid is not None and rid.startswith("d"):
            conn.in_flight -= 1
            self.tally.sent += 1

    # -- behaviours ----------------------------------------------------------------

    async def stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
            return True
        return False

    async def talk(self, conn: SoakConn, interval: float,
                   act: Callable[[SoakConn, int], None]) -> None:
        """`act` every `interval` seconds until the load stops."""
        n = 0
        if await self.stopped_within(self.rng.uniform(0, interval)):
            return
        while not conn.closed.done():
            act(conn, n)
            n += 1
            if await self.stopped_within(interval):
                return

    def pick_leave(self) -> str:
        x = self.rng.random()
        for how, share in LEAVES:
            if x < share:
                return how
            x -= share
        return LEAVES[0][0]

    async def churn(self, conn: SoakConn | None, channel: int) -> None:
        """Leave and come back, re-subscribing, until the load stops."""
        stay = self.rng.uniform(0, self.churn_s)
        while not await self.stopped_within(stay):
            if conn is not None and not conn.closed.done():
                how = self.pick_leave()
                self.tally.leaves[how] += 1
                conn.leave(how)
                try:
                    await asyncio.wait_for(asyncio.shield(conn.closed), CLOSE_TIMEOUT_S)
                except TimeoutError:
                    self.tally.unexpected_closes["no_close_reply"] += 1
                    conn.reset()
            conn = await self.connect(channel)
            if conn is not None:
                self.tally.reconnects += 1
            stay = self.churn_s * self.rng.uniform(0.8, 1.2)

    async def drained(self) -> bool:
        """True once every request is answered and every stable delivery arrived."""
        t = self.tally
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            if (all(c.in_flight <= 0 or c.closed.done() for c in self.talkers)
                    and t.stable_received >= t.stable_expected
                    and t.direct_received >= t.sent):
                return True
            await asyncio.sleep(POLL_S)
        return False

    async def close_all(self) -> None:
        """A close frame on every open connection; RST what does not close in time."""
        conns = list(self.live)
        for conn in conns:
            conn.leave("clean")
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        while self.live and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        for conn in list(self.live):
            self.tally.unexpected_closes["no_close_reply"] += 1
            conn.reset()


async def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """The client side of `python -m bench soak` (see the module docstring)."""
    loop = asyncio.get_running_loop()
    roles = Roles.plan(args.connections, args.churn_fraction)
    soak = Soak(args.url, roles, args.churn_s, args.seed)
    emit(event="ready")
    if await read_command(loop) != "go":
        raise LoadError("the orchestrator did not say go")
    t0 = time.perf_counter()
    churners = await soak.open_all()
    tally = soak.tally
    if not soak.stable or not soak.talkers:
        raise LoadError(f"could not open the connections: {dict(tally.failed_connects)}")
    t1 = time.perf_counter()
    emit(event="connected", opened=tally.connects, roles=roles.as_dict(),
         failed_connects=dict(tally.failed_connects), seconds=round(t1 - t0, 3))
    talkers = soak.talkers
    tasks = [asyncio.ensure_future(soak.talk(c, PUBLISH_INTERVAL_S, soak.publish))
             for c in talkers[:roles.publishers]]
    tasks += [asyncio.ensure_future(soak.talk(c, SEND_INTERVAL_S, soak.send))
              for c in talkers[roles.publishers:]]
    tasks += [asyncio.ensure_future(soak.churn(c, (roles.stable + i) % CHANNELS))
              for i, c in enumerate(churners)]
    await asyncio.sleep(args.seconds)
    soak.stop.set()
    await asyncio.gather(*tasks)
    drained = await soak.drained()
    emit(event="loaded", drained=drained, open=len(soak.live),
         load_seconds=round(time.perf_counter() - t1, 3), **tally.as_dict())
    await read_command(loop)  # "close" (or EOF: the orchestrator is gone)
    await soak.close_all()
    return {"drained": drained, **tally.as_dict()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="ws://HOST:PORT/v1?key=...")
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=600.0, help="of load, once connected")
    p.add_argument("--churn-fraction", type=float, default=0.2)
    p.add_argument("--churn-s", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
