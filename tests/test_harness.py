"""`rtmsim run` end to end: the analysis recovers what was injected, counts reconcile,
the run directory is complete and `rtmsim analyze` reproduces it byte for byte."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from serverproc import ROOT

from sim import analysis, rundir

DELAY_MS = 50.0
DELAY_P = 0.2
ERROR_P = 0.05

VALIDATION = f"""
[scenario]
name = "validation"
description = "Known faults: +{DELAY_MS:g} ms on {DELAY_P:g} of publishes, {ERROR_P:g} errors."

[server]
seed = 11

[limits]
rate_per_second = 10000.0
burst = 10000.0

[swarm]
users = 12
spawn_rate = 12
duration_s = 12

[swarm.classes.Publisher]
fixed_count = 10
rate = 25
channels = ["v/1"]
policy = "none"

[swarm.classes.Subscriber]
fixed_count = 2
channels = ["v/1"]
subscriptions = 1
wildcard_fraction = 0.0

[[faults]]
kind = "latency"
ops = ["publish"]
ms = {DELAY_MS}
probability = {DELAY_P}
where = "before_ack"

[[faults]]
kind = "error"
code = "backend_error"
ops = ["publish"]
probability = {ERROR_P}
"""


def rtmsim(*args: str, env: dict | None = None, timeout: float = 180
           ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sim.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def validation_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("harness")
    scenario = base / "validation.toml"
    scenario.write_text(VALIDATION)
    out = base / "run"
    proc = rtmsim("run", str(scenario), "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"report: {out / rundir.REPORT}" in proc.stdout
    return out


def test_the_run_directory_is_complete(validation_run):
    for name in (rundir.SCENARIO, rundir.RUN, rundir.SWARM, rundir.LOCUST_LOG,
                 rundir.SERVER_EVENTS, rundir.SERVER_STATS, rundir.SERVER_TIMELINE,
                 rundir.SERVER_LOG, rundir.SUMMARY, rundir.REPORT,
                 f"{rundir.LOCUST_PREFIX}_stats.csv", f"{rundir.LOCUST_PREFIX}_failures.csv",
                 f"{rundir.LOCUST_PREFIX}_stats_history.csv"):
        assert (validation_run / name).is_file(), name
    assert list(validation_run.glob(rundir.CLIENT_EVENTS_GLOB))
    assert len(list((validation_run / rundir.CHARTS).glob("*.png"))) >= 6
    meta = rundir.read_json(validation_run, rundir.RUN)
    assert meta["status"] == "complete"
    # the servers were up before the swarm began: the lead a virtual run can replay
    assert meta["server_lead_s"] == round(meta["origin"] - meta["servers_ready"], 3)
    assert 0 < meta["server_lead_s"] < 60
    assert meta["started"] < meta["servers_ready"] < meta["origin"]


def test_client_and_server_counts_agree_exactly(validation_run):
    run = analysis.load_run(validation_run)
    result = analysis.reconcile(run)
    assert result["agree"], result["differences"]
    counts = analysis.error_counts(run)
    assert counts.loc["backend_error", "client"] == counts.loc["backend_error", "server"] > 0


def test_the_injected_error_rate_is_recovered(validation_run):
    run = analysis.load_run(validation_run)
    pubs = run.client[run.client.op == "publish"]
    n = len(pubs)
    errors = (pubs.outcome == "backend_error").sum()
    measured = errors / n
    sigma = math.sqrt(ERROR_P * (1 - ERROR_P) / n)
    assert n > 1000
    assert abs(measured - ERROR_P) <= 3 * sigma, (measured, sigma)
    # the analysis reports the same count per 1000 requests of the run
    assert analysis.error_counts(run).loc["backend_error", "client"] == errors


def test_the_injected_latency_is_recovered(validation_run):
    run = analysis.load_run(validation_run)
    ok = run.client[(run.client.op == "publish") & (run.client.outcome == "ok")]
    lat = ok.latency_ms.to_numpy()
    delayed = lat >= DELAY_MS
    share = delayed.mean()
    sigma = math.sqrt(DELAY_P * (1 - DELAY_P) / len(lat))
    assert abs(share - DELAY_P) <= 3 * sigma, (share, sigma)
    # With a fraction p delayed by D: the q-quantile for q > 1-p is D plus the
    # ((q - (1-p)) / p)-quantile of the undelayed latency.
    base = lat[~delayed]
    table = analysis.latency_percentiles(run).loc["publish"]
    for q in (90, 99):
        expected = DELAY_MS + np.percentile(base, (q / 100 - (1 - DELAY_P)) / DELAY_P * 100)
        assert abs(table[f"p{q}"] - expected) / expected < 0.10, (q, table[f"p{q}"], expected)


def test_analyze_reproduces_summary_byte_for_byte(validation_run):
    before = (validation_run / rundir.SUMMARY).read_bytes()
    proc = rtmsim("analyze", str(validation_run))
    assert proc.returncode == 0, proc.stderr
    assert (validation_run / rundir.SUMMARY).read_bytes() == before


def test_an_invalid_scenario_gets_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[swarm]\nusers = 0\n[swarm.classes.Publisher]\nrate = 1\n")
    proc = rtmsim("run", str(bad), "--out", str(tmp_path / "out"))
    assert (proc.returncode, proc.stderr) == (2, "rtmsim: swarm.users: must be >= 1, got 0\n")
    bad.write_text("[swarm.classes.Teleporter]\nrate = 1\n")
    proc = rtmsim("run", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.startswith("rtmsim: swarm.classes.Teleporter: unknown user class")
    assert not (tmp_path / "out").exists()


def test_a_missing_redis_server_says_how_to_install_it(tmp_path):
    scenario = tmp_path / "redis.toml"
    scenario.write_text('[server]\nbackend = "redis"\n[swarm.classes.Publisher]\nrate = 1\n')
    proc = rtmsim("run", str(scenario), "--out", str(tmp_path / "out"),
                  env={"PATH": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "redis-server is not installed" in proc.stderr
    assert "apt-get install redis-server" in proc.stderr


def test_a_server_that_cannot_start_says_why(tmp_path):
    scenario = tmp_path / "nobind.toml"
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: bind fails, nothing is sent.
    scenario.write_text('[server]\nhost = "192.0.2.1"\n[swarm.classes.Publisher]\nrate = 1\n')
    proc = rtmsim("run", str(scenario), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("rtmsim: the server did not start: ")
    assert "cannot listen on 192.0.2.1" in proc.stderr
