from __future__ import annotations

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


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    """Start servers with custom configs; all are stopped after the test."""
    started: list[ServerProcess] = []

    def factory(config: str | None = None, *args: str) -> ServerProcess:
        sub = tmp_path / f"srv{len(started)}"
        sub.mkdir()
        server = start_server(config, *args, tmp=sub)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def redis_server() -> Iterator:
    """A private redis-server on a free port, killed after the test."""
    proc = RedisProcess().start()
    yield proc
    proc.stop()
