"""`rtmsim serve --instances N`: N server processes sharing one Redis.

Each instance is a child `rtmsim serve` on consecutive ports (`--port`, `--port+1`,
...; port 0 lets each pick a free one), named i0, i1, ... so one machine's cores are
all used. Ctrl-C or SIGTERM stops every child (each sends going_away + 1001 to its
connections) and leaves no process behind.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from typing import Any

from .config import Config

STOP_TIMEOUT_S = 10


def child_command(args: argparse.Namespace, config: Config, index: int) -> list[str]:
    srv = config.server
    port = srv.port + index if srv.port else 0
    admin = srv.admin_port + index if srv.admin_port else 0
    cmd = [sys.executable, "-m", "sim.cli", "serve", "--port", str(port),
           "--admin-port", str(admin), "--instance-id", f"i{index}",
           "--backend", "redis", "--redis-url", srv.redis_url,
           "--redis-prefix", srv.redis_prefix, "--host", srv.host, "--seed", str(srv.seed)]
    for flag, value in (("--config", args.config), ("--events", args.events),
                        ("--sim-token", srv.sim_token)):
        if value:
            cmd += [flag, value]
    return cmd


def run_instances(args: argparse.Namespace, config: Config) -> int:
    children: list[subprocess.Popen[Any]] = []
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for i in range(args.instances):
            children.append(subprocess.Popen(child_command(args, config, i),
                                             start_new_session=True))
        sys.stdout.write(f"rtmsim: {args.instances} instances started (pids "  # one write
                         f"{', '.join(str(c.pid) for c in children)}); Ctrl-C stops all\n")
        sys.stdout.flush()
        while not stopping:
            failed = [c for c in children if c.poll() is not None]
            if failed:
                code = failed[0].returncode
                print(f"rtmsim: instance {children.index(failed[0])} exited with code {code}; "
                      "stopping the others", file=sys.stderr, flush=True)
                return 2 if code else 0
            time.sleep(0.2)
        return 0
    finally:
        _stop_all(children)


def _stop_all(children: list[subprocess.Popen[Any]]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
