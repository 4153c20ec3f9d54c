"""`rtmsim clients`: real client programs under faults, graded from the server's log.

End to end on loopback with tests/scenarios/clients-faults-short.toml (22 s: a
backend_error burst, a deploy, a kick of 2 of 5, 12 s tokens, a small quota): the
Python SDK reference client passes, the bad client fails exactly the rules it breaks,
and no client process outlives a run (the runs go side by side, in one fixture). The
grading rules themselves are pinned on hand-written event logs (no processes).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from server.codes import CLOSE_CODES, ERROR_CODES, Retry
from server.config import ConfigError
from sim.clients import grading
from sim.clients.report import write_client_report
from sim.clients.runner import group_alive, load_clients_scenario, run_clients, strip_table
from sim.rundir import CLIENT_PROCS, CLIENT_REPORT, CLIENT_TOKENS, CLIENTS_JSON, JUNIT

ROOT = Path(__file__).resolve().parent.parent
SHORT = ROOT / "tests" / "scenarios" / "clients-faults-short.toml"
PY_SDK_DIR = ROOT / "examples" / "clients" / "python"
PY_SDK_PYTHON = PY_SDK_DIR / ".venv" / "bin" / "python"
JS_DIR = ROOT / "examples" / "clients" / "js"
BAD = f"{sys.executable} examples/clients/bad/client.py"


def _run(tmp: Path, command: str, scenario: Path = SHORT, **kw) -> None:
    """`rtmsim clients` into tmp/run; its exit code and output kept beside it."""
    out = io.StringIO()
    rc = run_clients(str(scenario), command=command, out_dir=str(tmp / "run"),
                     progress=False, out=out, **kw)
    (tmp / "rc").write_text(str(rc))
    (tmp / "out").write_text(out.getvalue())


def _grades(tmp: Path) -> dict:
    """The grades of the run `_run` wrote into tmp, with "_rc" and "_out" added."""
    grades = json.loads((tmp / "run" / CLIENTS_JSON).read_text())
    grades["_rc"], grades["_out"] = int((tmp / "rc").read_text()), (tmp / "out").read_text()
    return grades


def _no_survivors(run_dir: Path) -> None:
    procs = json.loads((run_dir / CLIENT_PROCS).read_text())
    assert procs, "no client was started"
    for p in procs:
        assert not group_alive(p["pid"]), f"client {p['index']} (pid {p['pid']}) survived"


def _rule_grades(grades: dict) -> dict[str, str]:
    return {rid: r["grade"] for rid, r in grades["rules"].items()}


# -- end to end --------------------------------------------------------------------------

def _py_sdk() -> Path | str:
    """The SDK's own venv (it pins websockets<16; rtmsim needs >=17), made on first use;
    or why it could not be made."""
    if not PY_SDK_PYTHON.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(PY_SDK_DIR / ".venv")],
                           check=True, capture_output=True, timeout=120)
            subprocess.run([str(PY_SDK_PYTHON), "-m", "pip", "install", "--quiet",
                            "-r", str(PY_SDK_DIR / "requirements.txt")],
                           check=True, capture_output=True, timeout=300)
        except (subprocess.SubprocessError, OSError) as exc:
            shutil.rmtree(PY_SDK_DIR / ".venv", ignore_errors=True)
            return f"could not install metered-realtime into {PY_SDK_DIR}/.venv: {exc}"
    return PY_SDK_PYTHON


def _node_ready() -> str | None:
    """None when the JS client can run; else why not."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS_DIR / "node_modules" / "@metered-ca" / "realtime").exists():
        if shutil.which("npm") is None:
            return "npm is not installed (needed for @metered-ca/realtime and ws)"
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=JS_DIR,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            return f"npm install failed in {JS_DIR}: {done.stderr.strip()[-200:]}"
    return None


# A shell that ignores SIGTERM and leaves a grandchild: the whole group must go.
IGNORES_SIGTERM = "trap '' TERM; sleep 300 & sleep 300"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path | str | BaseException]:
    """Each end-to-end run of this module, by name: its directory (holding `run`), why
    it could not run (a skip), or what it raised (raised again by its test alone).

    The runs are independent (each its own server on free ports, its own client
    processes and run directory) and spend their 1-22 s waiting on the scenario's
    clock, so they run side by side, as tests/test_notebooks.py's runs do: the wall
    time is the longest run's, not the sum. Each test then asserts on its own run."""
    base = tmp_path_factory.mktemp("clients")
    py_sdk, node_missing = _py_sdk(), _node_ready()
    plans: dict[str, str | tuple[str, dict]] = {
        "python_sdk": py_sdk if isinstance(py_sdk, str)
        else (f"{py_sdk} examples/clients/python/client.py", {}),
        "bad": (BAD, {}),
        "js_sdk": f"JS SDK client not run: {node_missing}" if node_missing
        else ("node examples/clients/js/client.mjs", {}),
        "ignores_sigterm": (IGNORES_SIGTERM, {"duration_s": 1, "count": 2}),
    }

    def run(name: str) -> Path | str | BaseException:
        plan = plans[name]
        if isinstance(plan, str):
            return plan
        command, kw = plan
        (base / name).mkdir()
        try:
            _run(base / name, command, **kw)
        except Exception as exc:
            return exc
        return base / name

    with ThreadPoolExecutor(len(plans)) as pool:
        done = dict(zip(plans, pool.map(run, plans), strict=True))
    return done


def _run_of(runs: dict[str, Path | str | BaseException], name: str) -> tuple[dict, Path]:
    """(grades, run directory) of one of `runs`; skips the test when it could not run."""
    where = runs[name]
    if isinstance(where, BaseException):
        raise where
    if isinstance(where, str):
        pytest.skip(where)
    return _grades(where), where / "run"


@pytest.mark.timeout(90)
def test_python_sdk_client_passes(runs):
    grades, run_dir = _run_of(runs, "python_sdk")
    assert grades["grade"] == "pass", grades["_out"]
    assert grades["_rc"] == 0
    rules = _rule_grades(grades)
    # The faults of the scenario were met and graded, not skipped.
    for rid in ("backoff_on_error", "respect_retry_after", "stay_away", "fresh_token",
                "resubscribe", "jitter"):
        assert rules[rid] == "pass", (rid, grades["_out"])
    kicked = [c for c in grades["clients"] if "4020" in c["closes"]]
    assert len(kicked) == 2  # round(5 * 0.4)
    assert all(c["closes"]["4020"]["came_back"] == 0 for c in kicked)
    assert all(c["exit_code"] == 0 for c in kicked)  # the client exits after a kick
    assert (run_dir / CLIENT_REPORT).read_text().count("<img") == 2
    _no_survivors(run_dir)


@pytest.mark.timeout(90)
def test_bad_client_fails_the_rules_it_breaks(runs):
    grades, run_dir = _run_of(runs, "bad")
    assert grades["grade"] == "fail"
    assert grades["_rc"] == 1
    assert _rule_grades(grades) == {
        "connected": "pass", "no_retry": "fail", "unsubscribe_first": "n/a", "dont_loop": "n/a",
        "wait_for_period": "fail", "backoff_on_error": "fail",
        "respect_retry_after": "fail", "fresh_token": "fail", "concurrency_floor": "n/a",
        "reconnect_backoff": "n/a", "come_back_lighter": "n/a", "stay_away": "fail",
        "jitter": "fail",
        "resubscribe": "fail"}
    by_client = {c["client"]: c for c in grades["clients"]}
    assert sorted(by_client) == [f"client-{i}" for i in range(5)]
    for c in by_client.values():
        text = "\n".join(c["violations"])
        assert "retried channel_reserved 20 times in" in text  # MAX_RESENDS in the client
        assert "before retryAfterMs=1000" in text
        assert "with no jitter: 5 clients within 50 ms" in text
        assert "no fresh token fetched after 4002 (token_expired)" in text
        assert "did not re-subscribe after reconnecting" in text
    stay = grades["rules"]["stay_away"]
    assert len(stay["clients_failing"]) == 2
    assert all("after 4020 (admin_disconnect) at 9.0 s: terminal" in v["text"]
               for v in stay["violations"])
    # Its stale token is refused again and again; the server names the peer of an
    # expired token, so the rejects count against the clients themselves.
    assert grades["unattributed_rejects"].get("4002", 0) == 0
    assert sum(c["rejected"] for c in grades["clients"]) > 10
    _no_survivors(run_dir)
    # junit.xml: one case per rule, failing where the grade fails, skipped where n/a.
    cases = ET.parse(run_dir / JUNIT).getroot().findall("testsuite/testcase")
    assert sorted(c.get("name").split(":")[0] for c in cases) == sorted(grades["rules"])
    verdicts = {c.get("name").split(":")[0]: "fail" if c.find("failure") is not None else
                "n/a" if c.find("skipped") is not None else "pass" for c in cases}
    assert verdicts == _rule_grades(grades)


@pytest.mark.timeout(90)
def test_js_sdk_client_passes(runs):
    grades, run_dir = _run_of(runs, "js_sdk")
    assert grades["grade"] == "pass", grades["_out"]
    _no_survivors(run_dir)


@pytest.mark.timeout(90)
def test_a_client_that_ignores_sigterm_is_killed_with_its_children(runs):
    grades, run_dir = _run_of(runs, "ignores_sigterm")
    assert grades["count"] == 2
    assert grades["grade"] == "fail"
    assert [v["text"] for v in grades["rules"]["connected"]["violations"]] == [
        "never reached the server as client-0 (see clients/client-0.err)",
        "never reached the server as client-1 (see clients/client-1.err)"]
    _no_survivors(run_dir)
    tokens = (run_dir / CLIENT_TOKENS).read_text().splitlines()
    assert [json.loads(t)["peer"] for t in tokens] == ["client-0", "client-1"]


# -- scenario loading -------------------------------------------------------------------

def test_clients_table_is_read_and_kept_from_the_server(tmp_path):
    scenario, settings = load_clients_scenario(SHORT)
    assert (settings.count, settings.duration_s, settings.token_ttl_s) == (5, 22, 12)
    assert "[clients]" not in scenario.source
    assert "token_ttl_s" not in scenario.source
    assert "[[faults]]" in scenario.source


def test_unknown_clients_key_is_named(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[clients]\ncount = 2\ncolour = 'red'\n")
    with pytest.raises(ConfigError, match=r"clients\.colour: unknown key"):
        load_clients_scenario(path)


def test_strip_table_keeps_the_other_tables():
    text = "[a]\nx = 1\n[clients]\ncount = 2\n[[faults]]\nkind = 'deploy'\n"
    assert strip_table(text, "clients") == "[a]\nx = 1\n[[faults]]\nkind = 'deploy'\n"


# -- grading rules on hand-written logs ----------------------------------------------------

def test_every_retry_kind_has_a_rule_or_is_deliberately_ungraded():
    ungraded_errors: set[Retry] = set()
    ungraded_closes = {Retry.INSPECT, Retry.NEVER}  # 1008, 1009: fix the payload, reconnect
    for e in ERROR_CODES.values():
        assert e.retry in grading.ERROR_RULE or e.retry in ungraded_errors, e.code
    for c in CLOSE_CODES.values():
        assert c.retry in grading.CLOSE_RULE or c.retry in ungraded_closes, c.code


def _write_run(d: Path, events: list[dict], tokens: list[dict] = (), faults=()) -> Path:
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"origin": 1000.0, "started": 1000.0,
                                            "duration_s": 30, "faults": list(faults),
                                            "clients": {"count": 2, "command": "x"}}))
    (d / "server-events.jsonl").write_text(
        "".join(json.dumps({"app": "app_demo", **e, "t": 1000.0 + e["t"]}) + "\n"
                for e in events))
    (d / CLIENT_TOKENS).write_text(
        "".join(json.dumps({**t, "t": 1000.0 + t["t"]}) + "\n" for t in tokens))
    return d


def _conn(t, conn, peer):
    return {"t": t, "event": "connect", "conn": conn, "peer": peer}


def test_terminal_close_then_reconnect_is_a_violation(tmp_path):
    d = _write_run(tmp_path / "r", [
        _conn(0.0, 1, "client-0"),
        {"t": 5.0, "event": "close", "conn": 1, "peer": "client-0", "code": 4020,
         "reason": "kick"},
        _conn(5.03, 2, "client-0")])
    g = grading.grade_run(d)
    assert g["rules"]["stay_away"]["grade"] == "fail"
    assert [v["text"] for v in g["rules"]["stay_away"]["violations"]] == [
        "reconnected 30 ms after 4020 (admin_disconnect) at 5.0 s: terminal"]


def test_going_away_hint_comes_from_the_deploy_fault(tmp_path):
    deploy = {"kind": "deploy", "at_s": 5, "fraction": 1.0, "retry_after_ms": 2000,
              "id": "f1", "start_s": 5, "end_s": 5}
    d = _write_run(tmp_path / "r", [
        _conn(0.0, 1, "client-0"), _conn(0.0, 2, "client-1"),
        {"t": 5.0, "event": "close", "conn": 1, "peer": "client-0", "code": 1001},
        {"t": 5.0, "event": "close", "conn": 2, "peer": "client-1", "code": 1001},
        _conn(6.5, 3, "client-0"), _conn(7.2, 4, "client-1")], faults=[deploy])
    g = grading.grade_run(d)
    r = g["rules"]["respect_retry_after"]
    assert (r["grade"], r["incidents"]) == ("fail", 2)
    assert [v["text"] for v in r["violations"]] == [
        "reconnected 1.5 s after 1001 (going_away) at 5.0 s, before retryAfterMs=2000"]


def test_never_retry_counts_repeats_per_client(tmp_path):
    events = [_conn(0.0, 1, "client-0")] + [
        {"t": 1.0 + i * 0.1, "event": "error", "conn": 1, "peer": "client-0",
         "op": "publish", "code": "channel_reserved", "requestId": str(i)}
        for i in range(15)]
    g = grading.grade_run(_write_run(tmp_path / "r", events))
    assert [v["text"] for v in g["rules"]["no_retry"]["violations"]] == [
        "retried channel_reserved 14 times in 1.4 s (publish, 1.0-2.4 s)"]


def test_backoff_after_backend_error(tmp_path):
    def req(t, event, code=None):
        return {"t": t, "event": event, "conn": 1, "peer": "client-0", "op": "publish",
                "code": code}
    events = [_conn(0.0, 1, "client-0"),
              req(1.0, "error", "backend_error"), req(1.002, "ok"),  # immediate
              req(2.0, "error", "backend_error"), req(2.3, "ok")]  # backed off
    g = grading.grade_run(_write_run(tmp_path / "r", events))
    r = g["rules"]["backoff_on_error"]
    assert (r["grade"], r["incidents"]) == ("warn", 2)  # one immediate retry: warn
    assert r["warnings"][0]["text"] == (
        "retried publish once within 50 ms of backend_error (median 2 ms; at 1.0 s)")
    stats = g["clients"][0]["errors"]["backend_error"]
    assert (stats["received"], stats["retried"], stats["min_delay_ms"]) == (2, 2, 2.0)


def test_fresh_token_after_4002(tmp_path):
    events = [_conn(0.0, 1, "client-0"), _conn(0.0, 2, "client-1"),
              {"t": 9.75, "event": "close", "conn": 1, "peer": "client-0", "code": 4002},
              {"t": 9.75, "event": "close", "conn": 2, "peer": "client-1", "code": 4002},
              _conn(10.3, 3, "client-0")]
    tokens = [{"t": 10.2, "client": 0, "peer": "client-0", "expiresAt": 1, "initial": False}]
    g = grading.grade_run(_write_run(tmp_path / "r", events, tokens))
    r = g["rules"]["fresh_token"]
    assert r["clients_failing"] == ["client-1"]
    assert r["violations"][0]["text"] == (
        "no fresh token fetched after 4002 (token_expired) at 9.8 s; never connected again")


def test_herd_without_jitter_fails_and_spread_passes(tmp_path):
    def storm(delays):
        ev = []
        for i, delay in enumerate(delays):
            ev += [_conn(0.0, i + 1, f"client-{i}"),
                   {"t": 5.0, "event": "close", "conn": i + 1, "peer": f"client-{i}",
                    "code": 1006},
                   _conn(5.0 + delay, 100 + i, f"client-{i}")]
        return ev
    herd = grading.grade_run(_write_run(tmp_path / "a", storm([0.2, 0.201, 0.203, 0.204])))
    assert herd["rules"]["jitter"]["grade"] == "fail"
    assert herd["rules"]["jitter"]["violations"][0]["text"].startswith(
        "reconnected 202 ms after 1006 (abnormal_closure) at 5.0 s with no jitter: "
        "4 clients within 50 ms")
    spread = grading.grade_run(_write_run(tmp_path / "b", storm([0.2, 0.35, 0.5, 0.9])))
    assert spread["rules"]["jitter"]["grade"] == "pass"


def test_resubscribe_after_reconnect(tmp_path):
    events = [_conn(0.0, 1, "client-0"),
              {"t": 0.1, "event": "ok", "conn": 1, "peer": "client-0", "op": "subscribe"},
              {"t": 5.0, "event": "close", "conn": 1, "peer": "client-0", "code": 1011},
              _conn(5.6, 2, "client-0"),
              {"t": 5.7, "event": "ok", "conn": 2, "peer": "client-0", "op": "publish"}]
    g = grading.grade_run(_write_run(tmp_path / "r", events))
    assert [v["text"] for v in g["rules"]["resubscribe"]["violations"]] == [
        "did not re-subscribe after reconnecting at 5.6 s (after 1011 internal_error)"]


def test_report_is_written_for_a_hand_written_run(tmp_path):
    d = _write_run(tmp_path / "r", [_conn(0.0, 1, "client-0")])
    path = write_client_report(d, grading.grade_run(d))
    assert "Client grade" in path.read_text()
    assert os.path.getsize(path) > 1000


def test_repeated_4010_reconnects_are_one_violation_with_a_count(tmp_path):
    def reject(t, conn, peer):
        return {"t": t, "event": "reject", "conn": conn, "peer": peer, "code": 4010,
                "reason": "over concurrent limit"}
    events = [reject(1.0, 1, "client-0"), reject(1.02, 2, "client-0"),
              reject(1.05, 3, "client-0"), reject(2.0, 4, "client-1"),
              _conn(33.0, 5, "client-1")]
    d = _write_run(tmp_path / "r", events)
    (d / CLIENT_PROCS).write_text(json.dumps([
        {"index": i, "peer": f"client-{i}", "pid": 1, "rc": 0} for i in range(3)]))
    g = grading.grade_run(d)
    r = g["rules"]["concurrency_floor"]
    assert (r["grade"], r["incidents"], r["clients_failing"]) == ("fail", 4, ["client-0"])
    assert [v["text"] for v in r["violations"]] == [
        "reconnected 20 ms after 4010 (over_concurrent_limit) at 1.0 s, before the 30 s "
        "floor (2 times, at 1.0 s; 20-30 ms after each)"]
    # Refused (and waiting) is reaching the server; client-2 never did.
    assert [v["text"] for v in g["rules"]["connected"]["violations"]] == [
        "never reached the server as client-2 (see clients/client-2.err)"]


def test_a_slow_consumer_closed_1008_again_after_reconnecting_fails(tmp_path):
    def slow(t, conn, peer):
        return {"t": t, "event": "close", "conn": conn, "peer": peer, "code": 1008,
                "reason": "slow consumer"}
    events = [_conn(0.0, 1, "client-0"), _conn(0.0, 2, "client-1"),
              slow(5.0, 1, "client-0"), slow(5.0, 2, "client-1"),
              _conn(5.5, 3, "client-0"), _conn(5.02, 4, "client-1"),
              slow(9.0, 3, "client-0")]  # client-0 backed off, but came back as slow
    g = grading.grade_run(_write_run(tmp_path / "r", events))
    r = g["rules"]["come_back_lighter"]
    assert (r["grade"], r["incidents"]) == ("fail", 3)
    assert sorted(v["text"] for v in r["violations"]) == [
        "reconnected 20 ms after 1008 (policy_violation) at 5.0 s: no backoff",
        "reconnected 500 ms after 1008 (policy_violation) at 5.0 s, and was closed 1008 "
        "again: read faster or subscribe to less"]
