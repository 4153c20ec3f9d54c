from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from redisproc import RedisProcess
from serverproc import ServerProcess, start_server
from wsclient import ClientPool, client_pool


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `rtmsim serve` with the built-in demo config, shared by a test module."""
    server = start_server(tmp=tmp_path_factory.mktemp("demo"))
    yield server
    server.stop()


@pytest.fixture
def clients(demo_server: ServerProcess) -> Iterator[ClientPool]:
    """A pool of protocol clients on the demo server, closed after the test."""
    with client_pool(demo_server.ws_url) as pool:
        yield pool


@pytest.fixture(scope="session")
def stopping_servers() -> Iterator[list[ServerProcess]]:
    """Servers told to stop (SIGINT) by finished tests, waited for at the end of the
    session (killed if one is still up 15 s later).

    A server's graceful stop first answers what it holds: with a latency fault that is
    seconds of waiting after the test has asserted everything, on a process no later
    test talks to (each has its own free ports and directory). It goes on while the
    next tests run instead of in a teardown."""
    stopping: list[ServerProcess] = []
    yield stopping
    for server in stopping:
        try:
            server.proc.wait(15)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


@pytest.fixture
def server_factory(tmp_path: Path, stopping_servers: list[ServerProcess]) -> Iterator:
    """Start servers with custom configs; all are told to stop after the test. Safe to
    call from several threads at once (to start a few servers side by side)."""
    started: list[ServerProcess] = []
    numbers = itertools.count()

    def factory(config: str | None = None, *args: str) -> ServerProcess:
        sub = tmp_path / f"srv{next(numbers)}"
        sub.mkdir()
        server = start_server(config, *args, tmp=sub)
        started.append(server)
        return server

    yield factory
    for server in started:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGINT)
        stopping_servers.append(server)


@pytest.fixture
def redis_server() -> Iterator:
    """A private redis-server on a free port, killed after the test."""
    proc = RedisProcess().start()
    yield proc
    proc.stop()
