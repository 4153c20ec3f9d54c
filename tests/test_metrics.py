"""Prometheus exporters: the server's `/metrics` and the swarm's `--rtmsim-metrics-port`.

The server's numbers are those `/sim/v1/stats` reports for the same traffic; the
swarm's are Locust's own statistics, with failures by protocol code.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from serverproc import ROOT, ServerProcess
from wsclient import client_pool, wait_until

from loadtests.metrics import SwarmCollector, failure_code
from loadtests.reporting import CodeError

APP_CONFIG = """
[[apps]]
id = "app_m"
[apps.plan]
max_messages_per_period = 100
[[apps.keys]]
id = "pk_m"
[[apps.keys]]
id = "sk_id_m"
secret = "sk_secret_m"

[[faults]]
id = "slow"
kind = "latency"
ops = ["publish"]
distribution = "fixed"
ms = 20
probability = 1.0
where = "before_delivery"
"""
HOLD_S = 0.020
SWARM_TIMEOUT_S = 60


def scrape(url: str, token: str | None = None) -> tuple[str, str]:
    """GET a metrics endpoint: (content type, text)."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


def samples(text: str) -> list[Any]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def by_label(text: str, name: str, label: str, **where: str) -> dict[str, float]:
    """The samples named `name` whose labels include `where`: {labels[label]: value}."""
    return {s.labels[label]: s.value for s in samples(text)
            if s.name == name and where.items() <= s.labels.items()}


def one(text: str, name: str, **where: str) -> float:
    found = [s.value for s in samples(text)
             if s.name == name and where.items() <= s.labels.items()]
    assert len(found) == 1, (name, where, found)
    return found[0]


# -- the server ---------------------------------------------------------------------------

def test_server_metrics_are_the_stats_for_the_same_traffic(server_factory):
    server = server_factory(APP_CONFIG, "--instance-id", "i7")
    with client_pool(server.ws_url) as pool:
        sub, pub = pool.key("pk_m"), pool.key("pk_m")
        assert sub.request({"type": "subscribe", "channel": "room/1",
                            "requestId": "s"})["type"] == "ack"
        for i in range(3):
            pub.send({"type": "publish", "channel": "room/1", "data": i, "requestId": f"p{i}"})
            assert [f["type"] for f in pub.sync()] == ["ack"]
        assert [f["data"] for f in sub.sync() if f["type"] == "message"] == [0, 1, 2]
        pub.send_raw("not json")
        assert pub.recv()["code"] == "malformed_message"
        status, _ = server.http("DELETE", f"/v1/peers/{pub.peer_id}",
                                token="sk_id_m:sk_secret_m")
        assert status == 200
        assert pub.recv_until_closed()[1] == 4020
        stats = server.stats()
        content_type, text = scrape(server.admin_url + "/metrics")
    app = stats["apps"]["app_m"]
    where = {"instance": "i7", "app": "app_m"}
    assert content_type == CONTENT_TYPE_LATEST
    assert one(text, "rtmsim_connections_opened_total", **where) == 2
    assert one(text, "rtmsim_connections_peak", **where) == app["connections"]["peak"] == 2
    assert one(text, "rtmsim_connections_open", **where) == app["connections"]["now"] == 1
    assert by_label(text, "rtmsim_frames_received_total", "type", **where) == app[
        "frames_in"] == {"subscribe": 1, "publish": 3, "ping": 4, "invalid": 1}
    assert by_label(text, "rtmsim_frames_sent_total", "type", **where) == app["frames_out"]
    assert by_label(text, "rtmsim_errors_total", "code", **where) == {"malformed_message": 1}
    assert by_label(text, "rtmsim_closes_total", "code", **where) == {"4020": 1}
    assert one(text, "rtmsim_messages_published_total", **where) == 3
    assert one(text, "rtmsim_messages_delivered_total", **where) == 3
    assert one(text, "rtmsim_messages_sent_total", **where) == 0
    assert one(text, "rtmsim_quota_messages_used", **where) == stats["usage"]["app_m"][
        "messagesUsed"] == 3
    assert one(text, "rtmsim_quota_messages_limit", **where) == 100
    assert one(text, "rtmsim_quota_connections", **where) == 1
    hits = [f["hits"] for f in stats["faults"]["active"] if f["id"] == "slow"]
    assert one(text, "rtmsim_fault_hits_total", instance="i7", fault="slow",
               kind="latency") == hits[0] == 3
    # every injected 20 ms is one hold; each publish's server time contains its hold
    holds = by_label(text, "rtmsim_hold_seconds_bucket", "le", instance="i7")
    assert (holds["0.01"], holds["0.025"], holds["+Inf"]) == (0, 3, 3)
    assert one(text, "rtmsim_hold_seconds_sum", instance="i7") == pytest.approx(3 * HOLD_S)
    delivery = by_label(text, "rtmsim_publish_seconds_bucket", "le", **where)
    assert (delivery["0.01"], delivery["+Inf"]) == (0, 3)
    assert one(text, "rtmsim_publish_seconds_count", **where) == 3
    assert one(text, "rtmsim_publish_seconds_sum", **where) >= 3 * HOLD_S
    assert {s.labels["instance"] for s in samples(text) if s.name.startswith("rtmsim_")} == {
        "i7"}


def test_every_scrape_builds_its_own_registry(demo_server: ServerProcess):
    """A global registry would refuse the second scrape's collector (duplicate names)."""
    first = scrape(demo_server.admin_url + "/metrics")[1]
    second = scrape(demo_server.admin_url + "/metrics")[1]
    assert one(first, "rtmsim_backend_up", backend="memory") == 1
    assert one(second, "rtmsim_quota_messages_limit", app="app_demo", instance="") == 1e9


def test_metrics_take_the_sim_token_as_sim_endpoints_do(server_factory):
    server = server_factory(None, "--sim-token", "T0ken")
    status, body = server.http("GET", "/metrics")
    assert (status, body["error"]) == (401, "unauthorized")
    status, _ = server.http("GET", "/metrics", token="wrong")
    assert status == 401
    _, text = scrape(server.admin_url + "/metrics", token="T0ken")
    assert one(text, "rtmsim_quota_connections_limit", app="app_demo") == 100000


# -- the swarm ----------------------------------------------------------------------------

KNOWN_LOCUSTFILE = '''
from locust import User, constant, task

from loadtests import hooks  # noqa: F401  (rtmsim's options and the metrics hook)
from loadtests.reporting import Reporter


class Known(User):
    """Reports a known set of requests, as the protocol client does, then idles."""

    fixed_count = 1
    wait_time = constant(60)

    def on_start(self):
        reporter = Reporter(self.environment)
        for _ in range(3):
            reporter.request("publish", "ok", 2.0)
        reporter.request("publish", "backend_error", 40.0)
        reporter.request("subscribe", "close 4011", 300.0)
        reporter.delivery("message", 7.0, nbytes=10, channel="c", msg_id="m", sender="p")
        print("KNOWN REQUESTS REPORTED", flush=True)

    @task
    def idle(self):
        pass
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_swarm_metrics_are_locusts_stats_by_op_and_code(tmp_path: Path):
    locustfile = tmp_path / "known.py"
    locustfile.write_text(KNOWN_LOCUSTFILE)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", "1",
         "-r", "1", "--run-time", f"{SWARM_TIMEOUT_S}s", "--host", "ws://127.0.0.1:9",
         "--rtmsim-metrics-port", str(port), "--loglevel", "WARNING"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    reported, output = threading.Event(), []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if "KNOWN REQUESTS REPORTED" in line:
                reported.set()
        reported.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert reported.wait(SWARM_TIMEOUT_S) and proc.poll() is None, "".join(output)
        _, text = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(SWARM_TIMEOUT_S)
    assert by_label(text, "rtmsim_swarm_requests_total", "op", method="WS") == {
        "publish": 4, "subscribe": 1, "deliver": 1}
    failures = {(s.labels["op"], s.labels["code"]): s.value for s in samples(text)
                if s.name == "rtmsim_swarm_failures_total"}
    assert failures == {("publish", "backend_error"): 1, ("subscribe", "4011"): 1}
    publish = by_label(text, "rtmsim_swarm_request_duration_seconds_bucket", "le",
                       op="publish")
    assert (publish["0.001"], publish["0.0025"], publish["0.025"], publish["0.05"],
            publish["+Inf"]) == (0, 3, 3, 4, 4)
    assert one(text, "rtmsim_swarm_request_duration_seconds_sum",
               op="publish") == pytest.approx(0.046)
    assert one(text, "rtmsim_swarm_users") == 1
    with pytest.raises(urllib.error.URLError):  # stopped with Locust
        scrape(f"http://127.0.0.1:{port}/metrics")


def test_failure_codes_are_protocol_codes_in_either_form_locust_keeps():
    assert failure_code(CodeError("backend_error")) == "backend_error"  # standalone
    assert failure_code(CodeError("close 4011")) == "4011"
    assert failure_code("CodeError('over_message_quota')") == "over_message_quota"  # master
    assert failure_code("CodeError('close 1001')") == "1001"
    assert failure_code("ValueError('x')") == "ValueError('x')"  # not ours: as Locust has it


def fake_master(errors: list[tuple[str, str, str, int]]) -> Any:
    """The attributes the collector reads of a master's Environment: the workers'
    failures arrive as their repr strings."""
    entry = SimpleNamespace(num_requests=5, response_times={3: 4, 120: 1},
                            total_response_time=130.0)
    stats = SimpleNamespace(
        entries={("publish", "WS"): entry},
        errors={str(i): SimpleNamespace(method=m, name=n, error=e, occurrences=k)
                for i, (m, n, e, k) in enumerate(errors)})
    return SimpleNamespace(runner=SimpleNamespace(stats=stats, user_count=7))


def test_collector_sums_a_masters_failures_per_code():
    environment = fake_master([("WS", "publish", "CodeError('backend_error')", 2),
                               ("WS", "publish", "CodeError('close 4011')", 1)])
    families = {f.name: f for f in SwarmCollector(environment).collect()}
    failures = {s.labels["code"]: s.value for s in families["rtmsim_swarm_failures"].samples}
    assert failures == {"backend_error": 2, "4011": 1}
    buckets = {s.labels["le"]: s.value
               for s in families["rtmsim_swarm_request_duration_seconds"].samples
               if s.name.endswith("_bucket")}
    assert (buckets["0.0025"], buckets["0.005"], buckets["0.1"], buckets["0.25"]) == (
        0, 4, 4, 5)
    assert families["rtmsim_swarm_users"].samples[0].value == 7


def test_a_worker_serves_no_metrics_the_master_serves_the_sum(tmp_path: Path):
    """--processes 2: two workers and a master; a worker that served would find the
    port taken and stop, and the master's numbers are both workers' together."""
    locustfile = tmp_path / "known.py"
    locustfile.write_text(KNOWN_LOCUSTFILE.replace("fixed_count = 1", ""))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "-u", "2",
         "-r", "2", "--processes", "2", "--run-time", f"{SWARM_TIMEOUT_S}s",
         "--host", "ws://127.0.0.1:9", "--rtmsim-metrics-port", str(port),
         "--loglevel", "WARNING"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(proc.stdout or []), daemon=True).start()

    def summed() -> str | None:
        try:
            text = scrape(f"http://127.0.0.1:{port}/metrics")[1]
        except OSError:
            return None
        requests = by_label(text, "rtmsim_swarm_requests_total", "op")
        return text if requests.get("publish") == 8 else None

    try:
        text = wait_until(summed, timeout=30, interval=0.2)  # workers report every 3 s
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(SWARM_TIMEOUT_S)
    assert by_label(text, "rtmsim_swarm_requests_total", "op") == {
        "publish": 8, "subscribe": 2, "deliver": 2}
    failures = {(s.labels["op"], s.labels["code"]): s.value for s in samples(text)
                if s.name == "rtmsim_swarm_failures_total"}
    assert failures == {("publish", "backend_error"): 2, ("subscribe", "4011"): 2}
    assert "Address already in use" not in "".join(output)


def test_rtmsim_run_prints_both_metrics_urls_and_serves_them(tmp_path):
    """`rtmsim run` exposes the swarm's and the server's metrics while it runs."""
    scenario = tmp_path / "m.toml"
    scenario.write_text("""
[swarm]
users = 2
spawn_rate = 2
duration_s = 6
[swarm.classes.Publisher]
fixed_count = 2
rate = 5
channels = ["m/1"]
""")
    proc = subprocess.Popen([sys.executable, "-m", "sim.cli", "run", str(scenario), "--out",
                             str(tmp_path / "run"), "--no-progress"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = next(line for line in proc.stdout if "Prometheus metrics:" in line)
        swarm_url = line.split("swarm ")[1].split(",")[0]
        server_url = line.split("server ")[1].strip()
        names: set[str] = set()
        deadline = time.monotonic() + SWARM_TIMEOUT_S
        while "rtmsim_swarm_users" not in names and time.monotonic() < deadline:
            try:  # Locust opens the port once it has started
                names = {f.name for f in text_string_to_metric_families(scrape(swarm_url)[1])}
            except OSError:
                time.sleep(0.1)
        assert "rtmsim_swarm_users" in names
        server = {f.name for f in text_string_to_metric_families(scrape(server_url)[1])}
        assert "rtmsim_connections_open" in server
        proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(60)
