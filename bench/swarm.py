"""`python -m bench swarm`: how much load one Locust process can generate.

Two numbers for the Locust side of the harness, against one `rtmsim serve`:

- publish+ack round trips/s from one Locust process running our `Publisher` users
  (the real stack: gevent, the protocol client on websockets' Sans-I/O layer, Locust's
  statistics, the raw event log), against a raw asyncio `websockets` client loop doing
  the same round trips over the same number of connections. The two take alternating
  turns (`ROUNDS` of each), so a drift in the shared machine's speed hits both. The raw
  loop runs on the stock asyncio event loop, as the issue defines it, and again on
  uvloop, reported beside it as the stronger baseline;
- the most connected users one Locust process holds with their receive greenlets
  running, and the memory each costs (the slope of RSS against connected users, so
  Locust's own start-up footprint does not count).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import uvloop
except ImportError:  # the servers fall back the same way
    uvloop = None
from websockets.asyncio.client import connect

from loadtests.accounting import load_client_events

from .procs import ROOT, BenchError, Children, Server, machine, raise_nofile, rss_kb

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


def _locust(children: Children, name: str, base_url: str, classes: dict[str, Any],
            users: int, spawn_rate: float, run_time: float, run_dir: Path
            ) -> subprocess.Popen[str]:
    config = run_dir / "swarm.json"
    config.write_text(json.dumps({"classes": classes, "seed": 1}))
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
           "-u", str(users), "-r", str(spawn_rate),
           "--run-time", f"{math.ceil(run_time)}s",  # Locust takes whole seconds only
           "--stop-timeout", "5", "--host", base_url, "--rtmsim-run-dir", str(run_dir),
           "--rtmsim-config", str(config), "--exit-code-on-error", "0", "--only-summary",
           "--loglevel", "ERROR", *classes]
    log = open(run_dir / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RTMSIM_SWARM_CONFIG": str(config)})
    if children.client_cpus:
        os.sched_setaffinity(proc.pid, children.client_cpus)
    return proc


def _rows(run_dir: Path, op: str, outcome: str = "ok") -> list[float]:
    """Times of the client-event rows with this op and outcome."""
    df = load_client_events(run_dir)
    return df.t[(df.op == op) & (df.outcome == outcome)].tolist()


ROUNDS = 5


def locust_round_trips(children: Children, base_url: str, connections: int, seconds: float,
                       warmup: float, tmp: Path, turn: int) -> float:
    run_dir = tmp / f"locust-rate-{turn}"
    run_dir.mkdir()
    classes = {"Publisher": {"fixed_count": connections, "rate": 1e9, "channels": ["b/1"],
                             "payload_bytes": 64, "policy": "none"}}
    proc = _locust(children, "locust-rate", base_url, classes, connections, connections,
                   warmup + seconds + 1, run_dir)
    proc.wait(timeout=warmup + seconds + 60)
    acks = sorted(_rows(run_dir, "publish"))
    if not acks:
        raise RuntimeError(f"no publish acked; see {run_dir}/locust-rate.log")
    start = acks[0] + warmup
    window = [t for t in acks if start <= t < start + seconds]
    return len(window) / seconds


async def _raw_loop(url: str, connections: int, seconds: float, warmup: float) -> float:
    done = 0
    counting = False
    stop = False

    async def one(i: int) -> None:
        nonlocal done
        async with connect(url, compression=None) as ws:
            await ws.recv()  # welcome
            n = 0
            while not stop:
                n += 1
                await ws.send(json.dumps({"type": "publish", "channel": "b/1",
                                          "data": {"v": "x" * 64}, "requestId": f"{i}-{n}"}))
                await ws.recv()
                if counting:
                    done += 1

    tasks = [asyncio.create_task(one(i)) for i in range(connections)]
    await asyncio.sleep(warmup)
    counting = True
    await asyncio.sleep(seconds)
    counting = False
    rate = done / seconds
    stop = True
    await asyncio.gather(*tasks, return_exceptions=True)
    return rate


def raw_round_trips(children: Children, url: str, connections: int, seconds: float,
                    warmup: float, loop: str) -> float:
    cmd = [sys.executable, "-m", "bench.swarm", "--raw", url, str(connections), str(seconds),
           str(warmup), loop]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if children.client_cpus:
        os.sched_setaffinity(proc.pid, children.client_cpus)
    out, _ = proc.communicate(timeout=seconds + warmup + 60)
    return float(out.strip().splitlines()[-1])


def round_trips(children: Children, server: Server, connections: int, seconds: float,
                warmup: float, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Locust, the asyncio loop and the uvloop loop in alternating turns."""
    base = server.ws_url.removesuffix("/v1")
    turn_s = seconds / ROUNDS
    rates: dict[str, list[float]] = {"locust": [], "raw": [], "raw_uvloop": []}
    for turn in range(ROUNDS):
        rates["locust"].append(locust_round_trips(children, base, connections, turn_s,
                                                  warmup, tmp, turn))
        rates["raw"].append(raw_round_trips(children, server.url, connections, turn_s,
                                            warmup, "asyncio"))
        rates["raw_uvloop"].append(raw_round_trips(children, server.url, connections,
                                                   turn_s, warmup, "uvloop"))
        log(f"swarm: turn {turn + 1}/{ROUNDS}: Locust {rates['locust'][-1]:,.0f}, asyncio "
            f"{rates['raw'][-1]:,.0f}, uvloop {rates['raw_uvloop'][-1]:,.0f} round trips/s")
    # Equal turns: the mean rate is the rate over all of each side's measured time.
    mean = {name: sum(values) / len(values) for name, values in rates.items()}
    return {"locust": round(mean["locust"], 1), "raw": round(mean["raw"], 1),
            "ratio": round(mean["locust"] / mean["raw"], 4),
            "raw_uvloop": round(mean["raw_uvloop"], 1),
            "ratio_uvloop": round(mean["locust"] / mean["raw_uvloop"], 4),
            "ratio_per_turn": [round(x / y, 3) for x, y in zip(rates["locust"], rates["raw"],
                                                                  strict=True)]}


def max_users(children: Children, base_url: str, target: int, spawn_rate: float, tmp: Path,
              log: Callable[[str], None]) -> dict[str, Any]:
    """Spawn `target` idle users in one Locust process; connected users and KB each."""
    run_dir = tmp / "locust-users"
    run_dir.mkdir()
    classes = {"Subscriber": {"fixed_count": target, "subscriptions": 0, "rate": 0.02}}
    ramp_s = target / spawn_rate
    proc = _locust(children, "locust-users", base_url, classes, target, spawn_rate,
                   ramp_s + 20, run_dir)
    samples: list[tuple[int, int]] = []  # (connected users, locust RSS KB)
    deadline = time.monotonic() + ramp_s + 18
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(1.0)
        connected = len(_rows(run_dir, "connect"))
        try:
            samples.append((connected, rss_kb(proc.pid)))
        except (OSError, ValueError, BenchError):
            break  # Locust has exited
        log(f"swarm: {connected} users connected, Locust RSS {samples[-1][1] / 1024:.0f} MB")
    proc.terminate()
    proc.wait(timeout=60)
    failed = len(_rows(run_dir, "connect", "refused")) + len(_rows(run_dir, "connect",
                                                                   "timeout"))
    best = max((c for c, _ in samples), default=0)
    kb = _slope([s for s in samples if s[0] > 0])
    return {"max_users": best, "target_users": target, "kb_per_user": kb,
            "failed_connects": failed}


def _slope(samples: list[tuple[int, int]]) -> float | None:
    """Least-squares KB per connected user over the ramp."""
    if len(samples) < 3:
        return None
    xs = [float(c) for c, _ in samples]
    ys = [float(r) for _, r in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx, 2)


def swarm(*, seconds: float, warmup: float, connections: int, users: int, spawn_rate: float,
          children: Children, log: Callable[[str], None]) -> dict[str, Any]:
    raise_nofile(users * 2 + 1024)
    with tempfile.TemporaryDirectory(prefix="rtmsim-bench-swarm-") as name:
        tmp = Path(name)
        server = children.start_server("ours")
        log(f"swarm: {connections} publishers awaiting acks: Locust vs raw loops, "
            f"{ROUNDS} turns of {seconds / ROUNDS:g} s each")
        rates = round_trips(children, server, connections, seconds, warmup, tmp, log)
        children.stop_server(server)
        server = children.start_server("ours")
        log(f"swarm: {users} idle users in one Locust process")
        held = max_users(children, server.ws_url.removesuffix("/v1"), users, spawn_rate, tmp,
                         log)
    return {"benchmark": "swarm", **rates,
            "unit": "publish+ack round trips/s", "connections": connections,
            "seconds": seconds, **held, "machine": machine()}


def _raw_main(argv: list[str]) -> None:
    url, connections, seconds, warmup = argv[0], int(argv[1]), float(argv[2]), float(argv[3])
    if argv[4] == "uvloop":
        if uvloop is None:
            raise BenchError("uvloop is not installed")
        uvloop.install()
    print(asyncio.run(_raw_loop(url, connections, seconds, warmup)), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--raw", nargs=5)
    _raw_main(parser.parse_args().raw)
