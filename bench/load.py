"""The load generators, each run in its own process: `python -m bench.load KIND ...`.

The orchestrator (`bench.benchmarks`) starts these next to the server processes and
reads their JSON lines on stdout. Each client is a set of `RawClient` sockets driven
from `data_received` callbacks (see `loadtests.rawws` for why), on uvloop like the servers.

- `fanout`: per server, N subscribers on one channel count delivered frames without
  reading them; P publishers publish in a closed loop (next publish on the ack).
- `reqack`: per server, C connections do publish -> ack round trips in a closed loop,
  each on a channel of its own with no subscribers: the cost of a request, alone.
- `idle`: open N authenticated connections with bounded concurrency, hold them open
  until told to close (on stdin), answering pings meanwhile.
- `soak`: thousands of connections for minutes, some talking, some churning
  (`bench.soakload`).

Why the throughput clients alternate between servers in short slices: the effective
speed of this machine's vCPUs drifts by up to 2x within a second (a spinning loop's
rate, measured in 0.5 s windows, swings between 28 and 55 units), so "5 s on ours,
then 5 s on bare" compares two different machines. One client connects to both servers
and loads one at a time, switching every `--slice` seconds in ABBA order, so both
sample the same drift; each server's figure is its total over its own slices. On a
switch the publishers of the server going idle stop and their last acks are awaited,
so one slice's work is not credited to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

try:
    import uvloop
except ImportError:  # the servers fall back the same way
    uvloop = None

from loadtests.rawws import RawClient, Subscriber

from .childio import LoadError, address, emit, read_command
from .procs import cpu_seconds, machine_cpu_seconds, raise_nofile
from .soakload import add_arguments, run_soak

FANOUT_CHANNEL = "bench/fanout"
CONNECT_TIMEOUT_S = 30
PAUSE_TIMEOUT_S = 10
QUIET_CPU = 0.15  # cores other processes may use in a slice that still counts as quiet


def publish_payload(size: int) -> bytes:
    """The `data` of every published message: a JSON object of about `size` bytes."""
    return orjson.dumps({"text": "x" * max(0, size - 11)})


class Publisher(RawClient):
    """Publishes to one channel in a closed loop: the next publish leaves on the ack.

    The frame is assembled from a fixed prefix around a counter, so a round trip costs
    the client one header walk, two substring checks and one write.
    """

    def __init__(self, host: str, port: int, path: str, channel: str, data: bytes,
                 name: str) -> None:
        super().__init__(host, port, path)
        self.prefix = (b'{"type":"publish","channel":' + orjson.dumps(channel)
                       + b',"data":' + data + b',"requestId":"' + name.encode())
        self.acks = 0
        self.running = False
        self.in_flight = False
        self.problem: bytes | None = None
        self._rid = b""
        self._paused: asyncio.Future[None] | None = None

    def start(self) -> None:
        self.running = True
        if not self.in_flight:
            self._publish()

    def pause(self) -> asyncio.Future[None]:
        """Stop publishing; resolves once the last publish has been acked."""
        self.running = False
        paused = asyncio.get_running_loop().create_future()
        if self.in_flight and not self.closed.done():
            self._paused = paused
        else:
            paused.set_result(None)
        return paused

    def _publish(self) -> None:
        self._rid = b"-" + str(self.acks).encode() + b'"'
        self.in_flight = True
        self.send_text(self.prefix + self._rid + b"}")

    def on_text(self, payload: bytes) -> None:
        if b'"ack"' in payload and self._rid in payload:
            self.acks += 1
            self.in_flight = False
            if self.running:
                self._publish()
            elif self._paused is not None:
                self._paused.set_result(None)
                self._paused = None
        elif self.problem is None:
            self.problem = bytes(payload[:200])
            self.running = False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)


@dataclass
class Target:
    """The load on one server, and what it achieved during its own slices."""

    name: str
    pid: int
    publishers: list[Publisher]
    subscribers: list[Subscriber] = field(default_factory=list)
    seconds: float = 0.0
    acks: int = 0
    frames: int = 0
    server_cpu_s: float = 0.0
    rates: list[float] = field(default_factory=list)  # per counted slice, the metric/s
    others: list[float] = field(default_factory=list)  # per counted slice, other_cpu

    def counts(self) -> tuple[int, int]:
        return (sum(p.acks for p in self.publishers),
                sum(s.frames for s in self.subscribers))

    async def run_slice(self, seconds: float, *, counted: bool) -> None:
        """Load this server alone for `seconds`; add the results if `counted`."""
        acks0, frames0 = self.counts()
        cpu0, busy0, client0 = cpu_seconds(self.pid), machine_busy(), time.process_time()
        t0 = time.perf_counter()
        for p in self.publishers:
            p.start()
        await asyncio.sleep(seconds)
        await asyncio.wait_for(asyncio.gather(*(p.pause() for p in self.publishers)),
                               PAUSE_TIMEOUT_S)
        await asyncio.sleep(0)  # read deliveries written before the last acks
        t1 = time.perf_counter()
        cpu1, busy1, client1 = cpu_seconds(self.pid), machine_busy(), time.process_time()
        acks1, frames1 = self.counts()
        self.check()
        if counted:
            self.seconds += t1 - t0
            self.acks += acks1 - acks0
            self.frames += frames1 - frames0
            self.server_cpu_s += cpu1 - cpu0
            done = frames1 - frames0 if self.subscribers else acks1 - acks0
            self.rates.append(done / (t1 - t0))
            other = busy1 - busy0 - (cpu1 - cpu0) - (client1 - client0)
            self.others.append(max(0.0, other) / (t1 - t0))

    def check(self) -> None:
        problems = [p.problem for p in self.publishers if p.problem is not None]
        if problems:
            raise LoadError(f"{self.name}: a publisher got an unexpected frame: "
                            f"{problems[0]!r}")
        lost = sum(1 for c in (*self.publishers, *self.subscribers) if c.closed.done())
        if lost:
            raise LoadError(f"{self.name}: {lost} connection(s) closed by the server")

    def close(self) -> None:
        for c in (*self.publishers, *self.subscribers):
            c.close()

    def result(self) -> dict[str, Any]:
        s = self.seconds or float("nan")
        out: dict[str, Any] = {
            "seconds": round(self.seconds, 3), "acks": self.acks,
            "acks_per_s": round(self.acks / s, 1),
            "server_cpu": round(self.server_cpu_s / s, 3),
            "server_cpu_us_per_ack": (round(self.server_cpu_s / self.acks * 1e6, 2)
                                      if self.acks else None),
        }
        if self.subscribers:
            out.update(frames=self.frames, delivered_per_s=round(self.frames / s, 1),
                       delivered_per_publish=(round(self.frames / self.acks, 3)
                                              if self.acks else None))
        return out


def slice_order(names: Sequence[str], n: int) -> list[str]:
    """n rounds of ABBA: each server goes first as often, and follows the other as often."""
    order: list[str] = []
    for r in range(n):
        order += list(names) if r % 2 == 0 else list(reversed(names))
    return order


def machine_busy() -> float:
    m = machine_cpu_seconds()
    return m["tasks"] + m["irq"]


def slice_ratios(targets: list[Target]) -> dict[str, Any] | None:
    """First/second target's rate over pairs of neighbouring slices: the noise, and
    the ratio over the pairs in which no other process used more than QUIET_CPU."""
    if len(targets) != 2 or not targets[1].rates:
        return None
    a, b = targets
    pairs = list(zip(a.rates, b.rates, a.others, b.others, strict=True))
    ratios = sorted(x / y for x, y, _, _ in pairs if y)
    quiet = [(x, y) for x, y, ox, oy in pairs if ox < QUIET_CPU and oy < QUIET_CPU]
    quiet_b = sum(y for _, y in quiet)
    return {
        "quartiles": ([round(q, 4) for q in statistics.quantiles(ratios, n=4)]
                      if len(ratios) >= 4 else None),
        "quiet_pairs": len(quiet), "pairs": len(pairs),
        "quiet_ratio": round(sum(x for x, _ in quiet) / quiet_b, 4) if quiet_b else None,
    }


async def alternate(targets: list[Target], *, warmup: float, seconds: float,
                    slice_s: float) -> dict[str, Any]:
    """Warm up, then load the targets one at a time in slices; per-target results."""
    by_name = {t.name: t for t in targets}
    names = [t.name for t in targets]
    warm_slices = max(1, round(warmup / slice_s))
    slices = max(1, round(seconds / slice_s))
    for name in slice_order(names, warm_slices):
        await by_name[name].run_slice(warmup / warm_slices, counted=False)
    client0, machine0, t0 = time.process_time(), machine_cpu_seconds(), time.perf_counter()
    servers0 = sum(cpu_seconds(t.pid) for t in targets)
    for name in slice_order(names, slices):
        await by_name[name].run_slice(seconds / slices, counted=True)
    wall = time.perf_counter() - t0
    client_s = time.process_time() - client0
    servers_s = sum(cpu_seconds(t.pid) for t in targets) - servers0
    machine1 = machine_cpu_seconds()
    # Our processes' times include the softirq ticks charged to them, hence + irq.
    other_s = (machine1["tasks"] + machine1["irq"] - machine0["tasks"] - machine0["irq"]
               - client_s - servers_s)
    return {"servers": {t.name: t.result() for t in targets},
            "slice_ratios": slice_ratios(targets),
            "slices_per_server": slices, "slice_seconds": round(seconds / slices, 4),
            "client_cpu": round(client_s / wall, 3),
            # CPU used by other processes: a busy neighbour makes a run unreliable.
            "other_cpu": round(max(0.0, other_s) / wall, 3),
            "irq_cpu": round((machine1["irq"] - machine0["irq"]) / wall, 3),
            "steal_cpu": round((machine1["steal"] - machine0["steal"]) / wall, 3),
            "busy_by_cpu": {k[5:]: round((machine1[k] - machine0.get(k, 0.0)) / wall, 3)
                            for k in machine1 if k.startswith("busy:")}}


# -- the clients ------------------------------------------------------------------------


async def open_client(make: Any, host: str, port: int) -> Any:
    """Connect one RawClient and wait for its welcome."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(make, host, port)
    await asyncio.wait_for(client.opened, CONNECT_TIMEOUT_S)
    return client


async def _publishers(url: str, channels: Sequence[str], data: bytes) -> list[Publisher]:
    host, port, path = address(url)
    return list(await asyncio.gather(*(
        open_client(lambda i=i, ch=ch: Publisher(host, port, path, ch, data, f"p{i}"),
                    host, port)
        for i, ch in enumerate(channels))))


async def fanout_target(name: str, url: str, pid: int, args: argparse.Namespace) -> Target:
    host, port, path = address(url)
    subscribers = list(await asyncio.gather(*(
        open_client(lambda: Subscriber(host, port, path, FANOUT_CHANNEL), host, port)
        for _ in range(args.subscribers))))
    await asyncio.wait_for(asyncio.gather(*(s.subscribed for s in subscribers)),
                           CONNECT_TIMEOUT_S)
    publishers = await _publishers(url, [FANOUT_CHANNEL] * args.publishers,
                                   publish_payload(args.payload_bytes))
    return Target(name, pid, publishers, subscribers)


async def reqack_target(name: str, url: str, pid: int, args: argparse.Namespace) -> Target:
    channels = [f"bench/reqack/{i}" for i in range(args.connections)]
    return Target(name, pid, await _publishers(url, channels,
                                               publish_payload(args.payload_bytes)))


async def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    make = fanout_target if args.kind == "fanout" else reqack_target
    targets: list[Target] = []
    try:
        for name, url, pid in args.target:
            targets.append(await make(name, url, int(pid), args))
        return await alternate(targets, warmup=args.warmup, seconds=args.seconds,
                               slice_s=args.slice)
    finally:
        for t in targets:
            t.close()


async def run_idle(args: argparse.Namespace) -> None:
    """Open `n` connections when told `go`, report, hold them until told `close`."""
    loop = asyncio.get_running_loop()
    host, port, path = address(args.url)
    clients: list[RawClient] = []
    numbers = itertools.count()
    failures: list[str] = []

    async def worker() -> None:
        while next(numbers) < args.n:
            for attempt in range(3):
                try:
                    clients.append(await open_client(
                        lambda: RawClient(host, port, path), host, port))
                    break
                except (OSError, TimeoutError) as exc:
                    if attempt == 2:
                        failures.append(f"{type(exc).__name__}: {exc}")

    emit(event="ready")
    if await read_command(loop) != "go":
        return
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(args.concurrency, args.n))))
    emit(event="open", n=len(clients), seconds=round(time.perf_counter() - t0, 4),
         failed=len(failures), first_failure=failures[0] if failures else None,
         client_cpu_s=round(time.process_time(), 3))
    await read_command(loop)  # "close" (or EOF: the orchestrator is gone)
    lost = sum(1 for c in clients if c.closed.done())
    for c in clients:
        c.close()
    emit(event="closed", lost_before_close=lost)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.load",
                                     description="One load-generator process.")
    sub = parser.add_subparsers(dest="kind", required=True)
    for kind in ("fanout", "reqack"):
        p = sub.add_parser(kind)
        p.add_argument("--target", nargs=3, action="append", required=True,
                       metavar=("NAME", "URL", "PID"),
                       help="a server to load: name, ws://HOST:PORT/v1?key=..., its pid")
        p.add_argument("--seconds", type=float, default=5.0, help="measured, per server")
        p.add_argument("--warmup", type=float, default=1.0, help="per server")
        p.add_argument("--slice", type=float, default=0.25)
        p.add_argument("--payload-bytes", type=int, default=64)
    sub.choices["fanout"].add_argument("--subscribers", type=int, default=50)
    sub.choices["fanout"].add_argument("--publishers", type=int, default=4)
    sub.choices["reqack"].add_argument("--connections", type=int, default=8)
    idle = sub.add_parser("idle")
    idle.add_argument("--url", required=True)
    idle.add_argument("--n", type=int, required=True)
    idle.add_argument("--concurrency", type=int, default=100)
    add_arguments(sub.add_parser("soak"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_nofile(max(getattr(args, "n", 0), getattr(args, "connections", 0)) + 1024)
    if args.kind == "soak":
        run = run_soak(args)
    else:
        run = run_idle(args) if args.kind == "idle" else run_throughput(args)
    try:
        result = uvloop.run(run) if uvloop is not None else asyncio.run(run)
    except (LoadError, OSError, TimeoutError) as exc:
        emit(event="error", error=f"{type(exc).__name__}: {exc}")
        return 1
    if result is not None:
        emit(event="result", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
