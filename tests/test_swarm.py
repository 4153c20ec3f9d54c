"""Short Locust swarms against a real server process: truthful, reconciled counts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serverproc import ROOT, start_server

from loadtests.accounting import delivery_report, load_client_events
from loadtests.catalog import BAD_INPUT
from server.codes import ERROR_CODES, Retry

FAST = "[limits]\nrate_per_second = 100000.0\nburst = 100000.0\n"
SWARM_TIMEOUT_S = 90


def run_swarm(server, run_dir: Path, classes: dict, *, users: int, seconds: int,
              model: str = "closed") -> subprocess.CompletedProcess:
    """Run the provided locustfile headless for `seconds`; users finish their task."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "swarm.json"
    config.write_text(json.dumps({"classes": classes, "seed": 1, "model": model}))
    cmd = [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless",
           "-u", str(users), "-r", str(users), "--run-time", f"{seconds}s",
           "--stop-timeout", "10", "--host", server.ws_url.removesuffix("/v1"),
           "--rtmsim-run-dir", str(run_dir), "--rtmsim-config", str(config),
           "--exit-code-on-error", "0", "--only-summary", "--loglevel", "WARNING",
           *classes]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=SWARM_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def error_outcomes(df) -> Counter:
    """Error codes clients received, from the raw log (requests only, not deliveries)."""
    rows = df[df.outcome.isin(ERROR_CODES) & (df.op != "deliver")]
    return Counter(rows.outcome)


@pytest.fixture
def fast_server(server_factory):
    return server_factory(FAST)


# The two swarms of the first two tests, by name: (classes, users, seconds).
SWARMS = {
    "reconcile": ({
        "Subscriber": {"fixed_count": 6, "channels": ["room/1", "room/2"], "subscriptions": 2,
                       "wildcard_fraction": 0.5},
        "Publisher": {"fixed_count": 3, "rate": 20, "channels": ["room/1", "room/2"]},
        "Misbehaving": {"fixed_count": 2, "rate": 10},
    }, 11, 6),
    "default_policy": ({"Publisher": {"fixed_count": 3, "rate": 20,
                                      "channels": ["_system/x", "ok/1"],
                                      "policy": "default"}}, 3, 4),
}


@pytest.fixture(scope="module")
def swarms(tmp_path_factory) -> Iterator[dict]:
    """The SWARMS side by side, each against its own fresh server (whose counts are its
    alone; idle afterwards until the module ends), by name: (server, run directory) or
    what the run raised (raised again by its test alone)."""
    servers = {}
    try:
        for name in SWARMS:
            servers[name] = start_server(FAST, tmp=tmp_path_factory.mktemp(f"{name}-server"))

        def run(name: str) -> tuple[object, Path] | BaseException:
            classes, users, seconds = SWARMS[name]
            run_dir = tmp_path_factory.mktemp(name)
            try:
                run_swarm(servers[name], run_dir, classes, users=users, seconds=seconds)
            except Exception as exc:  # an AssertionError with locust's output
                return exc
            return servers[name], run_dir

        with ThreadPoolExecutor(len(SWARMS)) as pool:
            done = dict(zip(SWARMS, pool.map(run, SWARMS), strict=True))
        yield done
    finally:
        for server in servers.values():
            server.stop()


def swarm_of(swarms: dict, name: str) -> tuple:
    """(server, run directory) of one of `swarms`, or what its run raised, raised."""
    if isinstance(swarms[name], BaseException):
        raise swarms[name]
    return swarms[name]


def test_counts_reconcile_and_nothing_is_lost(swarms):
    fast_server, run_dir = swarm_of(swarms, "reconcile")
    df = load_client_events(run_dir)
    server_errors = Counter(fast_server.stats()["totals"]["errors"])
    assert error_outcomes(df) == server_errors
    # every Misbehaving class produced its own code
    bad = df[df.user_class == "Misbehaving"]
    for kind, (code, _) in BAD_INPUT.items():
        outcomes = set(bad[bad.op == kind].outcome)
        assert outcomes == {code}, (kind, outcomes)
    # every close the server sent is a `close` row on the client side
    closes = Counter(fast_server.stats()["totals"]["closes"])
    client_closes = Counter(df[df.op == "close"].outcome.str.removeprefix("close "))
    assert closes["1009"] > 0
    assert client_closes == closes
    report = delivery_report(df)
    assert report.published > 50 and report.expected > 100
    assert (report.lost, report.duplicates, report.reordered, report.unexpected) == (0, 0, 0, 0)
    # latencies are unrounded floats
    lat = df[df.op == "publish"].latency_ms
    assert (lat != lat.round()).any()


def test_default_policy_never_retries_never_codes(swarms):
    _, run_dir = swarm_of(swarms, "default_policy")
    df = load_client_events(run_dir)
    reserved = df[(df.op == "publish") & (df.channel == "_system/x")]
    assert len(reserved) > 10
    assert set(reserved.outcome) == {"channel_reserved"}
    assert ERROR_CODES["channel_reserved"].retry is Retry.NEVER
    assert (reserved.attempt == 1).all()


def attempts_per_operation(df) -> float:
    pubs = df[df.op == "publish"]
    return len(pubs) / max(1, (pubs.attempt == 1).sum())


def test_retry_budget_caps_amplification_while_naive_explodes(server_factory, tmp_path):
    faults = '\n[[faults]]\nkind = "error"\ncode = "backend_error"\nprobability = 0.5\n' \
             'ops = ["publish"]\n'
    budgeted = {"Publisher": {"fixed_count": 4, "rate": 20, "channels": ["b/1"],
                              # 10% of first attempts, and no free allowance on top
                              "policy": {"policy": "default",
                                         "budget": {"ratio": 0.1, "min_retries": 0},
                                         "backoff": "none", "max_attempts": 1000}}}
    naive = {"Publisher": {"fixed_count": 4, "rate": 20, "channels": ["b/1"],
                           "policy": "naive"}}
    # Two servers and two swarms, side by side: each swarm has its own server and log.
    servers = {"budget": server_factory(FAST + faults), "naive": server_factory(FAST + faults)}
    classes = {"budget": budgeted, "naive": naive}

    def ratio(name: str) -> float:
        run_swarm(servers[name], tmp_path / name, classes[name], users=4, seconds=5)
        return attempts_per_operation(load_client_events(tmp_path / name))

    with ThreadPoolExecutor(2) as pool:
        budget_ratio, naive_ratio = pool.map(ratio, ("budget", "naive"))
    assert budget_ratio <= 1.1
    assert naive_ratio >= 1.8  # ~2 expected attempts per publish at p = 0.5


def test_a_host_that_is_not_a_websocket_url_is_one_clear_line(tmp_path):
    cmd = [sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless",
           "-u", "1", "-r", "1", "--run-time", "2s", "--host", "http://127.0.0.1:8765",
           "Publisher"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=SWARM_TIMEOUT_S)
    assert proc.returncode != 0
    assert "rtmsim: --host must be a ws:// or wss:// URL" in proc.stderr
    assert "Traceback" not in proc.stderr


OWN_LOCUSTFILE = '''
from loadtests import users


class MyPublisher(users.Publisher):
    defaults = {**users.Publisher.defaults, "rate": 20, "channels": ["orders/eu"],
                "policy": {"policy": "default", "backoff": "full_jitter", "budget": 0.1}}
'''


def test_a_locustfile_of_a_few_lines_gets_the_options_and_the_event_log(fast_server,
                                                                         tmp_path):
    locustfile = tmp_path / "mylocust.py"
    locustfile.write_text(OWN_LOCUSTFILE)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", "2",
           "-r", "2", "--run-time", "3s", "--stop-timeout", "10",
           "--host", fast_server.ws_url.removesuffix("/v1"), "--rtmsim-run-dir", str(run_dir),
           "--rtmsim-key", "pk_live_demo", "--exit-code-on-error", "0", "--only-summary"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=SWARM_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = load_client_events(run_dir)
    assert set(df.user_class) == {"MyPublisher"}  # the imported base class did not run
    pubs = df[(df.op == "publish") & (df.outcome == "ok")]
    assert set(pubs.channel) == {"orders/eu"} and set(df.policy) == {"default"}
    assert 20 <= len(pubs) <= 2 * 20 * 4  # two users at 20/s for about 3 s
    assert len(pubs) == fast_server.stats()["totals"]["messages"]["published"]


BAD_DEFAULTS_LOCUSTFILE = '''
from loadtests import users


class Hasty(users.Publisher):
    defaults = {**users.Publisher.defaults, "rate": -1}
'''


def test_a_bad_parameter_stops_locust_with_one_line_naming_the_key(tmp_path):
    locustfile = tmp_path / "badlocust.py"
    locustfile.write_text(BAD_DEFAULTS_LOCUSTFILE)
    config = tmp_path / "swarm.json"
    config.write_text(json.dumps({"classes": {"Publisher": {"channels": []}}}))
    for extra, message in (
            ([str(locustfile)], "rtmsim: swarm.classes.Hasty.rate: must be > 0, got -1"),
            (["loadtests/locustfile.py", "--rtmsim-config", str(config), "Publisher"],
             "rtmsim: swarm.classes.Publisher.channels: must be a non-empty list of strings, "
             "got []")):
        cmd = [sys.executable, "-m", "locust", "--headless", "-u", "1", "-r", "1",
               "--run-time", "2s", "--host", "ws://127.0.0.1:9", "-f", *extra]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              timeout=SWARM_TIMEOUT_S)
        assert proc.returncode != 0
        assert message in proc.stderr.splitlines()
        assert "Traceback" not in proc.stderr
