"""The three benchmarks: what runs where, in which order, and what is reported.

Process layout on a 2-core machine: the servers under test run on CPU 0 (one loaded
at a time), the load client(s) on CPU 1 (`pin`), and this orchestrator mostly sleeps
on pipes. So the loaded server has a core to itself, and a ratio compares server
code, not scheduling luck. Each run reports what the CPUs did over the measured
window: `busy_by_cpu` near 1.0 on the server's core (the server process plus the
softirq time of the loopback stack) with the client's core well below it means the
server was the bottleneck, which is what a run must show to be meaningful;
`other_cpu` says whether another job shared the machine (the run is then suspect).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import (
    ROOT,
    BenchError,
    Children,
    Server,
    checkout,
    cpu_seconds,
    listen_overflows,
    machine,
    raise_nofile,
    rss_kb,
)

SERVERS = ("ours", "bare")
CLIENT_SLACK_S = 60.0  # connect + warm-up + teardown allowance on top of the window
IDLE_PER_CLIENT = 5000  # connections one idle client process holds
START_TIMEOUT = 60.0
OTHER_CPU_WARNING = 0.15  # cores used by other processes during a run (see load.QUIET_CPU)


@dataclass(frozen=True)
class Placement:
    """Where processes run: CPUs for servers and clients, and which checkout is `ours`."""

    server_cpus: set[int] | None
    client_cpus: set[int] | None
    ours_root: Path = ROOT
    faults: str = "none"

    @classmethod
    def choose(cls, pinned: bool, ours_root: Path = ROOT, faults: str = "none"
               ) -> Placement:
        cpus = sorted(os.sched_getaffinity(0))
        if not pinned or len(cpus) < 2:
            return cls(None, None, ours_root, faults)
        return cls({cpus[0]}, set(cpus[1:]), ours_root, faults)

    def children(self, log: Callable[[str], None]) -> Children:
        return Children(server_cpus=self.server_cpus, client_cpus=self.client_cpus,
                        ours_root=self.ours_root, faults=self.faults, log=log)

    def describe(self) -> dict[str, Any]:
        return {"pinned": self.pinned, "faults": self.faults,
                "ours_checkout": checkout(self.ours_root), "machine": machine()}

    @property
    def pinned(self) -> bool:
        return self.server_cpus is not None


def _throughput(name: str, metric: str, unit: str, client_args: list[str], *,
                seconds: float, warmup: float, slice_s: float, placement: Placement,
                log: Callable[[str], None], extra: dict[str, Any]) -> dict[str, Any]:
    """Both servers up, one client loading them in alternating slices (see `load`)."""
    with placement.children(log) as children:
        servers = [children.start_server(kind) for kind in SERVERS]
        log(f"{name}: {warmup:g} s warm-up then {seconds:g} s measured per server, "
            f"alternating every {slice_s:g} s")
        targets = [a for s in servers for a in ("--target", s.kind, s.url, str(s.pid))]
        event = children.run_client(
            f"{name}-client", name, *targets, "--seconds", str(seconds), "--warmup",
            str(warmup), "--slice", str(slice_s), *client_args,
            timeout=2 * (seconds + warmup) + CLIENT_SLACK_S)
    per_server = event["servers"]
    for kind in SERVERS:
        r = per_server[kind]
        log(f"    {kind}: {r[metric]:,.0f} {unit}, server cpu {r['server_cpu']} core, "
            f"{r['server_cpu_us_per_ack']} us cpu per publish")
    log(f"    client cpu {event['client_cpu']} core; other processes "
        f"{event['other_cpu']}, interrupts {event['irq_cpu']}, stolen "
        f"{event['steal_cpu']} core; busy by cpu {event['busy_by_cpu']}")
    if event["other_cpu"] > OTHER_CPU_WARNING:
        log(f"    warning: other processes used {event['other_cpu']} core during the run; "
            "the figures are unreliable, rerun on a quiet machine")
    ours, bare = per_server["ours"][metric], per_server["bare"][metric]
    sr = event["slice_ratios"]
    log(f"    ratio ours/bare {ours / bare if bare else float('nan'):.3f}; per pair of "
        f"neighbouring slices: quartiles {sr['quartiles']}, {sr['quiet_ratio']} over the "
        f"{sr['quiet_pairs']} of {sr['pairs']} pairs with no other process busy")
    return {
        "benchmark": name, "ours": ours, "bare": bare,
        "ratio": round(ours / bare, 4) if bare else None, "unit": unit,
        "slice_ratios": event["slice_ratios"],
        "seconds": seconds, "warmup_seconds": warmup, **extra,
        "slices_per_server": event["slices_per_server"],
        "slice_seconds": event["slice_seconds"], "client_cpu": event["client_cpu"],
        "other_cpu": event["other_cpu"], "irq_cpu": event["irq_cpu"],
        "steal_cpu": event["steal_cpu"], "busy_by_cpu": event["busy_by_cpu"],
        "servers": per_server, **placement.describe(),
    }


def fanout(*, seconds: float, warmup: float, slice_s: float, subscribers: int,
           publishers: int, payload_bytes: int, placement: Placement,
           log: Callable[[str], None]) -> dict[str, Any]:
    """Delivered messages/s: `subscribers` on one channel, `publishers` awaiting acks."""
    return _throughput(
        "fanout", "delivered_per_s", "delivered msgs/s",
        ["--subscribers", str(subscribers), "--publishers", str(publishers),
         "--payload-bytes", str(payload_bytes)],
        seconds=seconds, warmup=warmup, slice_s=slice_s, placement=placement, log=log,
        extra={"subscribers": subscribers, "publishers": publishers,
               "payload_bytes": payload_bytes})


def reqack(*, seconds: float, warmup: float, slice_s: float, connections: int,
           payload_bytes: int, placement: Placement, log: Callable[[str], None]
           ) -> dict[str, Any]:
    """Publish -> ack round trips/s over `connections` closed-loop connections."""
    return _throughput(
        "reqack", "acks_per_s", "round trips/s",
        ["--connections", str(connections), "--payload-bytes", str(payload_bytes)],
        seconds=seconds, warmup=warmup, slice_s=slice_s, placement=placement, log=log,
        extra={"connections": connections, "payload_bytes": payload_bytes})


def _idle_connections(children: Children, server: Server, n: int, concurrency: int,
                      log: Callable[[str], None]) -> dict[str, Any]:
    """Open `n` idle connections to `server` from several clients; RSS before/after."""
    warm = children.start_client("idle-warmup", "idle", "--url", server.url, "--n", "20")
    warm.next_event(START_TIMEOUT)
    warm.tell("go")
    warm.next_event(START_TIMEOUT)
    warm.tell("close")
    warm.next_event(START_TIMEOUT)
    children.stop_client(warm)

    nproc = max(1, math.ceil(n / IDLE_PER_CLIENT))
    shares = [n // nproc + (1 if i < n % nproc else 0) for i in range(nproc)]
    per_proc = max(1, concurrency // nproc)
    clients = [children.start_client(f"idle-{i}", "idle", "--url", server.url,
                                     "--n", str(share), "--concurrency", str(per_proc))
               for i, share in enumerate(shares)]
    try:
        for c in clients:
            c.next_event(START_TIMEOUT)  # ready: imported, loop running
        before = rss_kb(server.pid)
        cpu0, overflows0 = cpu_seconds(server.pid), listen_overflows()
        log(f"{server.kind}: RSS {before / 1024:.1f} MB; opening {n} connections "
            f"from {nproc} client processes, {per_proc * nproc} in flight")
        t0 = time.perf_counter()
        for c in clients:
            c.tell("go")
        opened = [c.next_event(START_TIMEOUT + n / 100) for c in clients]
        elapsed = time.perf_counter() - t0
        after = rss_kb(server.pid)
        cpu1, overflows1 = cpu_seconds(server.pid), listen_overflows()
        got = sum(e["n"] for e in opened)
        failed = [e["first_failure"] for e in opened if e["failed"]]
        if got != n:
            raise BenchError(f"{server.kind}: only {got} of {n} connections opened"
                             + (f" (first failure: {failed[0]})" if failed else ""))
        for c in clients:
            c.tell("close")
        closed = [c.next_event(START_TIMEOUT) for c in clients]
    finally:
        for c in clients:
            children.stop_client(c)
    lost = sum(e["lost_before_close"] for e in closed)
    result = {
        "kb_per_connection": round((after - before) / n, 2),
        "connects_per_s": round(n / elapsed, 1),
        "rss_before_kb": before, "rss_after_kb": after, "open_seconds": round(elapsed, 3),
        "server_cpu_while_opening": round((cpu1 - cpu0) / elapsed, 3),
        "server_cpu_ms_per_connect": round((cpu1 - cpu0) / n * 1000, 3),
        "listen_overflows": overflows1 - overflows0, "lost_before_close": lost,
    }
    log(f"    {result['kb_per_connection']} KB/connection, "
        f"{result['connects_per_s']:,.0f} connects/s, server cpu "
        f"{result['server_cpu_while_opening']} core while opening, "
        f"{result['listen_overflows']} accept-queue overflows")
    return result


def connections(*, n: int, concurrency: int, placement: Placement,
                log: Callable[[str], None]) -> dict[str, Any]:
    """KB of server RSS per idle authenticated connection, and connects/s, ours and bare."""
    limit = raise_nofile(n + 1024)  # inherited by the servers
    if limit < n + 64:
        raise BenchError(f"open-file limit {limit} is too low for {n} connections; "
                         f"raise it (ulimit -n {n + 1024}) or lower --n")
    results: dict[str, dict[str, Any]] = {}
    for kind in SERVERS:
        with placement.children(log) as children:
            server = children.start_server(kind)
            results[kind] = _idle_connections(children, server, n, concurrency, log)
    ours, bare = results["ours"], results["bare"]
    return {
        "n": n, "kb_per_connection": ours["kb_per_connection"],
        "connects_per_s": ours["connects_per_s"],
        "bare_kb_per_connection": bare["kb_per_connection"],
        "bare_connects_per_s": bare["connects_per_s"],
        "concurrency": concurrency, "runs": results, **placement.describe(),
    }
