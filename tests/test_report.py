"""report.html, the charts, `rtmsim analyze` and `rtmsim compare` on small synthetic runs.

The run directories are written here by hand (a few hundred rows, no processes), with
known counts: 20 publishes, 2 of them answered backend_error inside an outage and
retried, a misbehaving client that sends an unknown type twice (a never-retry
repeat), a deploy that closes the subscriber with 1001, and one code the protocol
table does not know, named with HTML metacharacters to prove every text is escaped.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
from pathlib import Path
from typing import Any

import pytest

from loadtests.eventlog import COLUMNS
from server.codes import CLOSE_CODES, ERROR_CODES
from sim import analysis, report, rundir
from sim.cli import build_parser
from sim.report import charts, compare
from sim.run import RunError

ORIGIN = 1_000_000.0
DURATION_S = 10
ODD_CODE = "future<b>&code"  # a code a newer server might send; must be escaped
SCENARIO_TOML = """[scenario]
name = "synthetic"
description = "A hand-written run: <outage> & a deploy"

[swarm]
users = 3
duration_s = 10
"""


def write_run(d: Path, *, name: str = "synthetic", policy: str = "default",
              empty: bool = False, ramp: bool = False) -> Path:
    """A complete run directory with known counts (or with no events at all).

    ramp: a step-ramp run, 1 user for 5 s then 2, in Locust's stats history.
    """
    d.mkdir(parents=True, exist_ok=True)
    if ramp:
        (d / rundir.LOCUST_DIR).mkdir(exist_ok=True)
        rows = "".join(f"{ORIGIN + t},{1 if t < 5 else 2},Aggregated\n"
                       for t in range(DURATION_S))
        (d / f"{rundir.LOCUST_PREFIX}_stats_history.csv").write_text(
            "Timestamp,User Count,Name\n" + rows, encoding="utf-8")
    faults = [{"id": "f1", "kind": "outage", "start_s": 4.0, "end_s": 6.0},
              {"id": "f2", "kind": "deploy", "at_s": 8.0, "fraction": 0.5,
               "start_s": 8.0, "end_s": 8.0}]
    meta = {"name": name, "description": "A hand-written run: <outage> & a deploy",
            "status": "complete", "duration_s": DURATION_S, "origin": ORIGIN,
            "started": ORIGIN - 1, "ended": ORIGIN + DURATION_S + 1, "users": 3,
            "workers": 1, "seed": 1, "backend": "memory", "instances": 1, "model": "closed",
            "shape": "step_ramp" if ramp else None, "faults": faults,
            "machine": {"cpus": 2, "python": "3.11"}}
    (d / rundir.RUN).write_text(json.dumps(meta), encoding="utf-8")
    (d / rundir.SCENARIO).write_text(SCENARIO_TOML, encoding="utf-8")
    client: list[dict[str, Any]] = []
    server: list[dict[str, Any]] = []

    def row(ts: float, user: str, op: str, outcome: str, **kw: Any) -> None:
        client.append({"t": repr(ORIGIN + ts), "user": user, "user_class": user.split("-")[0],
                       "op": op, "outcome": outcome, "attempt": 1, "bytes": 0,
                       "policy": policy, **kw})

    def event(ts: float, kind: str, conn: int, **kw: Any) -> None:
        server.append({"t": ORIGIN + ts, "event": kind, "conn": conn, "peer": f"p{conn}",
                       "app": "app_demo", **kw})

    if not empty:
        for conn, user in enumerate(("Publisher-1", "Subscriber-1", "Misbehaving-1"), 1):
            row(0.1, user, "connect", "ok", latency_ms=3.0, peer=f"p{conn}")
            event(0.1, "connect", conn)
        row(0.2, "Subscriber-1", "subscribe", "ok", latency_ms=2.0, channel="room/1")
        event(0.2, "ok", 2, op="subscribe")
        for n in range(1, 21):
            ts = 0.5 * n - 0.25
            msg = f"Publisher-1:{n}"
            if 4.0 <= ts < 6.0 and n % 2:  # the outage answers some publishes
                row(ts, "Publisher-1", "publish", "backend_error", latency_ms=1.0,
                    channel="room/1", msg_id=msg)
                event(ts, "error", 1, op="publish", code="backend_error")
                client[-1]["attempt"] = 1
                row(ts + 0.1, "Publisher-1", "publish", "ok", latency_ms=4.0,
                    channel="room/1", msg_id=msg, attempt=2)
                ts += 0.1
            else:
                row(ts, "Publisher-1", "publish", "ok", latency_ms=4.0 + n % 3,
                    channel="room/1", msg_id=msg)
            event(ts, "ok", 1, op="publish")
            if not 7.9 < ts < 9.3:  # the subscriber is away around the deploy
                row(ts + 0.002, "Subscriber-1", "deliver", "message", latency_ms=2.0 + n % 4,
                    channel="room/1", msg_id=msg, peer="Publisher-1")
        for ts in (1.0, 2.0):  # a client that repeats a never-retry code
            row(ts, "Misbehaving-1", "unknown_type", "unknown_type", latency_ms=1.0)
            event(ts, "error", 3, code="unknown_type")
        row(3.0, "Misbehaving-1", "publish", ODD_CODE, latency_ms=1.0, channel="room/2")
        event(3.0, "error", 3, op="publish", code=ODD_CODE)
        event(8.0, "close", 2, code=1001, reason="going away (fault f2)")
        event(8.0, "disconnect", 2, code=1001)
        row(8.01, "Subscriber-1", "close", "close 1001")
        row(9.2, "Subscriber-1", "connect", "ok", latency_ms=3.0, peer="p4")
        event(9.2, "connect", 4)
        row(9.25, "Subscriber-1", "subscribe", "ok", latency_ms=2.0, channel="room/1")
        event(9.25, "ok", 4, op="subscribe")
    with (d / "client-events-1.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(client)
    with (d / rundir.SERVER_EVENTS).open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(e) + "\n" for e in server)
    errors: dict[str, int] = {}
    for e in server:
        if e["event"] == "error":
            errors[e["code"]] = errors.get(e["code"], 0) + 1
    oks = [e for e in server if e["event"] == "ok" and e.get("op") == "publish"]
    delivered = sum(1 for r in client if r["op"] == "deliver")
    closes = {"1001": 1} if not empty else {}
    with (d / rundir.SERVER_TIMELINE).open("w", encoding="utf-8") as f:
        for second in range(DURATION_S + 1):
            t = ORIGIN + second
            published = sum(1 for e in oks if e["t"] <= t)
            stats = {"totals": {
                "connections": {"now": 0 if empty else 3, "total": 0 if empty else 3},
                "errors": {c: sum(1 for e in server if e["event"] == "error"
                                  and e["code"] == c and e["t"] <= t) for c in errors},
                "closes": closes if second >= 8 else {},
                "messages": {"published": published, "sent": 0,
                             "delivered": sum(1 for r in client if r["op"] == "deliver"
                                              and float(r["t"]) <= t)}},
                "usage": {"app_demo": {"messagesUsed": published, "overageMessages": 0,
                                       "overageConnections": 0, "balance": 0.0,
                                       "concurrentNow": 0 if empty else 3}}}
            f.write(json.dumps({"t": t, "instance": "i0", "stats": stats}) + "\n")
    final = {"i0": {"totals": {"connections": {"now": 0, "peak": 3, "total": 4},
                               "errors": errors, "closes": closes,
                               "messages": {"published": len(oks), "sent": 0,
                                            "delivered": delivered}},
                    "usage": {"app_demo": {"messagesUsed": len(oks), "overageMessages": 0,
                                           "overageConnections": 0, "balance": 0.0,
                                           "concurrentNow": 0}}}}
    (d / rundir.SERVER_STATS).write_text(json.dumps(final), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    d = write_run(tmp_path_factory.mktemp("runs") / "synthetic-run")
    return d, report.build_all(d)


def images_of(text: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', text)


def test_build_all_writes_summary_charts_and_report(built: tuple[Path, dict[str, Any]]) -> None:
    d, summary = built
    assert (d / rundir.SUMMARY).exists()
    assert json.loads((d / rundir.SUMMARY).read_text()) == summary
    assert summary["errors"]["backend_error"]["client"] == 2
    pngs = sorted((d / rundir.CHARTS).glob("*.png"))
    assert [p.name for p in pngs] == sorted(charts.CAPTIONS.keys() - {"capacity.png"})
    assert (d / rundir.REPORT).exists()


def test_report_is_self_contained(built: tuple[Path, dict[str, Any]]) -> None:
    d, _ = built
    text = (d / rundir.REPORT).read_text(encoding="utf-8")
    for forbidden in ("http://", "https://", 'src="file', "<script", "<link", "url("):
        assert forbidden not in text, forbidden
    srcs = images_of(text)
    assert len(srcs) == len(list((d / rundir.CHARTS).glob("*.png")))
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_has_a_row_per_code_with_the_code_tables_guidance(
        built: tuple[Path, dict[str, Any]]) -> None:
    d, summary = built
    text = (d / rundir.REPORT).read_text(encoding="utf-8")
    assert set(summary["errors"]) == {"backend_error", "unknown_type", ODD_CODE}
    for code in ("backend_error", "unknown_type"):
        entry = ERROR_CODES[code]
        row = re.search(rf"<tr[^>]*><td>{code}</td>.*?</tr>", text)
        assert row, code
        assert html.escape(entry.meaning) in row.group(0)
        assert html.escape(entry.guidance) in row.group(0)
    row = re.search(r"<tr[^>]*><td>1001</td>.*?</tr>", text)
    assert row and html.escape(CLOSE_CODES[1001].guidance) in row.group(0)


def test_report_escapes_every_text(built: tuple[Path, dict[str, Any]]) -> None:
    d, _ = built
    text = (d / rundir.REPORT).read_text(encoding="utf-8")
    assert "future&lt;b&gt;&amp;code" in text
    assert "<b>&code" not in text
    assert "&lt;outage&gt; &amp; a deploy" in text  # description and the TOML <pre>
    assert "<outage>" not in text


def test_report_warns_about_never_retry_repeats(built: tuple[Path, dict[str, Any]]) -> None:
    d, summary = built
    text = (d / rundir.REPORT).read_text(encoding="utf-8")
    assert summary["never_retry_violations"]["repeats"] == 1
    assert "Misbehaving-1" in text
    assert "top offenders" in text


def test_print_summary_lists_codes_and_the_report(built: tuple[Path, dict[str, Any]],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    d, summary = built
    report.print_summary(summary, d)
    out = capsys.readouterr().out
    lines = out.splitlines()
    backend = next(line for line in lines if line.startswith("backend_error"))
    assert backend.split()[:4] == ["backend_error", "2", "2", "0"]
    assert any(line.startswith("1001 going_away") for line in lines)
    assert any(line.startswith("publish") for line in lines)
    assert "warnings (" in out
    assert lines[-1] == f"report: {d / rundir.REPORT}"


def test_charts_without_data_are_labelled_not_failed(tmp_path: Path) -> None:
    d = write_run(tmp_path / "empty-run", empty=True)
    summary = report.build_all(d)
    assert summary["errors"] == {}
    pngs = list((d / rundir.CHARTS).glob("*.png"))
    assert len(pngs) == len(charts.CHARTS)
    text = (d / rundir.REPORT).read_text(encoding="utf-8")
    assert "No error frames in this run" in text


def test_step_ramp_report_has_a_capacity_section_with_its_chart(tmp_path: Path) -> None:
    d = write_run(tmp_path / "ramp-run", ramp=True)
    run = analysis.load_run(d)
    summary = analysis.summary(run)
    assert [s["users"] for s in summary["capacity"]["steps"]] == [1, 2]
    image = charts.capacity_chart(run, d / rundir.CHARTS)
    path = report.write_report(run, summary, d / rundir.REPORT, [image])
    text = path.read_text(encoding="utf-8")
    section = text[text.index('<section id="capacity">'):]
    section = section[:section.index("</section>")]
    assert html.escape(summary["capacity"]["verdict"]) in section
    assert len(images_of(section)) == 1  # the knee chart sits with its numbers


def test_analyze_command_prints_what_it_regenerated(
        built: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    d, summary = built
    (d / rundir.REPORT).unlink()
    assert compare.cmd_analyze(build_parser().parse_args(["analyze", str(d)])) == 0
    assert (d / rundir.REPORT).exists()
    assert json.loads((d / rundir.SUMMARY).read_text()) == summary  # reproducible
    out = capsys.readouterr().out
    assert f"regenerated {d / rundir.SUMMARY}" in out
    assert str(d / rundir.REPORT) in out


def test_compare_writes_html_json_and_overlays(built: tuple[Path, dict[str, Any]],
                                               tmp_path: Path) -> None:
    first, _ = built
    second = write_run(tmp_path / "naive-run", name="naive", policy="naive")  # no summary.json
    out = tmp_path / "cmp"
    result = compare.compare([first, second], out)
    labels = [r["label"] for r in result["runs"]]
    assert labels == ["synthetic-run", "naive-run"]
    assert [r["summary"] for r in result["runs"]] == ["summary.json",
                                                      "computed (no summary.json)"]
    assert not (second / rundir.SUMMARY).exists()  # compare leaves its inputs alone
    data = json.loads((out / compare.COMPARE_JSON).read_text())
    metrics = {row["metric"]: row["values"] for row in data["headline"]}
    assert metrics["backend_error (client, per s)"] == {"synthetic-run": 0.2, "naive-run": 0.2}
    assert set(metrics) >= {"retry amplification, default (x)", "retry amplification, naive (x)"}
    assert metrics["retry amplification, naive (x)"]["synthetic-run"] is None
    assert sorted(p.name for p in out.glob("*.png")) == sorted(data["charts"])
    html_text = (out / compare.COMPARE_HTML).read_text(encoding="utf-8")
    assert "http://" not in html_text and 'src="file' not in html_text
    assert len(images_of(html_text)) == len(data["charts"]) == len(compare.COMPARE_CHARTS)
    assert "future&lt;b&gt;&amp;code" in html_text


def test_compare_command_prints_where_it_wrote(
        built: tuple[Path, dict[str, Any]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    first, _ = built
    monkeypatch.setattr(compare, "COMPARE_CHARTS", ())  # drawn in the test above
    out = tmp_path / "cmp"
    args = build_parser().parse_args(["compare", str(first), str(first), "--out", str(out)])
    assert compare.cmd_compare(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / compare.COMPARE_HTML}, {out / compare.COMPARE_JSON}" in printed
    assert any(line.startswith("error frames, client") for line in printed.splitlines())
    assert "synthetic-run#2" in printed  # the same run twice gets two labels


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "missing", "no such directory"),
    (lambda p: p, "not a run directory (no run.json)"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "not a directory"),
    (lambda p: (p / rundir.RUN).write_text("{bad") and p, "run.json: not valid JSON"),
    (lambda p: (p / rundir.RUN).write_text("{}") and p, "nothing to analyse"),
])
def test_bad_run_directories_are_one_line_errors(tmp_path: Path, setup: Any,
                                                 message: str) -> None:
    path = setup(tmp_path)
    with pytest.raises(RunError) as info:
        report.build_all(path)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_compare_needs_two_runs(built: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    first, _ = built
    with pytest.raises(RunError, match="at least two run directories, got 1"):
        compare.compare([first], tmp_path / "cmp")
    with pytest.raises(RunError, match="not a run directory"):
        compare.compare([first, tmp_path], tmp_path / "cmp")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="exists and is not a directory"):
        compare.compare([first, first], tmp_path / "file")
