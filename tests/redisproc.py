"""A private `redis-server` per test (or module) on a free loopback port.

Tests never touch a Redis they did not start: this one keeps nothing on disk and is
killed at the end. `stop`/`start` on the same port simulate a real outage.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int, avoid: tuple[int, ...] = ()) -> int:
    """The first of `count` consecutive free ports (for `serve --instances N`, which
    binds port, port + 1, ...), none of them in `avoid`. Each is bound while the next
    is tried: on a busy machine the port after a free one is often some client's."""
    for _ in range(200):
        with contextlib.ExitStack() as held:
            first = held.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            start = first.getsockname()[1]
            ports = range(start, start + count)
            if any(p in avoid or p > 65535 for p in ports):
                continue
            try:
                for p in ports[1:]:
                    held.enter_context(socket.socket()).bind(("127.0.0.1", p))
            except OSError:
                continue
            return start
    raise RuntimeError(f"no {count} consecutive free ports found")


class RedisProcess:
    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it: "
                               "apt-get install redis-server)")
        self.binary = binary
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="rtmsim-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> RedisProcess:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while True:  # wait for the port to answer PING (the event), bounded
            try:
                if client.ping():
                    return self
            except redis.exceptions.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on {self.port}") from None
                time.sleep(0.02)
            finally:
                client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)
