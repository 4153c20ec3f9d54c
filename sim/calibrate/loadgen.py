"""The load generator's costs (`[model.load_generator]`): what one Locust process of
`rtmsim run` spends on the frames its users exchange, measured here.

Two short swarms of the real stack (`loadtests/locustfile.py`: gevent, the protocol
client, Locust's statistics, the event log), one Locust process each, pinned to the
load CPUs, against the calibration's server:

- **requests**: publishers in closed loops (nobody subscribed): the process's CPU per
  publish round trip, a request written and its ack read and reported;
- **connects**: churners in closed loops (connect, close, again): the process's CPU
  per connect and close. Less the two writes and two reads the model charges them
  anyway, what is left is an upgrade's own cost (`connect_us`: the TCP connect and the
  client's side of the handshake), which a real run's users pay one after another
  when they all connect at once (retry-bakeoff's 40: connect p50 35 ms real, 1.7
  modelled without it);
- **deliveries**: subscribers on one channel, fed at a fixed rate by a raw publisher
  from this process: the process's CPU per delivered frame, over its idle cost. Each
  frame finds its socket's reader asleep, so this is a wake and a read;
- **flush**: the event log's flush (`loadtests.eventlog.EventLog.flush`, which a
  Locust process runs once a second in its loop) timed here on batches of 2,000 and
  10,000 delivery rows: a fixed part and a part per row (`flush_us`, `flush_row_us`);
- **bursts**: the same with the process stopped (SIGSTOP) while a burst of publishes
  fills every subscriber's socket, then let go: each reader wakes once and reads the
  whole burst. With the deliveries' figure this splits a read from a wake of its
  reader (`wake_us`), which is what makes a fan-in of many frames cheaper per frame
  than one frame at a time, and what the modelled loop charges per socket read.

What a light-load round trip has beyond CPU is not the load generator's (a raw asyncio
client shows the same): it is the model's `wake_curve`, measured with the server.

A round trip's CPU is split as `wake_us` + `receive_us` = `wake_us` + `delivery_us`
(reading a frame and reporting it is the same work whichever frame it is; at most the
whole round trip) and `send_us` = the rest; only their sum is measured.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect

from loadtests.benchconfig import PUBLISHABLE_KEY
from loadtests.catalog import PublisherParams
from loadtests.envelope import envelope
from loadtests.eventload import load_client_events
from loadtests.eventlog import EventLog

from . import timers
from .servers import ROOT, CalibrationError, Served, process_cpu_s

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
PUBLISHERS = 8  # closed loops in the requests swarm (bench swarm's figure)
CHURNERS = 4  # closed connect-and-close loops in the connects swarm
SUBSCRIBERS = 20
FEED_RATE = 250.0  # publishes/s to the subscribers' channel: 5,000 deliveries/s
BURST_SUBSCRIBERS = 10
BURST = 20  # publishes a burst: frames waiting in each subscriber's socket
BURST_READ_S = 0.04  # after a burst, for the process to read it (about 10 ms here)
START_TIMEOUT_S = 30.0


def _locust(run_dir: Path, url: str, classes: dict[str, Any], seconds: float,
            cpus: set[int] | None) -> subprocess.Popen[bytes]:
    """One headless Locust process running `classes` (one user each unless
    `fixed_count` says more) for `seconds`, its event log in `run_dir`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "swarm.json"
    config.write_text(json.dumps({"classes": classes, "seed": 1}))
    users = sum(c.get("fixed_count", 1) for c in classes.values())
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
           "-u", str(users), "-r", str(users), "--run-time", f"{math.ceil(seconds)}s",
           "--stop-timeout", "5", "--host", url, "--rtmsim-key", PUBLISHABLE_KEY,
           "--rtmsim-run-dir", str(run_dir), "--rtmsim-config", str(config),
           "--exit-code-on-error", "0", "--only-summary", "--loglevel", "ERROR", *classes]
    log = open(run_dir / "locust.log", "wb")  # noqa: SIM115 - closed with the process
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL,
                                env={**os.environ, "RTMSIM_SWARM_CONFIG": str(config)})
    except OSError as exc:
        raise CalibrationError(f"Locust did not start: {exc.strerror or exc}") from None
    finally:
        log.close()
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    return proc


async def _ended(proc: subprocess.Popen[bytes], run_dir: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise CalibrationError(f"the Locust process did not stop; see "
                                   f"{run_dir}/locust.log")
        await asyncio.sleep(0.05)


async def _window(proc: subprocess.Popen[bytes], run_dir: Path, ready: Callable[[], bool],
                  settle_s: float, seconds: float) -> tuple[float, float, float]:
    """Wait until `ready()`, then `settle_s`; measure the process's CPU over the next
    `seconds`: (unix start, unix end, CPU seconds)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise CalibrationError(f"the Locust swarm did not get going; see "
                                   f"{run_dir}/locust.log")
        await asyncio.sleep(0.02)
    await asyncio.sleep(settle_s)
    t0, cpu0 = time.time(), process_cpu_s(proc.pid)
    await asyncio.sleep(seconds)
    return t0, time.time(), process_cpu_s(proc.pid) - cpu0


def _rows(run_dir: Path, op: str, t0: float, t1: float) -> Any:
    df = load_client_events(run_dir)
    return df[(df.op == op) & (df.t >= t0) & (df.t < t1)]


def _has_rows(run_dir: Path) -> Callable[[], bool]:
    return lambda: any(run_dir.glob("client-events-*/*.parquet"))


async def _closed_loops(server: Served, run_dir: Path, classes: dict[str, Any], op: str,
                        seconds: float, cpus: set[int] | None) -> dict[str, Any]:
    """One swarm of closed loops: the process's CPU over `seconds` once it logs, and
    how many `op`s succeeded meanwhile (CalibrationError if none did)."""
    proc = _locust(run_dir, server.ws_url, classes, seconds + 3, cpus)
    t0, t1, cpu = await _window(proc, run_dir, _has_rows(run_dir), 1.0, seconds)
    await _ended(proc, run_dir, seconds + 30)
    done = len(_rows(run_dir, op, t0, t1).query("outcome == 'ok'"))
    if done == 0:
        raise CalibrationError(f"no {op} succeeded in the {run_dir.name} swarm; see "
                               f"{run_dir}/locust.log")
    return {"done": done, "cpu_s": round(cpu, 6), "wall_s": round(t1 - t0, 3),
            "per_us": round(cpu / done * 1e6, 2)}


async def requests(server: Served, base: Path, seconds: float,
                   cpus: set[int] | None) -> dict[str, Any]:
    """CPU of the process per publish round trip, publishers in closed loops."""
    classes = {"Publisher": {"fixed_count": PUBLISHERS, "rate": 1e9, "channels": ["cal/lg"],
                             "payload_bytes": 64, "policy": "none"}}
    r = await _closed_loops(server, base / "requests", classes, "publish", seconds, cpus)
    return {"round_trips": r["done"], "cpu_s": r["cpu_s"], "wall_s": r["wall_s"],
            "round_trip_us": r["per_us"]}


async def connects(server: Served, base: Path, seconds: float,
                   cpus: set[int] | None) -> dict[str, Any]:
    """CPU of the process per connect and close, churners in closed loops."""
    classes = {"Churner": {"fixed_count": CHURNERS, "rate": 1e9, "hold_s": 0.0,
                           "policy": "none"}}
    r = await _closed_loops(server, base / "connects", classes, "connect", seconds, cpus)
    return {"connects": r["done"], "cpu_s": r["cpu_s"], "wall_s": r["wall_s"],
            "cycle_us": r["per_us"]}


async def deliveries(server: Served, base: Path, seconds: float,
                     cpus: set[int] | None) -> dict[str, Any]:
    """CPU of the process per delivered frame, over what its idle subscribers cost."""
    run_dir = base / "deliveries"
    channel = "cal/lg-d"
    classes = {"Subscriber": {"fixed_count": SUBSCRIBERS, "channels": [channel],
                              "subscriptions": 1, "wildcard_fraction": 0.0}}
    proc = _locust(run_dir, server.ws_url, classes, 2 * seconds + 4, cpus)
    subscribed = _subscribed(run_dir, SUBSCRIBERS)
    i0, i1, idle_cpu = await _window(proc, run_dir, subscribed, 0.5, seconds / 2)
    stop = asyncio.Event()
    feed = asyncio.create_task(_feed(server.ws_url, channel, FEED_RATE, stop))
    try:
        t0, t1, cpu = await _window(proc, run_dir, lambda: True, 0.3, seconds)
    finally:
        stop.set()
        await feed
    await _ended(proc, run_dir, 2 * seconds + 30)
    n = len(_rows(run_dir, "deliver", t0, t1))
    if n == 0:
        raise CalibrationError(f"no delivery reached the subscribers; see "
                               f"{run_dir}/locust.log")
    idle_per_s = idle_cpu / (i1 - i0)
    used = max(0.0, cpu - idle_per_s * (t1 - t0))
    return {"deliveries": n, "cpu_s": round(cpu, 6), "wall_s": round(t1 - t0, 3),
            "idle_cpu_per_s": round(idle_per_s, 6), "delivery_us": round(used / n * 1e6, 2)}


async def bursts(server: Served, base: Path, seconds: float, cpus: set[int] | None,
                 delivery_us: float) -> dict[str, Any]:
    """CPU of the process per burst read (each reader wakes once for `BURST` frames),
    split with `delivery_us` (a wake and one frame) into a wake and a frame."""
    run_dir = base / "bursts"
    channel = "cal/lg-b"
    classes = {"Subscriber": {"fixed_count": BURST_SUBSCRIBERS, "channels": [channel],
                              "subscriptions": 1, "wildcard_fraction": 0.0}}
    proc = _locust(run_dir, server.ws_url, classes, 2 * seconds + 6, cpus)
    i0, i1, idle_cpu = await _window(proc, run_dir, _subscribed(run_dir, BURST_SUBSCRIBERS),
                                     0.5, seconds / 2)
    t0, cpu0 = time.time(), process_cpu_s(proc.pid)
    rounds = 0
    try:
        async with connect(f"{server.ws_url}?key={PUBLISHABLE_KEY}", max_size=None) as ws:
            await ws.recv()  # welcome
            while time.time() - t0 < seconds:
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    for i in range(BURST):
                        await ws.send(publish_frame(channel, rounds * BURST + i + 1))
                    for _ in range(BURST):  # acked: every delivery was written before
                        await ws.recv()
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
                rounds += 1
                await asyncio.sleep(BURST_READ_S)
    except OSError as exc:
        proc.kill()
        raise CalibrationError(f"the burst publisher failed: {exc}") from None
    t1, cpu = time.time(), process_cpu_s(proc.pid) - cpu0
    await _ended(proc, run_dir, 2 * seconds + 30)
    n = len(_rows(run_dir, "deliver", t0, t1 + 1.0))
    expected = rounds * BURST * BURST_SUBSCRIBERS
    if n < expected:
        raise CalibrationError(f"the bursts' subscribers read {n:,} of {expected:,} "
                               f"frames; see {run_dir}/locust.log")
    idle_per_s = idle_cpu / (i1 - i0)
    used = max(0.0, cpu - idle_per_s * (t1 - t0))
    read_us = used / (rounds * BURST_SUBSCRIBERS) * 1e6  # one reader's burst
    frame_us = max(0.0, (read_us - delivery_us) / (BURST - 1))
    frame_us = min(frame_us, delivery_us)
    return {"rounds": rounds, "deliveries": n, "cpu_s": round(cpu, 6),
            "wall_s": round(t1 - t0, 3), "idle_cpu_per_s": round(idle_per_s, 6),
            "burst_read_us": round(read_us, 2), "frame_us": round(frame_us, 2),
            "wake_us": round(delivery_us - frame_us, 2)}


FLUSH_SIZES = (2_000, 10_000)  # rows a flush: about 1 s of a light and a busy process
FLUSH_REPEATS = 5


def flush_costs(base: Path) -> dict[str, Any]:
    """The event log's flush timed on delivery rows like a Locust process logs: the
    median of `FLUSH_REPEATS` at each of `FLUSH_SIZES`, and the straight line through
    them (a fixed part and a part a row)."""
    log = EventLog(base / "flush")
    medians = []
    for n in FLUSH_SIZES:
        times = []
        for rep in range(FLUSH_REPEATS):
            t = 1.9e9 + rep
            for i in range(n):
                log.row(t + i * 1e-4, f"Subscriber-1-{i % 20}", "Subscriber", "deliver",
                        "message", 1.0 + i * 1e-6, 1, 180, "cal/flush",
                        f"Publisher-1-{i % 10}:{i}", f"Publisher-1-{i % 10}", None,
                        "default")
            start = time.perf_counter()
            log.flush()
            times.append(time.perf_counter() - start)
        medians.append(sorted(times)[FLUSH_REPEATS // 2])
    log.close()
    (small, big), (a, b) = FLUSH_SIZES, medians
    row_us = max(0.0, (b - a) / (big - small) * 1e6)
    return {"rows": list(FLUSH_SIZES), "median_ms": [round(m * 1e3, 3) for m in medians],
            "flush_us": round(max(0.0, a * 1e6 - row_us * small), 2),
            "flush_row_us": round(row_us, 4)}


FEEDER = "Publisher-calibrate-1"
PAYLOAD = "x" * PublisherParams().payload_bytes  # a Locust Publisher's default value


def publish_frame(channel: str, n: int) -> str:
    """The `n`-th publish of the feeder, as a Locust Publisher sends it: in the
    accounting envelope, so each delivery costs the subscriber what a run's does (its
    latency timed and reported to Locust, its id de-duplicated and sequenced); a bare
    payload takes the client's short path and measured a third less."""
    _, data = envelope(FEEDER, n, PAYLOAD, channel, time.time())
    return orjson.dumps({"type": "publish", "channel": channel, "data": data,
                         "requestId": str(n)}).decode()


def _subscribed(run_dir: Path, n: int) -> Callable[[], bool]:
    def ready() -> bool:
        if not _has_rows(run_dir)():
            return False
        df = load_client_events(run_dir)
        return int(((df.op == "subscribe") & (df.outcome == "ok")).sum()) >= n
    return ready


async def _feed(url: str, channel: str, rate: float, stop: asyncio.Event) -> None:
    """Publish to `channel` at `rate` a second (on a schedule, not waiting for acks)
    until `stop`; the acks are read and dropped."""
    async with connect(f"{url}?key={PUBLISHABLE_KEY}", max_size=None) as ws:
        await ws.recv()  # welcome

        async def drain() -> None:
            async for _ in ws:
                pass
        reader = asyncio.create_task(drain())
        loop = asyncio.get_running_loop()
        start = loop.time()
        i = 0
        while not stop.is_set():
            i += 1
            await ws.send(publish_frame(channel, i))
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        reader.cancel()


async def measure(server: Served, base: Path, seconds: float, cpus: set[int] | None,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """The swarms, one after another, the flush and the timers."""
    seconds = max(1.0, seconds)
    log(f"load generator: {PUBLISHERS} Locust publishers in closed loops ({seconds:g} s)")
    req = await requests(server, base, seconds, cpus)
    log(f"    {req['round_trips']:,} round trips: {req['round_trip_us']} us of the Locust "
        "process's cpu each")
    log(f"load generator: {CHURNERS} Locust churners connecting and closing ({seconds:g} s)")
    con = await connects(server, base, seconds, cpus)
    log(f"    {con['connects']:,} connects: {con['cycle_us']} us of the Locust process's cpu "
        "each, with its close")
    log(f"load generator: {SUBSCRIBERS} Locust subscribers fed {FEED_RATE:g} publishes/s")
    dlv = await deliveries(server, base, seconds, cpus)
    log(f"    {dlv['deliveries']:,} deliveries: {dlv['delivery_us']} us each")
    log(f"load generator: {BURST_SUBSCRIBERS} Locust subscribers read bursts of {BURST}")
    bst = await bursts(server, base, seconds, cpus, dlv["delivery_us"])
    log(f"    {bst['rounds']} bursts: {bst['burst_read_us']} us a reader's burst: a wake "
        f"{bst['wake_us']} us and {bst['frame_us']} us a frame")
    flush = flush_costs(base)
    log(f"load generator: its event log's flush: {flush['flush_us']:.0f} us and "
        f"{flush['flush_row_us']} us a row ({flush['median_ms'][0]} ms for "
        f"{FLUSH_SIZES[0]:,} rows)")
    tim = timers.measure(cpus, ROOT)
    log("load generator: its timers: " + ", ".join(
        f"{us:g} us past {ms:g} ms" for ms, us in tim["timer_wake_curve"]))
    return {"requests": req, "connects": con, "deliveries": dlv, "bursts": bst,
            "flush": flush, "timers": tim}


def load_generator_table(measured: dict[str, Any]) -> dict[str, Any]:
    """`[model.load_generator]` from `measure`'s figures (without `bursts`, a file of
    before them: no wake, each frame the deliveries' figure)."""
    table = client_table(measured["requests"]["round_trip_us"],
                         measured["deliveries"]["delivery_us"])
    bst = measured.get("bursts")
    if bst is not None:
        wake, frame = bst["wake_us"], bst["frame_us"]
        rest = max(0.0, measured["requests"]["round_trip_us"] - wake)
        receive = min(frame, rest / 2)
        table.update(receive_us=round(receive, 2), delivery_us=frame, wake_us=wake,
                     send_us=round(rest - receive, 2))
    con = measured.get("connects")
    if con is not None:  # the cycle less the two writes and two reads charged anyway
        table["connect_us"] = round(max(0.0, con["cycle_us"] - 2 * (
            table["send_us"] + table["receive_us"])), 2)
    flush = measured.get("flush")
    if flush is not None:
        table.update(flush_us=flush["flush_us"], flush_row_us=flush["flush_row_us"])
    tim = measured.get("timers")
    if tim is not None:
        table.update(timer_ms=tim["timer_ms"], timer_wake_curve=tim["timer_wake_curve"])
    return table


# How `client_table` splits a round trip, for the record of each load client measured.
SPLIT = ("receive_us = delivery_us (at most the round trip's CPU); send_us = the round "
         "trip's CPU less receive_us")


# ... and the Locust process's, whose reads the bursts split into a wake and a frame.
LOOP_SPLIT = ("wake_us and delivery_us = frame_us from the bursts (their sum the "
              "deliveries' delivery_us); the round trip's CPU less wake_us is split into "
              "receive_us (a reply's frame: delivery_us, at most half of it) and send_us")


def client_table(round_trip_us: float, delivery_us: float) -> dict[str, float]:
    """A load client's `send_us`, `receive_us`, `delivery_us` from its CPU per round
    trip and per delivered frame (as `SPLIT` says: only their sum is measured)."""
    receive_us = min(delivery_us, round_trip_us)
    return {"send_us": round(round_trip_us - receive_us, 2), "receive_us": round(receive_us, 2),
            "delivery_us": round(delivery_us, 2)}
