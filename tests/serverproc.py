"""Start and stop real `rtmsim serve` processes on free loopback ports for tests.

The server binds port 0 and announces its ports on its first stdout line; we wait on
that line (an event), never on a sleep.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"rtmsim listening ws=(\S+) admin=(\S+)")
START_TIMEOUT_S = 30


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    ws_url: str  # ws://127.0.0.1:PORT/v1
    admin_url: str  # http://127.0.0.1:PORT
    events_path: Path | None
    output: list[str] = field(default_factory=list)

    def url(self, **params: str) -> str:
        return f"{self.ws_url}?{urlencode(params)}" if params else self.ws_url

    def http(self, method: str, path: str, body: Any = None, *, token: str | None = None,
             raw: bytes | None = None, headers: dict[str, str] | None = None
             ) -> tuple[int, Any]:
        """One REST call; (status, parsed JSON body or raw text)."""
        data = raw if raw is not None else (
            json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.admin_url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, text = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text.decode(errors="replace")

    def stats(self) -> dict[str, Any]:
        status, body = self.http("GET", "/sim/v1/stats")
        assert status == 200, body
        return body

    def events(self) -> list[dict[str, Any]]:
        assert self.events_path is not None
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines()
                if line.strip()]

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(config: str | None = None, *args: str, events: bool = True,
                 tmp: Path | None = None, nofile: int | None = None) -> ServerProcess:
    """Start `rtmsim serve` with an optional TOML config text; wait until it listens.

    `nofile` lowers the server's RLIMIT_NOFILE (soft and hard), to run it out of file
    descriptors.
    """
    tmp = tmp or Path(tempfile.mkdtemp(prefix="rtmsim-test-"))
    cmd = [sys.executable, "-m", "sim.cli", "serve", "--port", "0", "--admin-port", "0"]
    if config is not None:
        cfg = tmp / "server.toml"
        cfg.write_text(config)
        cmd += ["--config", str(cfg)]
    events_path = tmp / "events.jsonl" if events else None
    if events_path is not None:
        cmd += ["--events", str(events_path)]
    cmd += list(args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    def limit_descriptors() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, preexec_fn=limit_descriptors)
    output: list[str] = []
    ready = threading.Event()
    found: dict[str, str] = {}

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            m = READY.search(line)
            if m and not ready.is_set():
                found["ws"], found["admin"] = m.group(1), m.group(2)
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(START_TIMEOUT_S) or "ws" not in found:
        proc.kill()
        raise RuntimeError("server did not start:\n" + "".join(output))
    return ServerProcess(proc, found["ws"], found["admin"], events_path, output)


@contextmanager
def served(config: str | None, tmp: Path, *args: str) -> Iterator[ServerProcess]:
    """A server for the length of a `with` block (module-scoped fixtures use it)."""
    server = start_server(config, *args, tmp=tmp)
    try:
        yield server
    finally:
        server.stop()
