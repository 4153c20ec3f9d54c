"""The processes a calibration measures, and how much CPU each of them has used.

`rtmsim serve` runs as a child on a free loopback port, pinned to the server core; the
calibration's own process (the load) runs on the other core(s). For the Redis hop, a
private `redis-server` (never one we did not start) and `rtmsim serve --instances 2
--backend redis`. Every wait is on a line of the child's output (an event) with a
deadline; every child is stopped on the way out, whatever happened.

CPU time comes from `/proc/PID/task/*/schedstat` (nanoseconds on the CPU, per thread)
rather than `/proc/PID/stat`'s utime + stime, which count 10 ms ticks: a calibration
step at test scale uses a few milliseconds of server CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from loadtests.benchconfig import BENCH_CONFIG
from sim.procstat import process_cpu_s

ROOT = Path(__file__).resolve().parents[2]
# `rtmsim serve` as a child process; a test puts a failing command here.
SERVE_COMMAND = (sys.executable, "-m", "sim.cli", "serve")
READY = re.compile(r"rtmsim listening ws=(ws://\S+) admin=(http://\S+)(?: instance=(\S+))?")
INSTANCE_PIDS = re.compile(r"instances started \(pids ([\d, ]+)\)")
REDIS_READY = "Ready to accept connections"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONFIG = BENCH_CONFIG  # the benchmarks' own, so costs and benchmarks agree
REDIS_CONFIG = """
[server]
backend = "redis"
redis_url = "{url}"
"""


class CalibrationError(RuntimeError):
    """The calibration could not run; the message names the problem (and the fix)."""


# -- CPU readings ---------------------------------------------------------------------


def core_seconds(cpu: int) -> tuple[float, float]:
    """(busy, interrupts) seconds of CPU `cpu` since boot, from /proc/stat.

    Busy is every non-idle state; interrupts (irq + softirq) is where the loopback
    stack runs the packets a process sends, which its own CPU time may not include.
    """
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name == f"cpu{cpu}":
                user, nice, system, _idle, _iowait, irq, softirq, steal = (
                    int(x) / CLK_TCK for x in fields[:8])
                return user + nice + system + irq + softirq + steal, irq + softirq
    raise CalibrationError(f"no cpu{cpu} line in /proc/stat")


def split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(server core, load cores): the first allowed CPU, and the rest; (None, None)
    on a single CPU, where both share it (the figures then include the sharing)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def pin(pid: int, cpus: set[int] | None) -> None:
    """Put every thread of `pid` on `cpus` (None: leave it to the scheduler)."""
    if not cpus:
        return
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task), cpus)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- children -------------------------------------------------------------------------


@dataclass
class Child:
    """A child process whose output lines are kept (the last ones, for errors)."""

    name: str
    proc: asyncio.subprocess.Process
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    _drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def line(self, deadline: float) -> str:
        """The next output line; CalibrationError at EOF or past `deadline`."""
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(),
                                         max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise CalibrationError(f"{self.name} did not start within "
                                   f"{START_TIMEOUT_S:g} s{self._last()}") from None
        if not raw:
            code = await self.proc.wait()
            raise CalibrationError(f"{self.name} did not start (exit code {code})"
                                   f"{self._last()}")
        text = raw.decode(errors="replace").rstrip()
        self.tail.append(text)
        return text

    def keep_draining(self) -> None:
        """Read (and keep the tail of) its output from now on, so the pipe never fills."""
        async def drain() -> None:
            assert self.proc.stdout is not None
            async for raw in self.proc.stdout:
                self.tail.append(raw.decode(errors="replace").rstrip())
        self._drain = asyncio.ensure_future(drain())

    def _last(self) -> str:
        lines = [t for t in self.tail if t.strip()]
        return f": {lines[-1].strip()}" if lines else ""

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            self._drain.cancel()


@dataclass(frozen=True)
class Served:
    """One listening server instance."""

    pid: int
    ws_url: str  # ws://127.0.0.1:PORT/v1
    admin_url: str  # http://127.0.0.1:PORT
    instance: str | None = None

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)


class Processes:
    """Starts the children of a calibration; `async with` stops every one of them."""

    def __init__(self, server_cpus: set[int] | None, client_cpus: set[int] | None) -> None:
        self.server_cpus = server_cpus
        self.client_cpus = client_cpus
        self._children: list[Child] = []
        self.redis_pid: int | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="rtmsim-calibrate-")
        self.dir = Path(self._tmp.name)

    async def __aenter__(self) -> Processes:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for child in reversed(self._children):  # servers before the Redis they use
            await child.stop()
        self._children.clear()
        self._tmp.cleanup()

    async def stop(self, served: Served) -> None:
        """Stop the child that runs `served` (before starting others in its place)."""
        for child in self._children:
            if child.pid == served.pid:
                await child.stop()
                self._children.remove(child)
                return

    async def _spawn(self, name: str, cmd: list[str]) -> Child:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, cwd=ROOT, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            raise CalibrationError(f"{name} did not start: {cmd[0]}: "
                                   f"{exc.strerror or exc}") from None
        child = Child(name, proc)
        self._children.append(child)
        return child

    def _config(self, name: str, extra: str = "") -> Path:
        path = self.dir / name
        path.write_text(CONFIG + extra)
        return path

    async def start_server(self) -> Served:
        """One `rtmsim serve` (memory backend) on free loopback ports, pinned."""
        cmd = [*SERVE_COMMAND, "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
               "--config", str(self._config("server.toml"))]
        child = await self._spawn("the server (rtmsim serve)", cmd)
        pin(child.pid, self.server_cpus)
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while not (m := READY.search(await child.line(deadline))):
            pass
        child.keep_draining()
        pin(child.pid, self.server_cpus)  # threads started since spawn, too
        return Served(child.pid, m.group(1), m.group(2))

    async def start_redis(self) -> str | None:
        """A private redis-server on a free port; its URL, None when none is installed."""
        binary = shutil.which("redis-server")
        if binary is None:
            return None
        port = free_port()
        child = await self._spawn("redis-server", [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"])
        pin(child.pid, self.client_cpus)
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while REDIS_READY not in await child.line(deadline):
            pass
        child.keep_draining()
        self.redis_pid = child.pid
        return f"redis://127.0.0.1:{port}/0"

    async def start_instances(self, redis_url: str, n: int = 2) -> list[Served]:
        """`rtmsim serve --instances n --backend redis`: its instances, i0 first, pinned."""
        cmd = [*SERVE_COMMAND, "--instances", str(n), "--backend", "redis",
               "--redis-url", redis_url, "--redis-prefix", "calibrate", "--host",
               "127.0.0.1", "--port", "0", "--admin-port", "0",
               "--config", str(self._config("redis.toml", REDIS_CONFIG.format(url=redis_url)))]
        child = await self._spawn(f"rtmsim serve --instances {n}", cmd)
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        pids: list[int] = []
        found: dict[str, tuple[str, str]] = {}
        while not pids or len(found) < n:
            line = await child.line(deadline)
            if m := INSTANCE_PIDS.search(line):
                pids = [int(p) for p in m.group(1).split(",")]
            if (m := READY.search(line)) and m.group(3):
                found[m.group(3)] = (m.group(1), m.group(2))
        child.keep_draining()
        served = []
        for i, pid in enumerate(pids):
            pin(pid, self.server_cpus)
            ws, admin = found[f"i{i}"]
            served.append(Served(pid, ws, admin, f"i{i}"))
        return served
