"""The raw load of `bench plancheck`, in its own process: `python -m bench.planload ...`.

Subscribers and publishers are split over the instances in turn (connection j on
instance j mod K), subscriber j on channel (j div K) mod C, so every channel has
subscribers on every instance and a publish is delivered both locally and, through
Redis, by the other instances. Publishers pace themselves as
`loadtests.behaviours.Publisher` does under the open model, the behaviour the virtual
engine drives on the other side of the comparison: slot i of a step is at
start + phase + i/rate whatever happened before; a publish leaves at its slot, or on
the answer to the one before if that came later (one in flight a connection), and its
latency is counted from its slot. A server that falls behind cannot hide it by slowing
the client (no coordinated omission): the late slots' latency grows with the backlog.

With the orchestrator (`bench.plancheck`): JSON lines out, commands on stdin.
`ready` -> "step RATE" -> `step` (the figures of the step's window) -> ... -> "quit".
Latencies are handed over raw: the orchestrator judges a step with the same function
it applies to the virtual run's event log.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

try:
    import uvloop
except ImportError:  # the servers fall back the same way
    uvloop = None

from loadtests.rawws import RawClient, Subscriber

from .childio import LoadError, address, emit, read_command
from .load import machine_busy, open_client, publish_payload
from .procs import cpu_seconds, machine_cpu_seconds, raise_nofile

CHANNEL_PREFIX = "plancheck/"
DRAIN_S = 2.0  # after a step's last slot: for the answers still in flight
START_DELAY_S = 0.05  # from the command to the step's first slot
CONNECT_TIMEOUT_S = 30.0


def channel_names(channels: int) -> list[str]:
    return [f"{CHANNEL_PREFIX}{c}" for c in range(channels)]


def slots_between(anchor: float, interval: float, lo: float, hi: float) -> int:
    """How many of the slots anchor + k * interval (any integer k) fall in [lo, hi):
    what an open-model publisher offers in a window, sent or not. One slot of a
    schedule is enough to know all of them."""
    if hi <= lo:
        return 0
    return (math.ceil((hi - anchor) / interval - 1e-9)
            - math.ceil((lo - anchor) / interval - 1e-9))


class PacedPublisher(RawClient):
    """Publishes at its step's rate in open-model slots, one publish in flight.

    `records` holds (slot, seconds from slot to answer, ok) of every answered publish
    of the step. A publish unanswered when the step is read, and a slot never sent,
    are in none: the orchestrator counts them as over any latency limit.
    """

    def __init__(self, host: str, port: int, path: str, channels: Sequence[str],
                 data: bytes, name: str) -> None:
        super().__init__(host, port, path)
        self.heads = [b'{"type":"publish","channel":' + orjson.dumps(ch) + b',"data":'
                      + data + b',"requestId":"' + name.encode() for ch in channels]
        self.sent = 0
        self.records: list[tuple[float, float, bool]] = []
        self.problem: bytes | None = None
        self.first = self.slot = self.interval = self.stop_at = 0.0
        self.pending: float | None = None  # the slot of the publish in flight

    def begin(self, rate: float, start: float, stop_at: float, phase: float) -> None:
        """Slots at start + phase/rate + i/rate, up to (not including) `stop_at`."""
        self.records = []
        self.interval = 1.0 / rate
        self.first = self.slot = start + phase * self.interval
        self.stop_at = stop_at
        self._next()

    def slots_in(self, lo: float, hi: float) -> int:
        """How many of this step's slots fall in [lo, hi), sent or not."""
        return slots_between(self.first, self.interval, max(lo, self.first),
                             min(hi, self.stop_at))

    def _next(self) -> None:
        if self.slot >= self.stop_at or self.pending is not None:
            return
        loop = asyncio.get_running_loop()
        if self.slot <= loop.time():
            self._send()
        else:
            loop.call_at(self.slot, self._send)

    def _send(self) -> None:
        if self.pending is not None or self.slot >= self.stop_at:
            return
        self.pending = self.slot
        self.slot += self.interval
        head = self.heads[self.sent % len(self.heads)]
        self.sent += 1
        self.send_text(head + b"-" + str(self.sent).encode() + b'"}')

    def on_text(self, payload: bytes) -> None:
        slot = self.pending
        ok = b'"ack"' in payload
        if slot is None or not (ok or b'"error"' in payload):
            if self.problem is None:  # we subscribe to nothing: nothing else may come
                self.problem = bytes(payload[:200])
            return
        self.records.append((slot, asyncio.get_running_loop().time() - slot, ok))
        self.pending = None
        self._next()


class Load:
    """The connections of one plancheck load, and how to run one step on them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.targets = [address(url) for url in args.target]
        self.pids: dict[str, int] = dict(args.pid)
        self.subscribers: list[Subscriber] = []
        self.publishers: list[PacedPublisher] = []
        self.rng = random.Random(args.seed)

    async def open(self) -> None:
        channels = channel_names(self.args.channels)
        k = len(self.targets)

        def subscriber(j: int) -> Any:
            host, port, path = self.targets[j % k]
            return open_client(lambda: Subscriber(host, port, path,
                                                  channels[(j // k) % len(channels)]),
                               host, port)
        self.subscribers = list(await asyncio.gather(
            *(subscriber(j) for j in range(self.args.subscribers))))
        await asyncio.wait_for(asyncio.gather(*(s.subscribed for s in self.subscribers)),
                               CONNECT_TIMEOUT_S)
        data = publish_payload(self.args.payload_bytes)

        def publisher(i: int) -> Any:
            host, port, path = self.targets[i % k]
            order = channels[i % len(channels):] + channels[:i % len(channels)]
            return open_client(lambda: PacedPublisher(host, port, path, order, data,
                                                      f"p{i}"), host, port)
        self.publishers = list(await asyncio.gather(
            *(publisher(i) for i in range(self.args.publishers))))

    def close(self) -> None:
        for c in (*self.subscribers, *self.publishers):
            c.close()

    def check(self) -> None:
        problems = [p.problem for p in self.publishers if p.problem is not None]
        if problems:
            raise LoadError(f"a publisher got an unexpected frame: {problems[0]!r}")
        lost = sum(c.closed.done() for c in (*self.subscribers, *self.publishers))
        if lost:
            raise LoadError(f"{lost} connection(s) closed by a server")

    def _snapshot(self) -> dict[str, Any]:
        return {"t": time.monotonic(), "client": time.process_time(),
                "frames": sum(s.frames for s in self.subscribers),
                "pids": {name: cpu_seconds(pid) for name, pid in self.pids.items()},
                "machine": machine_cpu_seconds(), "busy": machine_busy()}

    async def step(self, rate: float) -> dict[str, Any]:
        """Publish at `rate` in all for `--step-seconds`; the window's figures."""
        a = self.args
        loop = asyncio.get_running_loop()
        start = loop.time() + START_DELAY_S
        stop_at = start + a.step_seconds
        lo, hi = start + a.settle_seconds, stop_at - a.tail_seconds
        for p in self.publishers:
            p.begin(rate / len(self.publishers), start, stop_at, self.rng.random())
        await asyncio.sleep(lo - loop.time())
        first = self._snapshot()
        await asyncio.sleep(hi - loop.time())
        last = self._snapshot()
        drain_until = stop_at + DRAIN_S
        while loop.time() < drain_until and not all(p.pending is None
                                                    for p in self.publishers):
            await asyncio.sleep(0.05)
        self.check()
        records = [r for p in self.publishers for r in p.records if lo <= r[0] < hi]
        return {"rate": rate, "window_s": hi - lo,
                "expected": sum(p.slots_in(lo, hi) for p in self.publishers),
                "latencies_ms": [round(d * 1e3, 3) for _, d, ok in records if ok],
                "errors": sum(1 for _, _, ok in records if not ok),
                **usage(first, last)}


def usage(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """What the window's deliveries and CPU were, per second: each process's CPU (in
    cores), this load process's own, each core's busy share, interrupts and what the
    machine's other processes used (everything else busy)."""
    wall = last["t"] - first["t"]
    cpu = {name: (last["pids"][name] - first["pids"][name]) / wall for name in first["pids"]}
    cpu["load"] = (last["client"] - first["client"]) / wall
    m0, m1 = first["machine"], last["machine"]
    busy = (last["busy"] - first["busy"]) / wall
    irq = (m1["irq"] - m0["irq"]) / wall
    return {"delivered_per_s": (last["frames"] - first["frames"]) / wall,
            "cpu": {k: round(v, 3) for k, v in cpu.items()},
            "other_cpu": round(max(0.0, busy - irq - sum(cpu.values())), 3),
            "irq_cpu": round(irq, 3),
            "busy_by_cpu": {k[5:]: round((m1[k] - m0.get(k, 0.0)) / wall, 3)
                            for k in m1 if k.startswith("busy:")}}


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    load = Load(args)
    try:
        await load.open()
        emit(event="ready", subscribers=len(load.subscribers),
             publishers=len(load.publishers))
        while (command := (await read_command(loop)).split()) and command[0] == "step":
            emit(event="step", **await load.step(float(command[1])))
    finally:
        load.close()


def _pid(text: str) -> tuple[str, int]:
    name, _, pid = text.partition("=")
    return name, int(pid)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.planload",
                                description="The raw load of bench plancheck.")
    p.add_argument("--target", action="append", required=True, metavar="URL",
                   help="an instance: ws://HOST:PORT/v1?key=... (in instance order)")
    p.add_argument("--pid", type=_pid, action="append", default=[], metavar="NAME=PID",
                   help="a process whose CPU each step reports (the instances, Redis)")
    p.add_argument("--subscribers", type=int, required=True)
    p.add_argument("--publishers", type=int, required=True)
    p.add_argument("--channels", type=int, required=True)
    p.add_argument("--payload-bytes", type=int, default=64)
    p.add_argument("--step-seconds", type=float, required=True)
    p.add_argument("--settle-seconds", type=float, required=True)
    p.add_argument("--tail-seconds", type=float, required=True)
    p.add_argument("--seed", type=int, default=1)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_nofile(args.subscribers + args.publishers + 1024)
    try:
        (uvloop.run if uvloop is not None else asyncio.run)(run(args))
    except (LoadError, OSError, TimeoutError) as exc:
        emit(event="error", error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
