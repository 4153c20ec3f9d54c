"""Runs as a dataset: `sim.analysis.runs` and `rtmsim compare` over a hundred runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_harness import rtmsim

from sim import analysis, rundir
from sim.report import compare


def fake_run(root: Path, i: int, *, rate: float, errors: int, summary: bool = True) -> Path:
    """A run directory with run.json and summary.json only (what `runs` reads)."""
    d = root / f"r{i:03d}"
    d.mkdir(parents=True)
    (d / rundir.RUN).write_text(json.dumps({
        "name": "sweep", "status": "complete", "started": 1000.0 + i, "duration_s": 10,
        "users": 10 + i % 3, "seed": i,
        "classes": {"Publisher": {"rate": rate, "policy": {"backoff": "full_jitter"}}},
        "faults": [{"id": "f1", "kind": "error", "probability": 0.05, "hits": 3}]}))
    (d / rundir.SERVER_EVENTS).write_text("")
    if summary:
        (d / rundir.SUMMARY).write_text(json.dumps({
            "run": {"name": "sweep", "users": 10 + i % 3},
            "requests": {"total": 1000, "ok": 1000 - errors - 5},
            "errors": {"backend_error": {"client": errors, "per_1000_requests": errors / 1.0,
                                         "client_fault": False},
                       "channel_reserved": {"client": 5, "per_1000_requests": 5.0,
                                            "client_fault": True}},
            "latency_ms": {"publish": {"p99": 10.0 + i}},
            "throughput": {"delivered_per_s_mean": 500.0},
            "reconciliation": {"agree": True}, "thresholds": {"passed": errors < 30},
            "warnings": []}))
    return d


def test_runs_puts_parameters_beside_results(tmp_path):
    for i, (rate, errors) in enumerate([(5, 10), (5, 20), (10, 40)]):
        fake_run(tmp_path, i, rate=rate, errors=errors)
    fake_run(tmp_path, 3, rate=10, errors=0, summary=False)
    (tmp_path / "not-a-run").mkdir()
    df = analysis.runs(tmp_path)
    assert list(df["dir"]) == [str(tmp_path / f"r{i:03d}") for i in range(4)]
    assert list(df["summary"]) == ["ok", "ok", "ok", "missing"]
    assert list(df["classes.Publisher.rate"]) == [5, 5, 10, 10]
    assert list(df["classes.Publisher.policy.backoff"].unique()) == ["full_jitter"]
    assert list(df["faults.f1.probability"].unique()) == [0.05]
    assert "faults.f1.hits" not in df  # an outcome, not a parameter
    assert list(df["errors.service.per_1000_requests"][:3]) == [10.0, 20.0, 40.0]
    assert list(df["errors.total.client"][:3]) == [15, 25, 45]
    assert list(df["thresholds.passed"][:3]) == [True, True, False]
    assert df["latency.publish.p99"].tolist()[:3] == [10.0, 11.0, 12.0]
    by_rate = df.groupby("classes.Publisher.rate")["errors.service.per_1000_requests"].mean()
    assert by_rate.to_dict() == {5: 15.0, 10: 40.0}  # the missing summary does not count


def test_runs_names_a_path_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        analysis.runs(tmp_path / "nope")
    assert list(analysis.runs(tmp_path).columns[:3]) == ["dir", "name", "status"]


def test_compare_handles_a_hundred_runs(tmp_path):
    dirs = [fake_run(tmp_path / "runs", i, rate=5, errors=i % 7) for i in range(100)]
    out = tmp_path / "cmp"
    proc = rtmsim("compare", *map(str, dirs), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / compare.COMPARE_JSON).read_text())
    assert [r["label"] for r in result["per_run"]] == [d.name for d in dirs]
    assert [r["errors.service.per_1000_requests"] for r in result["per_run"]][:8] == [
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]
    assert result["charts"] == ["compare-by-run.png"]
    assert (out / "compare-by-run.png").stat().st_size > 10_000
    table = [line for line in proc.stdout.splitlines() if line.startswith("r0")]
    assert len(table) == 100  # one row per run, not a column each
    assert "and 92 more" in (out / compare.COMPARE_HTML).read_text()
