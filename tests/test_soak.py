"""A short soak through `bench.soak`: the server gives back every descriptor and task.

One real server process and one soak client process on loopback (free ports), 200
connections for 30 s with a fifth of them reconnecting every ~2 s. Asserts behaviour
only: nothing here looks at speed or at the RSS slope (too noisy over seconds).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from serverproc import ROOT

from bench.benchmarks import Placement
from bench.soak import sample_interval, slope_mb_per_10min, soak
from bench.soakload import Roles

CONNECTIONS = 200


@pytest.fixture(scope="module")
def result() -> dict:
    return soak(minutes=0.5, connections=CONNECTIONS, churn_fraction=0.2, churn_s=2.0,
                warmup_minutes=0.1, placement=Placement.choose(pinned=False),
                log=lambda _: None)


def test_descriptors_and_tasks_come_back_to_their_start_values(result):
    # Every reading includes the stats request itself (a socket, aiohttp's connection
    # and request tasks), so the three compare as they are: no slack.
    fds, tasks = result["fds"], result["tasks"]
    assert fds["loaded"] == fds["start"] + CONNECTIONS  # one socket per open connection
    assert tasks["loaded"] >= tasks["start"] + CONNECTIONS  # a handler task each, at least
    assert fds["after"] == fds["start"]
    assert tasks["after"] == tasks["start"]


def test_no_client_or_server_saw_anything_unexpected(result):
    assert result["errors"] == {
        "client_error_frames": {}, "client_unexpected_closes": {},
        "client_failed_connects": {}, "server_errors": {}, "server_closes": {},
    }
    assert result["unexpected"] == []


def test_every_publish_and_send_was_delivered(result):
    m = result["messages"]
    assert m["published"] > 0 and m["sent"] > 0
    assert m["server"]["published"] == m["published"]
    assert m["server"]["sent"] == m["sent"]
    stable = m["stable"]
    assert stable["expected"] > 0
    assert stable["received"] == stable["expected"]
    assert stable["direct_received"] == stable["direct_expected"] == m["sent"]


def test_churn_reconnected_through_every_kind_of_leave(result):
    assert result["churn_reconnects"] > 0
    assert set(result["churn_leaves"]) == {"clean", "eof", "reset"}
    assert all(n > 0 for n in result["churn_leaves"].values())
    # The server admitted exactly the first connections plus one per reconnect.
    assert result["server_connections_total"] == CONNECTIONS + result["churn_reconnects"]


def test_slope_is_least_squares_in_mb_per_10_minutes():
    assert slope_mb_per_10min([(0.0, 100.0), (60.0, 101.0), (120.0, 102.0)]) == 10.0
    assert slope_mb_per_10min([(0.0, 50.0), (30.0, 52.0), (60.0, 50.0)]) == 0.0
    assert slope_mb_per_10min([(0.0, 1.0), (5.0, 2.0)]) is None  # too few to fit


def test_samples_are_proportional_to_the_duration():
    assert sample_interval(600) == 5.0  # 120 samples in 10 minutes
    assert sample_interval(24) == 1.0
    assert sample_interval(3) == 0.5


def test_roles_split_the_connections():
    assert Roles.plan(200, 0.2) == Roles(stable=156, churners=40, publishers=2, senders=2)
    with pytest.raises(ValueError, match="no stable subscriber"):
        Roles.plan(3, 0.2)


@pytest.mark.parametrize(("args", "message"), [
    (["--churn-fraction", "1"], "argument --churn-fraction: must be in [0, 1), got 1"),
    (["--minutes", "0"], "argument --minutes: must be > 0, got 0"),
    (["--minutes", "1", "--warmup-minutes", "1"], "--warmup-minutes 1 leaves no time"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, message):
    proc = subprocess.run([sys.executable, "-m", "bench", "soak", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr
