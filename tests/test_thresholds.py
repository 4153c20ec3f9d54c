"""`[thresholds]`, JUnit and the regression gate: what makes a run fail a build.

Parsing and judging are plain function calls; two short real runs check the whole
path: a failing threshold exits 1 and its JUnit case names it, an `abort_on_fail`
threshold stops a run early, and `rtmsim compare --baseline` exits 1 on a regression.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serverproc import ROOT
from test_harness import rtmsim

from server.schema import ConfigError
from sim import analysis, rundir
from sim.clients.runner import load_clients_scenario
from sim.report.junit import Case, write_junit
from sim.scenario import load_scenario, parse_scenario
from sim.thresholds import evaluate, live_failures, metric_for, parse_thresholds

SUMMARY = {
    "requests": {"total": 1000, "ok": 950, "per_op": {"publish": 900, "subscribe": 100}},
    "errors": {"backend_error": {"client": 40, "server": 40, "per_1000_requests": 40.0,
                                 "client_fault": False},
               "channel_reserved": {"client": 10, "server": 10, "per_1000_requests": 10.0,
                                    "client_fault": True}},
    "closes": {"4011": {"client": 3, "server": 3, "server_per_s": 0.1}},
    "latency_ms": {"publish": {"count": 900, "p50": 2.0, "p99": 120.5, "max": 300.0}},
    "delivery_latency_ms": {"count": 0, "p99": None},
    "delivery": {"lost": 0, "duplicates": 2},
    "reconciliation": {"agree": True},
    "recovery": [{"id": "f1", "recovered_s": 1.5}, {"id": "f2", "recovered_s": None}],
    "retry_amplification": {"default": {"amplification": 1.08}},
    "warnings": ["one"],
}


def judge(table: dict) -> dict[str, dict]:
    rows = evaluate(parse_thresholds(table, fault_ids=["f1", "f2"]), SUMMARY)
    return {r["metric"]: r for r in rows}


# -- parsing -------------------------------------------------------------------------------

def test_every_form_of_a_threshold_parses():
    ts = parse_thresholds({
        "latency.publish.p99": "< 100",
        "errors.backend_error.server": {"condition": "<= 50", "abort_on_fail": True},
        "delivery.lost": ["== 0", ">= 0"],
        "reconciled": "== true",
        "latency.publish.p99.9": "< 500",
    })
    assert [(t.metric, t.condition_text, t.abort_on_fail) for t in ts] == [
        ("latency.publish.p99", "< 100", False),
        ("errors.backend_error.server", "<= 50", True),
        ("delivery.lost", "== 0 and >= 0", False),
        ("reconciled", "== true", False),
        ("latency.publish.p99.9", "< 500", False)]
    assert parse_thresholds({t.metric: t.to_spec() for t in ts}) == ts  # run.json round trip


@pytest.mark.parametrize(("table", "message"), [
    ({"latency.publsh.p99": "< 1"}, 'thresholds."latency.publsh.p99": unknown metric'),
    ({"errors.no_such_code.client": "< 1"}, 'thresholds."errors.no_such_code.client": unknown'),
    ({"closes.4999.server": "< 1"}, 'thresholds."closes.4999.server": unknown metric'),
    ({"delivery.lost": "zero"}, "bad condition 'zero'"),
    ({"delivery.lost": "< ten"}, "'ten' is not a number"),
    ({"delivery.lost": "< inf"}, "the value must be finite"),
    ({"delivery.lost": 5}, "must be a condition"),
    ({"reconciled": "< 1"}, 'write "== true" or "== false"'),
    ({"recovery.f9.recovered_s": "< 2"}, "no fault 'f9' in the scenario (its faults: f1, f2)"),
    ({"latency.publish.p99": {"condition": "< 9", "abort_on_fail": True}},
     '"latency.publish.p99".abort_on_fail: only a server count'),
    ({"errors.total.server": {"condition": "> 9", "abort_on_fail": True}},
     "abort_on_fail: only a server count bounded from above"),
    ({"delivery.lost": {"condition": "== 0", "abort": True}}, ".abort: unknown key"),
])
def test_a_bad_threshold_is_one_line_naming_it(table, message):
    with pytest.raises(ConfigError) as exc:
        parse_thresholds(table, fault_ids=["f1", "f2"])
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_scenario_checks_its_thresholds_when_it_loads():
    data = {"swarm": {"classes": {"Publisher": {}}}, "faults": [{"kind": "outage"}],
            "thresholds": {"recovery.f1.recovered_s": "< 2"}}
    assert [t.metric for t in parse_scenario(data).thresholds] == ["recovery.f1.recovered_s"]
    data["thresholds"] = {"recovery.f2.recovered_s": "< 2"}
    with pytest.raises(ConfigError, match="no fault 'f2' in the scenario"):
        parse_scenario(data)


# -- judging -------------------------------------------------------------------------------

def test_thresholds_are_judged_on_the_summary():
    rows = judge({"latency.publish.p99": "< 100", "errors.backend_error.per_1000_requests":
                  "< 50", "errors.service.client": "== 40", "errors.total.client": "== 50",
                  "reconciled": "== true", "delivery.duplicates": "== 0",
                  "recovery.f1.recovered_s": "< 2", "retry_amplification.default": "< 1.1",
                  "requests.publish": ">= 900", "closes.4011.server": "< 3", "warnings": "< 2"})
    assert {m: r["ok"] for m, r in rows.items()} == {
        "latency.publish.p99": False, "errors.backend_error.per_1000_requests": True,
        "errors.service.client": True, "errors.total.client": True, "reconciled": True,
        "delivery.duplicates": False, "recovery.f1.recovered_s": True,
        "retry_amplification.default": True, "requests.publish": True,
        "closes.4011.server": False, "warnings": True}
    assert rows["latency.publish.p99"]["reason"] == "120.5 is not < 100"
    assert rows["latency.publish.p99"]["value"] == 120.5
    assert rows["closes.4011.server"]["reason"] == "3 is not < 3"


def test_no_data_fails_but_an_absent_code_is_zero():
    rows = judge({"delivery_latency.p99": "< 100", "recovery.f2.recovered_s": "< 5",
                  "latency.send.p99": "< 100", "retry_amplification.naive": "< 2",
                  "errors.internal_error.client": "== 0", "closes.4001.server": "== 0"})
    assert {m: (r["ok"], r["reason"]) for m, r in rows.items()} == {
        "delivery_latency.p99": (False, "no data"), "recovery.f2.recovered_s": (False, "no data"),
        "latency.send.p99": (False, "no data"), "retry_amplification.naive": (False, "no data"),
        "errors.internal_error.client": (True, ""), "closes.4001.server": (True, "")}


def test_a_server_count_fails_early_once_it_passes_its_bound():
    ts = parse_thresholds({"errors.backend_error.server": {"condition": "< 5",
                                                           "abort_on_fail": True},
                           "closes.4011.server": "== 0",
                           "errors.total.client": {"condition": "< 1"}})
    two_instances = [{"totals": {"errors": {"backend_error": 2}, "closes": {}}},
                     {"totals": {"errors": {"backend_error": 2}, "closes": {"4011": 1}}}]
    assert live_failures(ts, two_instances) == []  # 4 < 5; 4011 is not marked
    assert live_failures(ts, two_instances, all_live=True) == ["closes.4011.server is 1, not == 0"]
    two_instances[0]["totals"]["errors"]["backend_error"] = 3
    assert live_failures(ts, two_instances) == ["errors.backend_error.server is 5, not < 5"]


def test_the_regression_gate_knows_which_way_is_worse():
    base = {"errors": {"backend_error": {"per_1000_requests": 10.0}},
            "latency_ms": {"publish": {"p99": 100.0}}, "delivery": {"lost": 0},
            "throughput": {"delivered_per_s_mean": 1000.0},
            "retry_amplification": {"default": {"amplification": 1.1}}}
    run = {"errors": {"backend_error": {"per_1000_requests": 10.5},
                      "internal_error": {"per_1000_requests": 0.2}},
           "latency_ms": {"publish": {"p99": 80.0}}, "delivery": {"lost": 1},
           "throughput": {"delivered_per_s_mean": 850.0},
           "retry_amplification": {"default": {"amplification": 1.5}}}
    found = {r["metric"]: r for r in analysis.regressions(base, run, 0.1)}
    assert sorted(found) == ["delivery.lost", "errors.internal_error.per_1000_requests",
                             "retry_amplification.default", "throughput.delivered_per_s_mean"]
    assert found["throughput.delivered_per_s_mean"]["change"] == pytest.approx(-0.15)
    assert found["errors.internal_error.per_1000_requests"]["change"] is None  # new code
    assert analysis.regressions(base, base, 0.0) == []


def test_junit_counts_and_names_its_cases(tmp_path):
    path = write_junit(tmp_path / "j.xml", "suite", [
        Case("a < 1"), Case("b == 0", "b: 3 is not == 0", "value: 3"),
        Case("c", skipped="no incident")])
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["a < 1", "b == 0", "c"]
    assert cases[1].find("failure").get("message") == "b: 3 is not == 0"
    assert cases[2].find("skipped") is not None


# -- end to end ----------------------------------------------------------------------------

GATED = """
[scenario]
name = "gated"

[limits]
rate_per_second = 10000.0
burst = 10000.0

[swarm]
users = 3
spawn_rate = 3
duration_s = {duration}

[swarm.classes.Publisher]
fixed_count = 2
rate = 20
channels = ["g/1"]
policy = "none"

[swarm.classes.Subscriber]
fixed_count = 1
channels = ["g/1"]
subscriptions = 1
wildcard_fraction = 0.0

[[faults]]
kind = "error"
code = "backend_error"
ops = ["publish"]
probability = {probability}

[thresholds]
{thresholds}
"""


def write_scenario(tmp: Path, duration: float, probability: float, thresholds: str) -> Path:
    path = tmp / "gated.toml"
    path.write_text(GATED.format(duration=duration, probability=probability,
                                 thresholds=thresholds))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The module's two real runs, side by side (each its own server on free ports and
    its own directory; both mostly wait on the clock), by name: (run dir, process).

    "failing": 4 s with a threshold that fails at the end; "aborting": 60 s planned,
    every publish an error, a threshold that aborts the run once it fails."""
    plans = {
        "failing": (4, 0.0, '"reconciled" = "== true"\n"requests.publish" = "< 1"\n'),
        "aborting": (60, 1.0, '"errors.backend_error.server" = '
                              '{ condition = "< 20", abort_on_fail = true }\n'),
    }

    def run(name: str) -> tuple[Path, subprocess.CompletedProcess]:
        tmp = tmp_path_factory.mktemp(name)
        scenario = write_scenario(tmp, *plans[name])
        out = tmp / "run"
        return out, rtmsim("run", str(scenario), "--out", str(out), "--no-progress")

    with ThreadPoolExecutor(len(plans)) as pool:
        return dict(zip(plans, pool.map(run, plans), strict=True))


@pytest.fixture(scope="module")
def failing_run(runs) -> tuple[Path, subprocess.CompletedProcess]:
    return runs["failing"]


def test_a_failing_threshold_exits_1_and_junit_names_it(failing_run):
    out, proc = failing_run
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "rtmsim: threshold failed: requests.publish < 1:" in proc.stdout
    assert "thresholds: 1 of 2 passed" in proc.stdout
    assert f"junit: {out / rundir.JUNIT}" in proc.stdout
    suite = ET.parse(out / rundir.JUNIT).getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert sorted(cases) == ["reconciled == true", "requests.publish < 1"]
    assert cases["requests.publish < 1"].find("failure") is not None
    assert cases["reconciled == true"].find("failure") is None
    summary = json.loads((out / rundir.SUMMARY).read_text())
    assert summary["thresholds"]["passed"] is False
    published = summary["requests"]["per_op"]["publish"]
    assert published > 0
    assert [c["value"] for c in summary["thresholds"]["checks"]] == [True, published]
    assert 'id="thresholds"' in (out / rundir.REPORT).read_text()


def test_analyze_gives_the_same_verdict(failing_run, tmp_path):
    out, _ = failing_run
    proc = rtmsim("analyze", str(out), "--junit", str(tmp_path / "again.xml"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert ET.parse(tmp_path / "again.xml").getroot().find("testsuite").get("failures") == "1"


def test_compare_against_a_baseline_exits_1_on_a_regression(failing_run, tmp_path):
    base, _ = failing_run
    worse = tmp_path / "worse"
    shutil.copytree(base, worse)
    summary = json.loads((worse / rundir.SUMMARY).read_text())
    summary["latency_ms"]["publish"]["p99"] *= 1.5
    (worse / rundir.SUMMARY).write_text(json.dumps(summary))
    gate = ["compare", "--baseline", str(base), str(worse), "--out", str(tmp_path / "c")]
    proc = rtmsim(*gate, "--tolerance", "10%", "--junit", str(tmp_path / "gate.xml"))
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "rtmsim: regression in worse: latency.publish.p99" in proc.stdout
    assert "(+50.0%; worse when higher)" in proc.stdout
    gate_json = json.loads((tmp_path / "c" / "compare.json").read_text())["gate"]
    assert [r["metric"] for r in gate_json["regressions"]["worse"]] == ["latency.publish.p99"]
    case = ET.parse(tmp_path / "gate.xml").getroot().find("testsuite/testcase")
    assert "latency.publish.p99" in case.find("failure").get("message")
    proc = rtmsim(*gate[:-1], str(tmp_path / "c2"), "--tolerance", "60%")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = rtmsim(*gate, "--tolerance", "ten")
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("not a fraction or percentage: 'ten'")


def test_abort_on_fail_stops_the_run_early(runs):
    out, proc = runs["aborting"]
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "rtmsim: threshold failed: errors.backend_error.server is" in proc.stdout
    meta = rundir.read_json(out, rundir.RUN)
    assert meta["status"] == "aborted"
    assert meta["aborted_by"][0].startswith("errors.backend_error.server is ")
    assert meta["ended"] - meta["started"] < 40  # well before the scenario's 60 s
    summary = json.loads((out / rundir.SUMMARY).read_text())
    assert summary["errors"]["backend_error"]["server"] >= 20
    assert summary["thresholds"]["checks"][0]["ok"] is False


def test_a_bad_threshold_stops_rtmsim_run_before_it_starts(tmp_path):
    scenario = write_scenario(tmp_path, 4, 0.0, '"latency.publish.p100" = "< 5"\n')
    proc = rtmsim("run", str(scenario), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        'rtmsim: thresholds."latency.publish.p100": unknown metric (known: '
        'requests.total|ok|<op>, errors.<code|total|service>.<field>, closes.<code>.<field>, '
        'latency.<op>.<stat>, delivery_latency.<stat>, delivery.<field>, reconciled, '
        'recovery.<fault id>.<field>, retry_amplification.<policy>, '
        'never_retry_violations.<field>, throughput.<field>, warnings)']
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_scenario_loads_with_its_thresholds(path):
    """`rtmsim run` scenarios, and `rtmsim clients` ones (with a [clients] table)."""
    if "[clients]" in path.read_text():
        scenario, _ = load_clients_scenario(str(path))
    else:
        scenario = load_scenario(path)
    for t in scenario.thresholds:
        assert metric_for(t.metric) is not None
