"""The real side of `bench plancheck`: a private redis-server, `rtmsim serve --instances
K --backend redis` behind it with instance i pinned to CPU i, and the raw load process
(`bench.planload`). Every wait is on a line of a child's output, with a deadline; every
child is stopped on the way out, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from loadtests.benchconfig import BENCH_CONFIG, PUBLISHABLE_KEY

from .procs import ROOT, BenchError, Child, pin

START_TIMEOUT_S = 30.0
REDIS_READY = "Ready to accept connections"
SERVE_READY = re.compile(r"listening ws=(ws://\S+) admin=\S+ instance=(\S+)")
INSTANCE_PIDS = re.compile(r"instances started \(pids ([\d, ]+)\)")
SERVER_CONFIG = """
[server]
backend = "redis"
redis_url = "{url}"
"""


class Deployment:
    """A private redis-server on a free port, `rtmsim serve --instances K --backend
    redis` behind it with instance i pinned to CPU i, and the load process: all started
    here and all stopped on the way out, whatever happened. Never a Redis we did not
    start. The load process and redis-server are not pinned: with one core per
    instance on this machine they share those cores, and the steps say how much."""

    def __init__(self, instances: int) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < instances:
            raise BenchError(f"plancheck pins {instances} instances to a core each; this "
                             f"process may use {len(cpus)} CPU(s)")
        self.cores = cpus[:instances]
        self.instances = instances
        self.dir = Path(tempfile.mkdtemp(prefix="rtmsim-plancheck-"))
        self.children: list[Child] = []
        self.instance_pids: list[int] = []

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        for child in reversed(self.children):  # the load, the instances, then Redis
            child.stop(signal.SIGTERM if child.name != "instances" else signal.SIGINT)
        for pid in self.instance_pids:  # ours, in case their parent was killed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _spawn(self, name: str, cmd: Sequence[str]) -> Child:
        popen = subprocess.Popen(list(cmd), cwd=ROOT, text=True, bufsize=1,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
        child = Child(name, popen)
        threading.Thread(target=child._pump, name=f"pump-{name}", daemon=True).start()
        self.children.append(child)
        return child

    def start_redis(self) -> tuple[str, int]:
        """A private redis-server: its URL and pid."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed (apt-get install redis-server)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        child = self._spawn("redis-server", [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"])
        deadline = time.monotonic() + START_TIMEOUT_S
        while REDIS_READY not in child.next_line(deadline):
            pass
        return f"redis://127.0.0.1:{port}/0", child.pid

    def start_instances(self, redis_url: str) -> list[str]:
        """The instances' ws:// URLs, i0 first, each pinned to its core."""
        config = self.dir / "server.toml"
        config.write_text(BENCH_CONFIG + SERVER_CONFIG.format(url=redis_url))
        child = self._spawn("instances", [
            sys.executable, "-m", "sim.cli", "serve", "--instances", str(self.instances),
            "--backend", "redis", "--redis-url", redis_url, "--redis-prefix", "plancheck",
            "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
            "--config", str(config)])
        deadline = time.monotonic() + START_TIMEOUT_S
        urls: dict[str, str] = {}
        while not self.instance_pids or len(urls) < self.instances:
            line = child.next_line(deadline)
            if m := INSTANCE_PIDS.search(line):
                self.instance_pids = [int(p) for p in m.group(1).split(",")]
            if m := SERVE_READY.search(line):
                urls[m.group(2)] = m.group(1)
        for pid, core in zip(self.instance_pids, self.cores, strict=True):
            pin(pid, {core})
        return [f"{urls[f'i{i}']}?key={PUBLISHABLE_KEY}" for i in range(self.instances)]

    def start_load(self, urls: Sequence[str], pids: dict[str, int], flags: Sequence[str]
                   ) -> Child:
        """`python -m bench.planload FLAGS` on the instances at `urls`, reporting the CPU
        of `pids` (name -> pid) each step; once it is connected and subscribed."""
        cmd = [sys.executable, "-m", "bench.planload", *flags]
        cmd += [arg for url in urls for arg in ("--target", url)]
        cmd += [arg for name, pid in pids.items() for arg in ("--pid", f"{name}={pid}")]
        child = self._spawn("load", cmd)
        event = child.next_event(START_TIMEOUT_S)
        if event.get("event") != "ready":
            raise BenchError(f"the load process: unexpected event {event}")
        return child
