"""A run too large to hold its deliveries analyses as the same run held in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.rundata import synthesise
from loadtests.eventload import delivery_extent, load_client_events, split_deliveries
from sim.analysis import run as run_module
from sim.analysis.run import load_run
from sim.analysis.summary import summary
from sim.report.run_report import build_all


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("synth") / "run"
    synthesise(d, 60_000)
    return d


def test_a_run_with_its_deliveries_on_disk_summarises_the_same(run_dir: Path):
    held, lean = load_run(run_dir), load_run(run_dir, in_memory_events=0)
    assert not held.deliveries_on_disk and lean.deliveries_on_disk
    assert (lean.client.op == "deliver").sum() == 0
    assert lean.delivery_count() == held.delivery_count() > 40_000
    assert summary(lean) == summary(held)


def test_the_report_builds_from_a_run_whose_deliveries_stay_on_disk(run_dir: Path,
                                                                     monkeypatch):
    monkeypatch.setattr(run_module, "IN_MEMORY_EVENTS", 0)
    build_all(run_dir)
    assert (run_dir / "report.html").stat().st_size > 10_000
    assert (run_dir / "summary.json").exists()


def test_split_deliveries_keeps_every_delivery_once_in_log_order(run_dir: Path,
                                                                 tmp_path: Path):
    whole = load_client_events(run_dir, rows="deliveries", columns=("t", "user", "msg_id"))
    files = split_deliveries(run_dir, tmp_path, 4)
    parts = [load_client_events(files=[f], columns=("t", "user", "msg_id")) for f in files]
    assert sum(len(p) for p in parts) == len(whole) == delivery_extent(run_dir)[0]
    # Each recipient in exactly one partition, its rows in the order of the whole log.
    owners = [set(p.user.astype(str)) for p in parts]
    assert sum(len(o) for o in owners) == len(set().union(*owners))
    for part in parts:
        mine = whole[whole.user.astype(str).isin(set(part.user.astype(str)))]
        assert part.msg_id.astype(str).tolist() == mine.msg_id.astype(str).tolist()
