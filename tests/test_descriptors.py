"""Out of file descriptors: the server keeps serving, refuses new upgrades with HTTP 503
and Retry-After, logs one line per state change, does not spin, and accepts again once
descriptors free up. The server runs with RLIMIT_NOFILE = 256 and gets 400 attempts."""

from __future__ import annotations

import socket
import time

import pytest
from serverproc import start_server
from wsclient import client_pool, wait_until

NOFILE = 256
ATTEMPTS = 400
UPGRADE = (b"GET /v1?key=pk_live_demo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")


def attempt(port: int) -> tuple[socket.socket, bytes]:
    """One upgrade on a raw socket, left open; (socket, the response's head)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(UPGRADE)
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            break
        head += data
    return sock, head.split(b"\r\n\r\n")[0]


@pytest.fixture
def server(tmp_path):
    server = start_server(None, tmp=tmp_path, nofile=NOFILE)
    yield server
    server.stop()


def _log_lines(server, text: str) -> list[str]:
    return [line for line in server.output if text in line]


def test_out_of_descriptors_refuses_with_503_and_recovers(server):
    port = int(server.ws_url.rsplit(":", 1)[1].split("/")[0])
    socks = []
    with client_pool(server.ws_url) as pool:
        early = pool.key()  # a connection from before the shortage
        heads = []
        for _ in range(ATTEMPTS):
            sock, head = attempt(port)
            socks.append(sock)
            heads.append(head.split(b"\r\n"))
        accepted = [h for h in heads if h[0] == b"HTTP/1.1 101 Switching Protocols"]
        refused = [h for h in heads if h[0] == b"HTTP/1.1 503 Service Unavailable"]
        assert len(accepted) + len(refused) == ATTEMPTS  # every attempt got an answer
        assert len(accepted) > NOFILE // 2 and len(refused) > ATTEMPTS - NOFILE
        assert all(b"Retry-After: 1" in h for h in refused)
        # Refused upgrades come after the accepted ones: once full, it stays full.
        assert heads.index(refused[0]) == len(accepted)

        assert early.sync() == []  # existing connections are still served
        stats = server.stats()  # and so is REST
        assert stats["process"]["refused_no_descriptors"] == len(refused)
        cpu = stats["process"]["cpu_s"]
        time.sleep(1.0)  # a window to measure CPU in, not to synchronise
        assert server.stats()["process"]["cpu_s"] - cpu < 0.3  # no accept loop spinning

        for sock in socks[:200]:
            sock.close()
        wait_until(lambda: server.stats()["totals"]["connections"]["now"] <= len(accepted) - 150,
                   timeout=10)
        sock, head = attempt(port)
        socks.append(sock)
        assert head.startswith(b"HTTP/1.1 101 ")
    for sock in socks:
        sock.close()
    assert len(_log_lines(server, "out of file descriptors")) == 1
    assert len(_log_lines(server, "file descriptors free again")) == 1
