"""`rtmsim simulate`: the same run directory as `rtmsim run`, marked virtual; bad input
is one line; Ctrl-C keeps the partial run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sim import rundir
from sim.cli import main
from sim.virtual import saturation, scale

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "scenarios" / "default.toml"


def test_a_virtual_run_is_a_run_directory_the_analysis_reads(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    out = tmp_path / "v"
    code = main(["simulate", str(DEFAULT), "--users", "30", "--duration", "25", "--out",
                 str(out), "--no-progress"])
    assert code in (0, 1)  # 1: a threshold failed (the short run weighs the outage more)
    meta = json.loads((out / rundir.RUN).read_text())
    assert meta["virtual"] is True and meta["status"] == "complete"
    assert meta["engine"]["kind"] == "virtual" and meta["engine"]["events"] > 1000
    summary = json.loads((out / rundir.SUMMARY).read_text())
    assert summary["reconciliation"]["agree"] is True
    assert summary["delivery"]["lost"] == 0
    assert (out / rundir.REPORT).is_file()
    assert any(out.glob("client-events-virtual/*.parquet"))
    assert "thresholds:" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "scenario_tail", "message"), [
    (["--model", "/nonexistent/m.toml"], "", "cannot read the model"),
    ([], "\n[model]\ncores = 0\n", "model.cores"),
    ([], "\n[model.costs_us]\nteleport = 1.0\n", "model.costs_us.teleport: unknown operation"),
    (["--users", "0"], "", "--users must be >= 1"),
    (["--server-lead", "-1"], "", "--server-lead: must be 0 to 600 seconds, got -1"),
])
def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               extra: list[str], scenario_tail: str, message: str) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(DEFAULT.read_text() + scenario_tail)
    code = main(["simulate", str(scenario), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_the_server_lead_sets_where_billing_periods_open(tmp_path: Path) -> None:
    # quota-exhaustion's 15 s periods open when its server starts: --server-lead
    # seconds before scenario time 0, as in the real run whose lead it replays.
    scenario = ROOT / "scenarios" / "quota-exhaustion.toml"
    starts = {}
    for lead in (0.7, 3.0):
        out = tmp_path / f"lead-{lead}"
        code = main(["simulate", str(scenario), "--users", "3", "--duration", "2",
                     "--server-lead", str(lead), "--out", str(out), "--no-progress"])
        assert code in (0, 1)
        meta = json.loads((out / rundir.RUN).read_text())
        assert meta["engine"]["server_lead_s"] == lead
        assert meta["origin"] - meta["started"] == pytest.approx(lead)
        first = json.loads((out / rundir.SERVER_TIMELINE).read_text().splitlines()[0])
        starts[lead] = first["stats"]["usage"]["app_demo"]["periodStartUnix"] - meta["origin"]
    assert starts[0.7] == pytest.approx(-0.7, abs=1.0)  # a whole second, as the API says
    assert starts[3.0] == pytest.approx(-3.0, abs=1.0)


def test_ctrl_c_stops_cleanly_and_keeps_the_partial_run(tmp_path: Path) -> None:
    out = tmp_path / "v"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.cli", "simulate", str(DEFAULT), "--users", "200",
         "--duration", "3000", "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:  # the first progress line: the engine is running
        if "virtual" in line and "events/s" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    meta = json.loads((out / rundir.RUN).read_text())
    assert meta["status"] == "interrupted" and meta["ended"] < meta["started"] + 3000
    assert (out / rundir.SUMMARY).is_file()


def test_the_benchmark_children_answer_bad_input_in_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert saturation.main(["--model", "/nonexistent/m.toml"]) == 2
    assert scale.main(["--clients", "0"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the model" in err and "--clients must be >= 1" in err
    assert "Traceback" not in err
