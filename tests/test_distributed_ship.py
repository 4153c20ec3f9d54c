"""Workers on other machines: a master and two workers that share nothing but the
(loopback) network. The workers have no run directory; their event logs travel over
Locust's own worker-to-master messages, and the master's run directory holds them all,
with counts that reconcile exactly with the server's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_distributed import CLASSES, FAST, HEADLESS, TIMEOUT_S, assert_reconciled, free_port

from loadtests.eventlog import ShippedLogs, parquet_bytes, table_of, write_batch

LOCUSTFILE = Path(__file__).resolve().parent.parent / "loadtests" / "locustfile.py"


# Every publish is acked 3 s late: a publisher publishes at about 0, 3 and 6 s, so when
# the 8 s run stops, each still waits a second or more for its last ack (its task ends,
# --stop-timeout allowing), well past the half second Locust's master keeps reading
# its workers after telling them to quit. Only the master's last call
# (`loadtests.locustlog.FINISH`) brings those rows home. The publishes of about 3 s are
# owed to every subscriber (subscribed by then, still there at their ack + the
# accounting's 1 s grace); in a 5 s run only a first publish sent after some
# subscription's ack could be, which a slow start (a loaded machine) left to chance.
RUN_8S = tuple("8s" if arg == "5s" else arg for arg in HEADLESS)
SLOW_ACKS = FAST + """
[[faults]]
kind = "latency"
ops = ["publish"]
distribution = "fixed"
ms = 3000
where = "before_ack"
"""


@pytest.fixture
def slow_acks_server(server_factory):
    return server_factory(SLOW_ACKS)


def host_dir(tmp_path: Path, name: str) -> Path:
    """A machine of its own: a working directory holding only its swarm settings."""
    d = tmp_path / name
    d.mkdir()
    (d / "swarm.json").write_text(json.dumps({"classes": CLASSES, "seed": 1}))
    return d


def locust(server, *extra: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE),
            "--host", server.ws_url.removesuffix("/v1"), "--rtmsim-config", "swarm.json",
            "--loglevel", "WARNING", *extra]


def test_workers_without_a_run_directory_ship_their_logs_to_the_master(slow_acks_server, tmp_path):
    port = free_port()
    hosts = [host_dir(tmp_path, name) for name in ("master", "w1", "w2")]
    master = locust(slow_acks_server, *RUN_8S, "--rtmsim-run-dir", "run", "--master",
                    "--expect-workers", "2", "--master-bind-host", "127.0.0.1",
                    "--master-bind-port", str(port), *CLASSES)
    worker = locust(slow_acks_server, "--worker", "--master-host", "127.0.0.1",
                    "--master-port", str(port), *CLASSES)
    procs = [subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
             for cmd, cwd in zip((master, worker, worker), hosts, strict=True)]
    try:
        out, _ = procs[0].communicate(timeout=TIMEOUT_S)
        assert procs[0].returncode == 0, out[-3000:]
        for w in procs[1:]:
            w.wait(TIMEOUT_S)  # workers quit when the master does
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
    assert "no last event-log batch" not in out
    for worker_dir in hosts[1:]:  # nothing written where the workers ran
        assert [p.name for p in worker_dir.iterdir()] == ["swarm.json"]
    run_dir = hosts[0] / "run"
    assert not list(run_dir.rglob(".*.tmp"))
    assert_reconciled(slow_acks_server, run_dir, processes=2)


def test_a_shipped_batch_is_the_file_a_local_log_writes(tmp_path):
    table = table_of([(1_800_000_000.5, "u1", "Publisher", "publish", "ok", 0.25, 1, 254,
                       "room/1", "u1:1", "", None, "default")])
    data = parquet_bytes(table)
    assert write_batch(tmp_path, 1, table).read_bytes() == data
    written = ShippedLogs(tmp_path / "run").write("host_ab12", "w-1", 7, data)
    assert written == tmp_path / "run" / "client-events-w-1" / "000007.parquet"
    assert pq.read_table(written).equals(table)


def test_two_workers_with_one_tag_get_two_directories(tmp_path):
    collector = ShippedLogs(tmp_path)
    first = collector.directory("box_" + "a" * 32, "box-7")
    second = collector.directory("box_" + "b" * 32, "box-7")
    (tmp_path / "client-events-box-9").mkdir()  # an earlier process of that name
    third = collector.directory("box_" + "c" * 32, "box-9")
    assert [first.name, second.name, third.name] == [
        "client-events-box-7", "client-events-box-7-bbbbbbbb", "client-events-box-9-cccccccc"]
    assert collector.directory("box_" + "b" * 32, "box-7") == second  # claimed once
