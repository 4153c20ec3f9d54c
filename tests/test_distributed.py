"""Distributed Locust: `--processes N`, and a master with workers, all on loopback.

Each worker process writes its own raw event log into the one run directory, and the
counts of all of them together reconcile with the server's: the promise holds
whatever the number of load processes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from serverproc import ROOT, start_server

from loadtests.accounting import delivery_report, load_client_events

FAST = "[limits]\nrate_per_second = 100000.0\nburst = 100000.0\n"
CLASSES = {
    "Subscriber": {"fixed_count": 4, "channels": ["d/1", "d/2"], "subscriptions": 2,
                   "wildcard_fraction": 0.0},
    "Publisher": {"fixed_count": 4, "rate": 20, "channels": ["d/1", "d/2"]},
}
USERS = 8
TIMEOUT_S = 120


def locust_cmd(server, run_dir: Path, *extra: str) -> list[str]:
    config = run_dir / "swarm.json"
    config.write_text(json.dumps({"classes": CLASSES, "seed": 1}))
    return [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py",
            "--host", server.ws_url.removesuffix("/v1"), "--rtmsim-run-dir", str(run_dir),
            "--rtmsim-config", str(config), "--loglevel", "WARNING", *extra]


HEADLESS = ("--headless", "-u", str(USERS), "-r", str(USERS), "--run-time", "5s",
            "--stop-timeout", "10", "--exit-code-on-error", "0", "--only-summary")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def started(cmd: list[str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def assert_reconciled(server, run_dir: Path, processes: int) -> None:
    logs = sorted(p for p in run_dir.glob("client-events-*") if p.is_dir())
    assert len(logs) == processes, [p.name for p in logs]
    df = load_client_events(run_dir)
    rows = [pq.read_table(list(path.glob("*.parquet"))).num_rows for path in logs]
    assert all(n > 0 for n in rows)  # every process ran users and logged them
    assert df.user.nunique() == USERS
    totals = server.stats()["totals"]
    acked = int(((df.op == "publish") & (df.outcome == "ok")).sum())
    assert acked == totals["messages"]["published"] > 0
    report = delivery_report(df)
    assert report.expected > 0
    assert (report.lost, report.duplicates, report.unexpected) == (0, 0, 0)


def run_processes(server, run_dir: Path) -> str | None:
    """`--processes 2` into run_dir; None when it exited 0, else the tail of its output."""
    cmd = locust_cmd(server, run_dir, *HEADLESS, "--processes", "2", *CLASSES)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    return None if proc.returncode == 0 else proc.stdout[-3000:] + proc.stderr[-3000:]


def run_master_and_workers(server, run_dir: Path) -> str | None:
    """A master and two workers into run_dir; None when the master exited 0 and the
    workers quit with it, else the tail of the master's output."""
    port = free_port()
    master = locust_cmd(server, run_dir, *HEADLESS, "--master", "--expect-workers",
                        "2", "--master-bind-host", "127.0.0.1", "--master-bind-port",
                        str(port), *CLASSES)
    worker = locust_cmd(server, run_dir, "--worker", "--master-host", "127.0.0.1",
                        "--master-port", str(port), *CLASSES)
    with started(master) as m, started(worker) as w1, started(worker) as w2:
        out, _ = m.communicate(timeout=TIMEOUT_S)
        if m.returncode != 0:
            return out[-3000:]
        for w in (w1, w2):
            w.wait(TIMEOUT_S)  # workers quit when the master does
    return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Iterator[dict[str, tuple[object, Path, str | None]]]:
    """Both swarms of this module, side by side, each with its own fresh server and run
    directory (its counts are that server's alone), by name: (server, run directory,
    None or the failure's output). The servers live until the module ends, idle."""
    plans = {"processes": run_processes, "master": run_master_and_workers}
    servers, dirs = {}, {}
    try:
        for name in plans:
            dirs[name] = tmp_path_factory.mktemp(name)
            (dirs[name] / "server").mkdir()
            servers[name] = start_server(FAST, tmp=dirs[name] / "server")

        def run(name: str) -> str | None:
            (dirs[name] / "run").mkdir()
            return plans[name](servers[name], dirs[name] / "run")

        with ThreadPoolExecutor(len(plans)) as pool:
            failures = dict(zip(plans, pool.map(run, plans), strict=True))
        yield {name: (servers[name], dirs[name] / "run", failures[name]) for name in plans}
    finally:
        for server in servers.values():
            server.stop()


def test_processes_share_one_run_directory(runs):
    server, run_dir, failure = runs["processes"]
    assert failure is None, failure
    assert_reconciled(server, run_dir, processes=2)


def test_master_and_workers(runs):
    server, run_dir, failure = runs["master"]
    assert failure is None, failure
    assert_reconciled(server, run_dir, processes=2)
