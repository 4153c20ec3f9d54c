"""`python -m bench redis`: fan-out across two instances through Redis vs one memory
instance, in one run.

Redis: a private redis-server, two `rtmsim serve --backend redis` instances; the
publishers connect to i0, the subscribers to i1, so every delivery crosses Redis.
Memory: one instance, everyone connected to it. The same cheap client
(`bench.load`) loads both: publishers in a closed loop awaiting acks, subscribers that
only count frames, plus one probe subscriber that reads the publish timestamp in each
message for the delivery latency percentiles.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadtests.rawws import RawClient

from .load import Publisher, Subscriber
from .procs import READY, ROOT, BenchError, machine, raise_nofile

CONFIG = """
[server]
backend = "{backend}"
redis_url = "{redis_url}"
[limits]
rate_per_second = 1000000000.0
burst = 1000000000.0
"""


class TimedPublisher(Publisher):
    """A publisher whose message data carries its send time (for the probe)."""

    def __init__(self, host: str, port: int, path: str, channel: str, name: str) -> None:
        super().__init__(host, port, path, channel, b"null", name)
        self.head = (b'{"type":"publish","channel":' + orjson.dumps(channel)
                     + b',"requestId":"' + name.encode())

    def _publish(self) -> None:
        self._rid = b"-" + str(self.acks).encode() + b'"'
        self.in_flight = True
        self.send_text(self.head + self._rid + b',"data":{"ts":' + repr(time.time()).encode()
                       + b"}}")


class Probe(RawClient):
    """Subscribes, then records publish-to-delivery latency of every message."""

    def __init__(self, host: str, port: int, path: str, channel: str) -> None:
        super().__init__(host, port, path)
        self.channel = channel
        self.latencies: list[float] = []
        self.recording = False

    def on_welcome(self, payload: bytes) -> None:
        self.send_text(orjson.dumps({"type": "subscribe", "channel": self.channel}))

    def on_text(self, payload: bytes) -> None:
        if self.recording and payload.startswith(b'{"type":"message"'):
            ts = orjson.loads(payload)["data"].get("ts")
            if ts is not None:
                self.latencies.append((time.time() - ts) * 1000.0)


def _start(cmd: list[str], timeout: float = 30) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = READY.search(line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise BenchError(f"{cmd[2:5]} did not start")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _measure(pub_url: str, sub_url: str, subscribers: int, publishers: int,
                   seconds: float, warmup: float) -> tuple[float, float]:
    loop = asyncio.get_running_loop()

    def address(url: str) -> tuple[str, int]:
        hostport = url.split("//", 1)[1].split("/", 1)[0]
        host, port = hostport.rsplit(":", 1)
        return host, int(port)

    sh, sp = address(sub_url)
    ph, pp = address(pub_url)
    path = "/v1?key=pk_live_demo"
    subs = []
    for _ in range(subscribers):
        _, sub = await loop.create_connection(lambda: Subscriber(sh, sp, path, "fan"), sh, sp)
        subs.append(sub)
    _, probe = await loop.create_connection(lambda: Probe(sh, sp, path, "fan"), sh, sp)
    await asyncio.gather(*(s.subscribed for s in subs))
    await asyncio.sleep(0.5)  # the Redis subscription of i1 is in place
    pubs = []
    for i in range(publishers):
        _, pub = await loop.create_connection(
            lambda i=i: TimedPublisher(ph, pp, path, "fan", f"p{i}"), ph, pp)
        pubs.append(pub)
    await asyncio.gather(*(p.opened for p in pubs))
    for p in pubs:
        p.start()
    await asyncio.sleep(warmup)
    before = sum(s.frames for s in subs)
    probe.recording = True
    await asyncio.sleep(seconds)
    delivered = sum(s.frames for s in subs) - before
    probe.recording = False
    await asyncio.gather(*(p.pause() for p in pubs))
    for c in (*subs, *pubs, probe):
        c.close()
    lat = np.array(probe.latencies) if probe.latencies else np.array([np.nan])
    return delivered / seconds, float(np.percentile(lat, 99))


def redis_fanout(*, seconds: float, warmup: float, subscribers: int, publishers: int,
                 log: Callable[[str], None]) -> dict[str, Any]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed (apt-get install redis-server)")
    raise_nofile(4096)
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="rtmsim-bench-redis-") as tmp:
        try:
            port = _free_port()
            procs.append(subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                                           "--save", "", "--appendonly", "no", "--dir", tmp],
                                          stdout=subprocess.DEVNULL))
            url = f"redis://127.0.0.1:{port}/0"
            _wait_port(port)
            results = {}
            for backend in ("memory", "redis"):
                cfg = Path(tmp) / f"{backend}.toml"
                cfg.write_text(CONFIG.format(backend=backend, redis_url=url))
                base = [sys.executable, "-m", "sim.cli", "serve", "--config", str(cfg),
                        "--port", "0", "--admin-port", "0"]
                started = []
                for i in range(2 if backend == "redis" else 1):
                    proc, ws = _start([*base, "--instance-id", f"i{i}"])
                    procs.append(proc)
                    started.append((proc, ws))
                pub_url, sub_url = started[0][1], started[-1][1]
                log(f"redis bench: {backend}: {publishers} publishers -> {subscribers} "
                    f"subscribers, {seconds:g} s")
                results[backend] = asyncio.run(_measure(pub_url, sub_url, subscribers,
                                                        publishers, seconds, warmup))
                for proc, _ in started:
                    proc.terminate()
                    proc.wait(timeout=20)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    (redis_rate, redis_p99), (mem_rate, mem_p99) = results["redis"], results["memory"]
    return {"benchmark": "redis", "redis": round(redis_rate, 1), "memory": round(mem_rate, 1),
            "ratio": round(redis_rate / mem_rate, 4) if mem_rate else None,
            "p99_ms_redis": round(redis_p99, 2), "p99_ms_memory": round(mem_p99, 2),
            "unit": "delivered msgs/s", "subscribers": subscribers, "publishers": publishers,
            "seconds": seconds, "machine": machine()}


def _wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise BenchError(f"redis-server did not open port {port}")
