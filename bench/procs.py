"""Child processes of a benchmark: servers and load clients, and what /proc says of them.

Servers bind port 0 on 127.0.0.1 and announce `... listening ws=ws://HOST:PORT/v1` on
their first line (`ours` adds ` admin=http://HOST:PORT`, its REST port); clients speak
JSON lines. A reader thread per child turns its stdout into a queue of lines, so
waiting for "ready" or for a result is waiting on an event with a deadline, never a
sleep. Every child is stopped by the `Children` context manager that started it,
whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import queue
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.benchconfig import BENCH_CONFIG

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"listening ws=(ws://\S+)(?: admin=(http://\S+))?")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

OURS_CONFIG = BENCH_CONFIG  # the config every throughput measurement runs
# `--faults armed`: one fault of each per-operation family, active for the whole run
# and never firing, so every fault hook runs its full decision (window, target, a
# seeded draw) on every publish and every delivery. Without it no fault is configured
# and the hooks cost one flag test each, as in a run without fault injection.
ARMED_FAULTS = """
[[faults]]
kind = "error"
probability = 0.0

[[faults]]
kind = "latency"
ms = 0.0
probability = 0.0

[[faults]]
kind = "duplicate"
probability = 0.0

[[faults]]
kind = "slow_consumer"
max_buffer_bytes = 1073741824
"""
FAULT_MODES = ("none", "armed")
DEMO_KEY = "pk_live_demo"


class BenchError(RuntimeError):
    """A benchmark could not run; the message names the problem (and the fix)."""


# -- /proc ------------------------------------------------------------------------------


def json_child(args: Sequence[str], name: str, log: Callable[[str], None]) -> Any:
    """Run a child that prints one JSON document; its stderr lines go to `log` as they
    come (its progress), and a failure is a BenchError naming `name` and its last line.

    Stdout goes to a file, not a pipe, so a large result cannot block the child while
    we are still reading its stderr.
    """
    with tempfile.TemporaryFile("w+") as out, subprocess.Popen(
            args, cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        last = "(no output)"
        for line in proc.stderr:
            last = line.rstrip() or last
            log(last)
        if proc.wait() != 0:
            raise BenchError(f"{name} exited {proc.returncode}: {last}")
        out.seek(0)
        try:
            return json.load(out)
        except ValueError as exc:
            raise BenchError(f"{name} printed no JSON: {exc}") from None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def machine_cpu_seconds() -> dict[str, float]:
    """CPU-seconds spent since boot, from /proc/stat.

    `tasks`: all processes (user + nice + system); `irq`: interrupts and softirqs,
    where the loopback network stack runs (with tick-based accounting a process's own
    CPU time includes the softirq ticks that hit while it ran); `steal`: taken by the
    hypervisor; `busy:N`: all non-idle time of CPU N, i.e. how loaded that core was.
    """
    out: dict[str, float] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *fields = line.split()
            user, nice, system, _idle, _iowait, irq, softirq, steal = (
                int(x) / CLK_TCK for x in fields[:8])
            if name == "cpu":
                out.update(tasks=user + nice + system, irq=irq + softirq, steal=steal)
            else:
                out[f"busy:{name[3:]}"] = user + nice + system + irq + softirq
    return out


def listen_overflows() -> int:
    """Times a listen queue overflowed, machine-wide (TcpExt ListenOverflows).

    A connect that overflows the server's accept backlog waits for a SYN-ACK
    retransmit (1 s, then more), which dominates a connects/s figure.
    """
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(row.get("ListenOverflows", 0))
    return 0


def rss_kb(pid: int) -> int:
    """Resident set size of a process (VmRSS), in KB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


def pin(pid: int, cpus: set[int] | None) -> None:
    """Put every thread of `pid` on `cpus` (None: leave it to the scheduler)."""
    if not cpus:
        return
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(task), cpus)


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit to at least `wanted` if allowed; the limit.

    Children inherit it, which is how the servers get room for 15000+ sockets without
    a `preexec_fn` (unsafe with the reader threads running).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        new_hard = hard if hard == resource.RLIM_INFINITY else max(hard, wanted)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, new_hard))
        return wanted
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard


def checkout(root: Path) -> dict[str, Any]:
    """Which server code ran: the git commit of `root` and whether server/ was modified."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    status = (git("status", "--porcelain", "--untracked-files=no", "--", "server", "sim")
              if commit else None)
    return {"root": str(root), "commit": commit,
            "modified": bool(status) if status is not None else None}


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(terse=True)}


# -- children ---------------------------------------------------------------------------


@dataclass
class Child:
    """One child process whose stdout lines arrive in a queue."""

    name: str
    popen: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.tail.append(line)
            self.lines.put(line)
        self.lines.put(None)  # EOF

    def _line(self, deadline: float) -> str | None:
        """The next stdout line, None past `deadline` (monotonic); BenchError at EOF."""
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if line is None:
            self.lines.put(None)
            raise BenchError(f"{self.name}: exited early (code {self.popen.wait()})"
                             f"{self._output()}")
        return line

    def next_line(self, deadline: float) -> str:
        """The next stdout line; BenchError at EOF or past `deadline` (monotonic)."""
        line = self._line(deadline)
        if line is None:
            raise BenchError(f"{self.name}: no answer in time{self._output()}")
        return line

    def _event(self, line: str) -> dict[str, Any] | None:
        if not line.startswith("{"):
            return None
        event = json.loads(line)
        if event.get("event") == "error":
            raise BenchError(f"{self.name}: {event['error']}")
        return event

    def next_event(self, timeout: float) -> dict[str, Any]:
        """The next JSON line of a load client; its `error` event becomes a BenchError."""
        deadline = time.monotonic() + timeout
        while True:
            event = self._event(self.next_line(deadline))
            if event is not None:
                return event

    def poll_event(self, timeout: float) -> dict[str, Any] | None:
        """Like `next_event`, but None when no event arrived within `timeout`."""
        deadline = time.monotonic() + timeout
        while (line := self._line(deadline)) is not None:
            event = self._event(line)
            if event is not None:
                return event
        return None

    def tell(self, command: str) -> None:
        if self.popen.stdin is not None and self.popen.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                self.popen.stdin.write(command + "\n")
                self.popen.stdin.flush()

    def _output(self) -> str:
        text = "".join(self.tail).strip()
        return f"; its last output:\n{text}" if text else ""

    def stop(self, sig: int = signal.SIGINT, timeout: float = STOP_TIMEOUT_S) -> None:
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Server:
    """A server under test: `ours` (rtmsim serve) or `bare` (bench.bare_server)."""

    kind: str
    child: Child
    ws_url: str  # ws://127.0.0.1:PORT/v1
    admin_url: str | None = None  # http://127.0.0.1:PORT (`ours` only)

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def url(self) -> str:
        return f"{self.ws_url}?key={DEMO_KEY}"

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """`GET /sim/v1/stats` on the admin port (no auth on loopback)."""
        if self.admin_url is None:
            raise BenchError(f"{self.kind} server has no admin port to read stats from")
        url = f"{self.admin_url}/sim/v1/stats"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return json.loads(resp.read())
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
            raise BenchError(f"{self.kind} server: GET {url} failed: {exc}") from None


class Children:
    """Starts children and stops every one of them on exit (servers last)."""

    def __init__(self, *, server_cpus: set[int] | None = None,
                 client_cpus: set[int] | None = None, ours_root: Path = ROOT,
                 faults: str = "none", log: Callable[[str], None] = print) -> None:
        self.ours_root = ours_root
        self.faults = faults
        self.server_cpus = server_cpus
        self.client_cpus = client_cpus
        self.log = log
        self._clients: list[Child] = []
        self._servers: list[Child] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="rtmsim-bench-")

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        for child in (*self._clients, *self._servers):
            child.stop()
        self._clients.clear()
        self._servers.clear()
        self._tmp.cleanup()

    def _spawn(self, name: str, cmd: Sequence[str], cpus: set[int] | None,
               cwd: Path = ROOT) -> Child:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        popen = subprocess.Popen(list(cmd), cwd=cwd, env=env, text=True, bufsize=1,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
        child = Child(name, popen)
        pin(popen.pid, cpus)
        threading.Thread(target=child._pump, name=f"pump-{name}", daemon=True).start()
        return child

    def start_server(self, kind: str) -> Server:
        """Start `ours` or `bare` on a free loopback port; return once it listens.

        `ours` runs from `ours_root` (`python -m` imports from the working directory
        first), so another checkout of the server can be measured with this harness.
        """
        cwd = ROOT
        if kind == "ours":
            cwd = self.ours_root
            config = Path(self._tmp.name) / "ours.toml"
            config.write_text(OURS_CONFIG + (ARMED_FAULTS if self.faults == "armed" else ""))
            cmd = [sys.executable, "-m", "sim.cli", "serve", "--host", "127.0.0.1",
                   "--port", "0", "--admin-port", "0", "--config", str(config)]
        elif kind == "bare":
            cmd = [sys.executable, "-m", "bench.bare_server", "--port", "0"]
        else:
            raise ValueError(kind)
        child = self._spawn(kind, cmd, self.server_cpus, cwd)
        self._servers.append(child)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            m = READY.search(child.next_line(deadline))
            if m:
                break
        pin(child.pid, self.server_cpus)  # threads started since spawn, too
        self.log(f"started {kind} server pid {child.pid} at {m.group(1)}")
        return Server(kind, child, m.group(1), m.group(2))

    def stop_server(self, server: Server) -> None:
        server.child.stop()
        if server.child in self._servers:
            self._servers.remove(server.child)

    def start_client(self, name: str, *args: str) -> Child:
        """Start `python -m bench.load ARGS`."""
        child = self._spawn(name, [sys.executable, "-m", "bench.load", *args],
                            self.client_cpus)
        self._clients.append(child)
        return child

    def stop_client(self, child: Child) -> None:
        child.stop(signal.SIGTERM, timeout=5)
        if child in self._clients:
            self._clients.remove(child)

    def run_client(self, name: str, *args: str, timeout: float) -> dict[str, Any]:
        """Run one load client to completion; its `result` event."""
        child = self.start_client(name, *args)
        try:
            event = child.next_event(timeout)
            if event.get("event") != "result":
                raise BenchError(f"{name}: unexpected event {event}")
            child.popen.wait(timeout=10)
            return event
        finally:
            self.stop_client(child)

