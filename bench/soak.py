"""The soak benchmark: minutes of modest, churning load on one server; does anything leak?

One `rtmsim serve` (CPU 0) and one soak client process (`bench.soakload`, CPU 1). The
server's own `/sim/v1/stats` is the instrument: its `process` object gives current RSS,
open descriptors, asyncio tasks and CPU seconds, its totals the connections, messages,
error and close counters. Readings:

- `start`: before any client connects (after one stats request, so whatever aiohttp
  builds on its first request is not mistaken for a leak);
- samples of RSS every `sample_interval` seconds of load; after the warm-up (allocator
  arenas, caches and interned strings growing to their working size) a least-squares
  slope of RSS over time, in MB per 10 minutes;
- `loaded`: at the end of the load, every connection still open;
- `after`: once every client has left: the server's `connections.now` is 0 and its
  descriptors and tasks are back to `start` (polled, with deadlines; if they never come
  back the reading at the deadline is what is reported).

Every stats request is itself, in the server, one more open socket (and the descriptor
`/proc/self/fd` is listed through) and two more tasks (aiohttp's connection task and its
request task): the same in every reading, so the readings compare as they are. An idle
server shows 4 tasks: `serve_forever`, the fault strike loop and those two.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from .benchmarks import START_TIMEOUT, Placement
from .procs import BenchError, Server, raise_nofile
from .soakload import LEAVES, Roles

LOAD_SLACK_S = 60.0  # on top of --minutes: the client's stop, last acks and deliveries
CLOSE_TIMEOUT_S = 60.0  # for the client to close every connection
EMPTY_TIMEOUT_S = 30.0  # for the server to count 0 connections once the clients left
SETTLE_TIMEOUT_S = 10.0  # then for its descriptors and tasks to come back to `start`
POLL_S = 0.1
PROGRESS_S = 60.0  # a progress line a minute
SLOPE_GOAL_MB = 1.0  # per 10 minutes


def sample_interval(seconds: float) -> float:
    """Seconds between RSS samples: 12 a minute in a long soak, ~24 in a short one."""
    return min(5.0, max(0.5, seconds / 24))


def slope_mb_per_10min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) points, in MB per 10 minutes."""
    if len(points) < 3:
        return None
    slope, _ = statistics.linear_regression([t for t, _ in points], [mb for _, mb in points])
    return round(slope * 600, 3)


def _process(stats: dict[str, Any]) -> dict[str, Any]:
    p = stats.get("process", {})
    missing = [k for k in ("rss_kb", "open_fds", "asyncio_tasks", "cpu_s") if p.get(k) is None]
    if missing:
        raise BenchError(f"the server's /sim/v1/stats has no process.{missing[0]}: run a "
                         "server that reports it (server/rest.py process_usage)")
    return p


def _settle(server: Server, start: dict[str, Any], log: Callable[[str], None]
            ) -> tuple[dict[str, Any], float]:
    """Poll until the server has no connection and its fds and tasks are back to `start`.

    Returns the last stats and how long it took. Each deadline ends the wait, not the
    run: what did not come back is then reported as it is.
    """
    t0 = time.monotonic()
    baseline = (start["open_fds"], start["asyncio_tasks"])
    empty_by = t0 + EMPTY_TIMEOUT_S
    while True:
        stats = server.stats()
        if stats["totals"]["connections"]["now"] == 0:
            break
        if time.monotonic() > empty_by:
            log(f"soak: the server still counts {stats['totals']['connections']['now']} "
                f"connection(s) {EMPTY_TIMEOUT_S:g} s after the clients left")
            return stats, time.monotonic() - t0
        time.sleep(POLL_S)
    settled_by = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        p = _process(stats)
        if (p["open_fds"], p["asyncio_tasks"]) == baseline or time.monotonic() > settled_by:
            return stats, time.monotonic() - t0
        time.sleep(POLL_S)
        stats = server.stats()


def _mb(kb: float) -> float:
    return round(kb / 1024, 2)


def unexpected(client: dict[str, Any], server: dict[str, Any], connections_left: int
               ) -> list[str]:
    """Everything a healthy soak should not show, one line each."""
    out: list[str] = []
    for what, counts in (("client saw error frames", client["errors"]),
                         ("client saw closes it did not ask for", client["unexpected_closes"]),
                         ("client connects failed", client["failed_connects"]),
                         ("server counted errors", server["errors"]),
                         ("server closed connections", server["closes"])):
        if counts:
            out.append(f"{what}: {counts}")
    stable = client["stable"]
    if stable["received"] != stable["expected"]:
        out.append(f"stable subscribers received {stable['received']} messages, expected "
                   f"{stable['expected']}")
    if stable["direct_received"] != stable["direct_expected"]:
        out.append(f"send targets received {stable['direct_received']} direct messages, "
                   f"expected {stable['direct_expected']}")
    messages = server["messages"]
    for name in ("published", "sent"):
        if messages[name] != client[name]:
            out.append(f"server counted {messages[name]} {name}, clients got "
                       f"{client[name]} acks")
    if not client["drained"]:
        out.append("requests or deliveries still missing when the load stopped")
    if connections_left:
        out.append(f"server still counts {connections_left} connection(s) after the "
                   "clients left")
    return out


def soak(*, minutes: float, connections: int, churn_fraction: float, churn_s: float,
         warmup_minutes: float, placement: Placement, log: Callable[[str], None],
         seed: int = 1) -> dict[str, Any]:
    """Run the soak; one result dict (see `bench.__main__.summary` for the shape)."""
    seconds = minutes * 60
    warmup_s = warmup_minutes * 60
    try:
        roles = Roles.plan(connections, churn_fraction)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    limit = raise_nofile(connections + 1024)  # inherited by the server and the client
    if limit < connections + 64:
        raise BenchError(f"open-file limit {limit} is too low for {connections} "
                         f"connections; raise it (ulimit -n {connections + 1024}) or lower "
                         "--connections")
    interval = sample_interval(seconds)
    with placement.children(log) as children:
        server = children.start_server("ours")
        client = children.start_client(
            "soak-client", "soak", "--url", server.url, "--connections", str(connections),
            "--seconds", str(seconds), "--churn-fraction", str(churn_fraction),
            "--churn-s", str(churn_s), "--seed", str(seed))
        client.next_event(START_TIMEOUT)  # ready: imported, loop running
        server.stats()  # aiohttp's first request builds what later ones reuse
        idle = server.stats()
        start = _process(idle)
        log(f"soak: server idle at RSS {_mb(start['rss_kb'])} MB, {start['open_fds']} fds, "
            f"{start['asyncio_tasks']} tasks; opening {connections} connections "
            f"({roles.as_dict()})")
        client.tell("go")
        opened = client.next_event(START_TIMEOUT + connections / 50)
        log(f"soak: {opened['opened']} connections open in {opened['seconds']} s; "
            f"{minutes:g} min of load, {warmup_minutes:g} min warm-up, churn "
            f"{churn_fraction:g} every {churn_s:g} s, RSS sampled every {interval:g} s")
        t0 = time.monotonic()
        first = _process(server.stats())
        samples: list[tuple[float, float]] = [(0.0, first["rss_kb"] / 1024)]
        loaded_event: dict[str, Any] | None = None
        next_at = t0 + interval
        deadline = t0 + seconds + LOAD_SLACK_S
        progress_at = t0 + PROGRESS_S
        while loaded_event is None:
            event = client.poll_event(max(0.0, next_at - time.monotonic()))
            if event is not None:
                if event.get("event") != "loaded":
                    raise BenchError(f"soak client: unexpected event {event}")
                loaded_event = event
                break
            now = time.monotonic()
            if now > deadline:
                raise BenchError(f"soak client: no end of load {seconds + LOAD_SLACK_S:g} s "
                                 "after it started")
            stats = server.stats()
            p = _process(stats)
            samples.append((now - t0, p["rss_kb"] / 1024))
            next_at += interval
            if now >= progress_at:
                progress_at += PROGRESS_S
                log(f"soak: {(now - t0) / 60:.1f}/{minutes:g} min, RSS {_mb(p['rss_kb'])} MB, "
                    f"{p['open_fds']} fds, {p['asyncio_tasks']} tasks, "
                    f"{stats['totals']['connections']['now']} connections")
        loaded_stats = server.stats()
        t1 = time.monotonic()
        loaded = _process(loaded_stats)
        samples.append((t1 - t0, loaded["rss_kb"] / 1024))
        log(f"soak: load done; {loaded['open_fds']} fds, {loaded['asyncio_tasks']} tasks; "
            "closing every connection")
        client.tell("close")
        result = client.next_event(CLOSE_TIMEOUT_S)
        if result.get("event") != "result":
            raise BenchError(f"soak client: unexpected event {result}")
        children.stop_client(client)
        after_stats, settle_s = _settle(server, start, log)
        after = _process(after_stats)
    warm = [(t, mb) for t, mb in samples if t >= warmup_s]
    slope = slope_mb_per_10min(warm)
    totals = after_stats["totals"]
    connections_left = totals["connections"]["now"]
    problems = unexpected(result, totals, connections_left)
    fds = {"start": start["open_fds"], "loaded": loaded["open_fds"],
           "after": after["open_fds"]}
    tasks = {"start": start["asyncio_tasks"], "loaded": loaded["asyncio_tasks"],
             "after": after["asyncio_tasks"]}
    out = {
        "benchmark": "soak", "minutes": minutes, "duration_s": round(t1 - t0, 1),
        "warmup_minutes": warmup_minutes, "connections": connections,
        "roles": roles.as_dict(), "churn_fraction": churn_fraction, "churn_s": churn_s,
        "leave_mix": dict(LEAVES),
        "connect_seconds": opened["seconds"],
        "churn_reconnects": result["reconnects"], "churn_leaves": result["leaves"],
        "messages": {"published": result["published"], "sent": result["sent"],
                     "delivered": result["delivered"], "stable": result["stable"],
                     "server": totals["messages"]},
        "frames_received": result["frames"],
        "rss_mb": {"idle": _mb(start["rss_kb"]), "start": round(samples[0][1], 2),
                   "after_warmup": round(warm[0][1], 2) if warm else None,
                   "end": _mb(loaded["rss_kb"]), "after": _mb(after["rss_kb"]),
                   "peak": round(max(mb for _, mb in samples), 2),
                   "samples": len(samples),
                   "samples_after_warmup": len(warm)},
        "rss_slope_mb_per_10min": slope,
        "rss_series": [[round(t, 1), round(mb, 2)] for t, mb in samples],
        "fds": fds, "tasks": tasks, "settle_s": round(settle_s, 2),
        "server_cpu": round((loaded["cpu_s"] - first["cpu_s"]) / (t1 - t0), 3),
        "server_connections_total": totals["connections"]["total"],
        "errors": {"client_error_frames": result["errors"],
                   "client_unexpected_closes": result["unexpected_closes"],
                   "client_failed_connects": result["failed_connects"],
                   "server_errors": totals["errors"], "server_closes": totals["closes"]},
        "unexpected": problems,
        "goals": {"rss_slope_under_1mb_per_10min": (slope is not None
                                                    and slope < SLOPE_GOAL_MB),
                  "fds_back_to_start": fds["after"] == fds["start"],
                  "tasks_back_to_start": tasks["after"] == tasks["start"]},
        **placement.describe(),
    }
    for line in problems:
        log(f"soak: unexpected: {line}")
    return out
