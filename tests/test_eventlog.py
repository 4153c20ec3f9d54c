"""The Parquet client event log: batches survive a killed process, old CSV runs still
load the same, and `rtmsim export --csv` gives back the old format row for row."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
from serverproc import ROOT

from loadtests.accounting import load_client_events
from loadtests.eventlog import COLUMNS, EventLog, csv_lines
from sim.cli import main

ROWS = [
    (1_800_000_000.5, "u1", "Publisher", "connect", "ok", 12.25, 1, 0, "", "", "p-1", None,
     "default"),
    (1_800_000_001.25, "u1", "Publisher", "publish", "backend_error", 0.5, 1, 254, "room/1",
     "u1:1", "", None, "default"),
    (1_800_000_001.75, "u1", "Publisher", "publish", "ok", 0.30000000000000004, 2, 254,
     "room/1", "u1:1", "", 1_800_000_001.2, "default"),
    (1_800_000_002.0, "u2", "Subscriber", "deliver", "message", None, 1, 254, "room/1",
     "u1:1", "u1", None, ""),
    (1_800_000_003.0, "u2", "Subscriber", "close", 'close 4000, "quoted"', None, 1, 0, "",
     "", "", None, ""),
]

KILLED = """
import os, signal, sys
from loadtests.eventlog import EventLog
rows = {rows!r}
log = EventLog(sys.argv[1])
for r in rows[:3]:
    log.row(*r)
log.flush()                      # one batch on disk
for r in rows[3:]:
    log.row(*r)                  # still buffered when the process dies
os.kill(os.getpid(), signal.SIGKILL)
"""


def run_dir_with(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"name": "t", "origin": 1_800_000_000.0}))
    return d


def test_a_killed_process_keeps_every_batch_it_flushed(tmp_path: Path):
    d = run_dir_with(tmp_path)
    proc = subprocess.run([sys.executable, "-c", KILLED.format(rows=ROWS),
                           str(d / "client-events-w1")], cwd=ROOT, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (d / "client-events-w1" / ".000002.parquet.tmp").write_bytes(b"PAR1 cut short")
    df = load_client_events(d)
    assert df.op.tolist() == ["connect", "publish", "publish"]
    assert df.outcome.tolist() == ["ok", "backend_error", "ok"]


def test_a_new_log_on_the_same_directory_appends_batches(tmp_path: Path):
    for part in (ROWS[:2], ROWS[2:]):
        log = EventLog(tmp_path / "log")
        for r in part:
            log.row(*r)
        log.close()
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == ["000001.parquet",
                                                                     "000002.parquet"]
    assert len(load_client_events_from(tmp_path / "log")) == len(ROWS)


def load_client_events_from(log: Path) -> pd.DataFrame:
    d = log.parent / "wrapped"
    (d / "client-events-x").mkdir(parents=True)
    for p in log.iterdir():
        (d / "client-events-x" / p.name).write_bytes(p.read_bytes())
    return load_client_events(d)


def write_parquet_run(tmp_path: Path) -> Path:
    d = run_dir_with(tmp_path)
    log = EventLog(d / "client-events-w1")
    for r in ROWS:
        log.row(*r)
    log.close()
    return d


def test_an_old_csv_run_directory_loads_as_the_parquet_one_does(tmp_path: Path):
    new = load_client_events(write_parquet_run(tmp_path))
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    (old_dir / "client-events-w1.csv").write_text(",".join(COLUMNS) + "\n"
                                                  + csv_lines(ROWS), encoding="utf-8")
    old = load_client_events(old_dir)
    pd.testing.assert_frame_equal(old, new)
    assert new.dtypes.astype(str).tolist() == [
        "float64", "category", "category", "category", "category", "float64", "int64",
        "int64", "category", "category", "category", "float64", "category"]
    assert new.outcome.cat.categories.tolist() == [
        "backend_error", 'close 4000, "quoted"', "message", "ok"]


def test_rows_are_sorted_by_time_and_ties_keep_file_order(tmp_path: Path):
    # Equal times in two processes' batches and an old CSV log: the stable sort of
    # the concatenation in file order (batches by path, then the CSV logs).
    d = run_dir_with(tmp_path)
    logs = {"b": [(5.0, "zed", "c1"), (7.0, "amy", "c2")],
            "a": [(7.0, "bob", "c3"), (5.0, "bob", "c4")]}
    for tag, rows in logs.items():
        log = EventLog(d / f"client-events-{tag}")
        for t, user, channel in rows:
            log.row(t, user, "Publisher", "publish", "ok", channel=channel)
        log.close()
    (d / "client-events-c.csv").write_text(
        ",".join(COLUMNS) + "\n" + csv_lines([(5.0, "cal", "Publisher", "publish", "ok", None, 1,
                                               0, "c5", "", "", None, "naive")]), encoding="utf-8")
    df = load_client_events(d)
    assert df[["t", "user", "channel"]].values.tolist() == [
        [5.0, "bob", "c4"], [5.0, "zed", "c1"], [5.0, "cal", "c5"],
        [7.0, "bob", "c3"], [7.0, "amy", "c2"]]
    # Categories are the values used, sorted: sorting and grouping order as strings do.
    assert df.user.cat.categories.tolist() == ["amy", "bob", "cal", "zed"]
    assert df.policy.cat.categories.tolist() == ["", "naive"]
    assert df.sort_values("user", kind="stable").channel.tolist() == ["c2", "c4", "c3",
                                                                       "c5", "c1"]


def test_a_run_without_client_events_loads_empty_with_the_same_dtypes(tmp_path: Path):
    df = load_client_events(run_dir_with(tmp_path))
    assert len(df) == 0
    assert df.columns.tolist() == list(COLUMNS)
    assert df.dtypes.astype(str).tolist() == load_client_events(
        write_parquet_run(tmp_path / "other")).dtypes.astype(str).tolist()


def test_export_csv_round_trips_to_the_old_format(tmp_path: Path, capsys):
    d = write_parquet_run(tmp_path)
    assert main(["export", str(d), "--csv"]) == 0
    out = d / "export" / "client-events-w1.csv"
    assert out.read_text(encoding="utf-8") == ",".join(COLUMNS) + "\n" + csv_lines(ROWS)
    assert f"wrote 5 rows to {out}" in capsys.readouterr().out
    back = tmp_path / "back"
    back.mkdir()
    (back / out.name).write_bytes(out.read_bytes())
    pd.testing.assert_frame_equal(load_client_events(back), load_client_events(d))


def test_export_errors_are_one_line_and_exit_2(tmp_path: Path, capsys):
    assert main(["export", str(tmp_path), "--csv"]) == 2
    err = capsys.readouterr().err
    assert err == (f"rtmsim: {tmp_path}: not a run directory (no run.json); pass a "
                   "directory written by `rtmsim run`\n")
    d = run_dir_with(tmp_path)
    assert main(["export", str(d), "--csv"]) == 2
    assert "no Parquet client event log" in capsys.readouterr().err
    d = write_parquet_run(tmp_path / "x")
    assert main(["export", str(d), "--csv", "--out", str(d)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


WARM_CHILD = """
import gc, sys
from locust import events
from loadtests import hooks, eventlog
assert hooks._quiet_start in events.init._handlers, "not a Locust init listener"
before = set(sys.modules)
hooks._quiet_start(None)
warmed = set(sys.modules) - before
frozen = gc.get_freeze_count()
row = (1.0, "u", "C", "publish", "ok", 1.5, 1, 100, "ch", "m:1", "", None, "default")
eventlog.parquet_bytes(eventlog.table_of([row] * 3))
print(len(warmed), frozen, sorted(set(sys.modules) - before - warmed))
"""


def test_a_load_process_does_its_first_flush_and_freezes_its_start_up_at_init():
    """The first flush imported pandas inside the load (a 0.5 s stall, 1 s into every
    real run): after Locust's init (the hook is one of its listeners), a flush imports
    nothing new, and what the process held at init is out of the collector's sight.
    In a child: the freeze is the whole process's."""
    out = subprocess.run([sys.executable, "-c", WARM_CHILD], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60).stdout.split(maxsplit=2)
    warmed, frozen, new = int(out[0]), int(out[1]), out[2].strip()
    assert warmed > 0  # the init did the first-time work (pandas, among others)
    assert frozen > 10_000  # Locust, gevent, pyarrow: far more objects than that
    assert new == "[]"  # and the first real flush found nothing left to import

