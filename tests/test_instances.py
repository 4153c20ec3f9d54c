"""`rtmsim serve --instances N`: N processes on consecutive ports, all stopped by Ctrl-C."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading

from redisproc import free_ports
from serverproc import ROOT
from wsclient import client_pool

from server import app
from server.config import default_config


def test_the_banner_reaches_a_shared_pipe_in_whole_lines(monkeypatch):
    """Instances share one stdout: the line a harness parses is one write of its own,
    and the rest another (with PYTHONUNBUFFERED, `print` wrote each line and its
    newline apart, and two instances' banners interleaved within a line)."""
    writes: list[str] = []

    class Out:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stdout", Out())
    config = default_config()
    config = dataclasses.replace(config, server=dataclasses.replace(config.server,
                                                                    backend="redis"))
    app._announce(config, "127.0.0.1", 1001, 1002, "i0")
    assert writes[0] == ("rtmsim listening ws=ws://127.0.0.1:1001/v1 "
                         "admin=http://127.0.0.1:1002 instance=i0\n")
    assert len(writes) == 2 and writes[1].endswith("then exit 0\n")
    assert writes[1].startswith("  backend    redis ")


def test_instances_need_the_redis_backend():
    proc = subprocess.run([sys.executable, "-m", "sim.cli", "serve", "--instances", "2"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("rtmsim: --instances 2 needs the Redis backend")
    assert proc.stderr.count("\n") == 1


def test_instances_share_redis_and_stop_together(redis_server):
    port = free_ports(2)
    admin = free_ports(2, avoid=(port, port + 1))
    cmd = [sys.executable, "-m", "sim.cli", "serve", "--instances", "2", "--backend", "redis",
           "--redis-url", redis_server.url, "--port", str(port), "--admin-port", str(admin)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ready: list[re.Match[str]] = []
    pids: list[int] = []
    both = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if m := re.search(r"rtmsim listening ws=(\S+) admin=\S+ instance=(\S+)", line):
                ready.append(m)
            if m := re.search(r"pids ([\d, ]+)\)", line):
                pids.extend(int(p) for p in m.group(1).split(", "))
            if len(ready) == 2:
                both.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert both.wait(30), "instances did not start"
        urls = {m.group(2): m.group(1) for m in ready}
        assert urls == {"i0": f"ws://127.0.0.1:{port}/v1", "i1": f"ws://127.0.0.1:{port + 1}/v1"}
        with client_pool(urls["i0"]) as p0, client_pool(urls["i1"]) as p1:
            a, b = p0.key(), p1.key()
            assert a.welcome["metadata"] == {"instanceId": "i0"}
            b.send({"type": "subscribe", "channel": "x", "requestId": "s"})
            assert b.recv() == {"type": "ack", "requestId": "s"}
            b.sync()
            a.send({"type": "publish", "channel": "x", "data": 1})
            assert b.recv()["data"] == 1
            proc.send_signal(signal.SIGINT)
            assert a.recv_until_closed(timeout=10)[1] == 1001
            assert b.recv_until_closed(timeout=10)[1] == 1001
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(pids) == 2
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid), f"instance {pid} left"


def _is_zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] == "Z"
