"""sim.analysis against small hand-written run directories with known facts.

Each test writes the files `rtmsim run` would (run.json, a client event CSV with the
real header, server-events.jsonl, server-stats.json, server-timeline.jsonl) holding
a few injected facts, and checks the exact numbers the analysis reports for them.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from loadtests.eventlog import COLUMNS
from sim import analysis as A
from sim import rundir
from sim.analysis.capacity import _rate, _resource

ORIGIN = 1_000_000.0


class RunDir:
    """Builds a run directory; times are given in scenario seconds."""

    def __init__(self, path: Path, *, duration_s: float = 30.0,
                 faults: list[dict[str, Any]] | None = None, **meta: Any) -> None:
        self.path = path
        self.meta = {"name": "synthetic", "status": "complete", "duration_s": duration_s,
                     "origin": ORIGIN, "started": ORIGIN - 1, "users": 4, "shape": None,
                     "faults": faults or [], **meta}
        self.client: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.stats: dict[str, Any] | None = None
        self.timeline: list[dict[str, Any]] = []

    def row(self, ts: float, user: str, op: str, outcome: str = "ok", *,
            latency_ms: float | None = 5.0, attempt: int = 1, user_class: str = "",
            channel: str = "", msg_id: str = "", peer: str = "", policy: str = "default"
            ) -> RunDir:
        self.client.append({
            "t": repr(ORIGIN + ts), "user": user,
            "user_class": user_class or user.split("-")[0], "op": op, "outcome": outcome,
            "latency_ms": "" if latency_ms is None else repr(latency_ms),
            "attempt": attempt, "bytes": 0, "channel": channel, "msg_id": msg_id,
            "peer": peer, "intended_t": "", "policy": policy})
        return self

    def event(self, ts: float, kind: str, **fields: Any) -> RunDir:
        self.events.append({"t": ORIGIN + ts, "event": kind, "instance": "i0", **fields})
        return self

    def server_stats(self, errors: dict[str, int] | None = None,
                     closes: dict[str, int] | None = None, published: int = 0,
                     sent: int = 0, delivered: int = 0,
                     usage: dict[str, Any] | None = None) -> RunDir:
        self.stats = {"i0": snapshot(errors=errors, closes=closes, published=published,
                                     sent=sent, delivered=delivered, usage=usage)}
        return self

    def sample(self, ts: float, instance: str = "i0", **kw: Any) -> RunDir:
        self.timeline.append({"t": ORIGIN + ts, "instance": instance,
                              "stats": snapshot(**kw)})
        return self

    def write(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / rundir.RUN).write_text(json.dumps(self.meta))
        with open(self.path / "client-events-1.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(self.client)
        with open(self.path / rundir.SERVER_EVENTS, "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in self.events)
        if self.stats is not None:
            (self.path / rundir.SERVER_STATS).write_text(json.dumps(self.stats))
        with open(self.path / rundir.SERVER_TIMELINE, "w") as f:
            f.writelines(json.dumps(s) + "\n" for s in self.timeline)
        return self.path

    def load(self) -> A.Run:
        return A.load_run(self.write())


def snapshot(*, errors: dict[str, int] | None = None, closes: dict[str, int] | None = None,
             published: int = 0, sent: int = 0, delivered: int = 0, connections: int = 0,
             usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """A /sim/v1/stats body with just the fields the analysis reads."""
    totals = {"connections": {"now": connections, "peak": connections, "total": connections},
              "errors": errors or {}, "closes": closes or {},
              "messages": {"published": published, "sent": sent, "delivered": delivered}}
    return {"totals": totals, "apps": {}, "instance": None, "usage": usage or {}}


def usage(used: int, balance: float, concurrent: int, overage: int = 0) -> dict[str, Any]:
    return {"appId": "app1", "messagesUsed": used, "overageMessages": overage,
            "overageConnections": 0, "balance": balance, "concurrentNow": concurrent,
            "peakConcurrent": concurrent}


@pytest.fixture
def rd(tmp_path: Path) -> RunDir:
    return RunDir(tmp_path / "run")


def mixed_errors(rd: RunDir) -> RunDir:
    """3 backend_error on publish, 1 invalid_channel, 2 ok publishes; server agrees."""
    for i in range(3):
        rd.row(1.0 + i, "Publisher-1", "publish", "backend_error", attempt=i + 1)
        rd.event(1.0 + i, "error", conn=1, peer="p1", app="a", op="publish",
                 code="backend_error", requestId=f"r{i}")
    rd.row(4.0, "Publisher-1", "publish", "ok", attempt=4)
    rd.row(5.0, "Publisher-1", "publish", "ok")
    rd.row(6.0, "Misbehaving-1", "invalid_channel", "invalid_channel")
    rd.event(6.0, "error", conn=2, peer="p2", app="a", op="subscribe",
             code="invalid_channel", requestId=None)
    rd.row(7.0, "Subscriber-1", "deliver", "message", channel="room")  # not an error
    return rd.server_stats(errors={"backend_error": 3, "invalid_channel": 1}, published=2,
                           delivered=1)


# -- codes --------------------------------------------------------------------------------

def test_error_counts_per_code_with_meaning_and_guidance(rd: RunDir) -> None:
    table = A.error_counts(mixed_errors(rd).load())
    assert list(table.index) == ["backend_error", "invalid_channel"]
    be = table.loc["backend_error"]
    assert (be.client, be.server, be.server_log, be["diff"]) == (3, 3, 3, 0)
    assert be.retry == "yes, after a short backoff"
    assert not be.client_fault
    assert table.loc["invalid_channel"].client_fault
    assert table.loc["invalid_channel"].retry == "never"


def test_reconcile_agrees_when_both_sides_count_the_same(rd: RunDir) -> None:
    rec = A.reconcile(mixed_errors(rd).load())
    assert rec["agree"] is True
    assert rec["differences"] == []
    assert rec["errors"]["backend_error"] == {"client": 3, "server": 3, "diff": 0}
    assert rec["published"] == {"client": 2, "server": 2, "diff": 0, "rest": 0}


def test_reconcile_names_every_difference(rd: RunDir) -> None:
    mixed_errors(rd)
    rd.row(8.0, "Subscriber-1", "close", "close 1001", latency_ms=None)
    rd.server_stats(errors={"backend_error": 5, "invalid_channel": 1},
                    closes={"1001": 2}, published=2, delivered=1)
    rec = A.reconcile(rd.load())
    assert rec["agree"] is False
    assert rec["errors"]["backend_error"] == {"client": 3, "server": 5, "diff": -2}
    assert rec["closes"]["1001"] == {"client": 1, "server": 2, "diff": -1}
    assert ("backend_error: clients recorded 3, the server counted 5 (2 not seen by "
            "clients)") in rec["differences"]
    assert ("close 1001: clients recorded 1, the server counted 2 (1 not seen by "
            "clients)") in rec["differences"]
    # The event log (3 backend_error) disagrees with the counters (5): named too.
    assert ("backend_error: the server event log has 3 but the server counters say 5"
            in rec["differences"])


def test_close_counts_include_rejections_and_dropped_sockets(rd: RunDir) -> None:
    rd.row(1.0, "Churner-1", "connect", "close 4010", latency_ms=3.0)
    rd.row(2.0, "Subscriber-1", "close", "close 1006", latency_ms=None)
    rd.row(3.0, "Subscriber-2", "close", "close 1001", latency_ms=None)
    rd.row(3.1, "Subscriber-2", "publish", "close 1001")  # the same close: not recounted
    rd.event(1.0, "reject", conn=1, code=4010, reason="over concurrent limit")
    rd.event(2.0, "close", conn=2, code=1006, reason="dropped")
    rd.event(3.0, "close", conn=3, code=1001, reason="going away")
    rd.server_stats(closes={"4010": 1, "1006": 1, "1001": 1})
    table = A.close_counts(rd.load())
    assert sorted(table.index) == [1001, 1006, 4010]
    assert table.client.to_dict() == {1001: 1, 1006: 1, 4010: 1}
    assert table["diff"].to_dict() == {1001: 0, 1006: 0, 4010: 0}
    assert table.loc[4010, "name"] == "over_concurrent_limit"
    assert table.loc[1006, "name"] == "abnormal_closure"


def test_error_rates_per_second_in_bins(rd: RunDir) -> None:
    for ts in (0.1, 0.5, 2.2, 2.3, 2.4, 2.9):
        rd.row(ts, "Publisher-1", "publish", "backend_error")
    rd.row(2.5, "Publisher-1", "publish", "over_message_quota")
    run = rd.load()
    rates = A.error_rates(run, bin_s=1.0)
    assert rates.backend_error.iloc[:4].tolist() == [2.0, 0.0, 4.0, 0.0]
    assert rates.over_message_quota.loc[2.0] == 1.0
    assert len(rates) == 30  # every second of the 30 s scenario, zeros included
    assert A.error_rates(run, bin_s=2.0).backend_error.iloc[:2].tolist() == [1.0, 2.0]


# -- latency and retries ------------------------------------------------------------------

def test_latency_percentiles_from_raw_samples_of_ok_requests(rd: RunDir) -> None:
    for i in range(1, 101):
        rd.row(i * 0.1, "Publisher-1", "publish", "ok", latency_ms=float(i))
    rd.row(11.0, "Publisher-1", "publish", "backend_error", latency_ms=5000.0)  # excluded
    rd.row(11.0, "Subscriber-1", "deliver", "message", latency_ms=7.0)  # not a request
    table = A.latency_percentiles(rd.load())
    pub = table.loc["publish"]
    assert list(table.index) == ["publish"]
    assert pub["count"] == 100
    assert pub["mean"] == pytest.approx(50.5)
    assert pub["p50"] == pytest.approx(50.5)
    assert pub["p90"] == pytest.approx(90.1)
    assert pub["p99"] == pytest.approx(99.01)
    assert pub["p99.9"] == pytest.approx(99.901)
    assert pub["max"] == 100.0


def test_latency_over_time_per_bin_and_op(rd: RunDir) -> None:
    for ms in (1.0, 2.0, 3.0):
        rd.row(1.0, "Publisher-1", "publish", latency_ms=ms)
    rd.row(6.0, "Publisher-1", "publish", latency_ms=40.0)
    df = A.latency_over_time(rd.load(), bin_s=5.0, percentiles=(50, 99))
    assert df.ts.tolist() == [0.0, 5.0]
    assert df.p50.tolist() == pytest.approx([2.0, 40.0])
    assert df.p99.tolist() == pytest.approx([2.98, 40.0])
    assert df["count"].tolist() == [3, 1]


def test_retry_amplification_per_policy(rd: RunDir) -> None:
    rd.row(1.0, "Publisher-1", "publish", "backend_error", attempt=1)
    rd.row(1.1, "Publisher-1", "publish", "backend_error", attempt=2)
    rd.row(1.3, "Publisher-1", "publish", "ok", attempt=3)
    rd.row(2.0, "Publisher-1", "publish", "ok", attempt=1)
    rd.row(2.0, "Publisher-2", "publish", "ok", attempt=1, policy="none")
    rd.row(2.5, "Publisher-1", "close", "close 1001", latency_ms=None)  # a note, not a request
    table = A.retry_amplification(rd.load())
    default = table.loc["default"]
    assert (default.operations, default.attempts, default.retries, default.retried) == (
        2, 4, 2, 1)
    assert default.amplification == 2.0
    assert table.loc["none"].amplification == 1.0


def test_a_user_without_a_policy_is_listed_as_none_in_name_order(rd: RunDir) -> None:
    # First seen: naive, then no policy, then default; tables list policies by name.
    rd.row(1.0, "Naive-1", "publish", "ok", policy="naive")
    rd.row(2.0, "Bare-1", "publish", "backend_error", policy="")
    rd.row(2.1, "Bare-1", "publish", "ok", attempt=2, policy="")
    rd.row(3.0, "Publisher-1", "publish", "ok", policy="default")
    run = rd.load()
    table = A.retry_amplification(run)
    assert table.index.tolist() == ["(none)", "default", "naive"]
    assert table.attempts.tolist() == [2, 1, 1]
    assert list(A.amplification_by_policy(run)) == ["(none)", "default", "naive"]
    assert A.retry_outcomes(run).index.tolist() == ["(none)", "default", "naive"]


def test_delivery_accounting_and_latency(rd: RunDir) -> None:
    for user in ("Subscriber-1", "Subscriber-2"):
        rd.row(0.5, user, "subscribe", "ok", channel="room")
    rd.row(1.0, "Publisher-1", "publish", "ok", channel="room", msg_id="Publisher-1:1")
    rd.row(1.01, "Subscriber-1", "deliver", "message", latency_ms=4.0, channel="room",
           msg_id="Publisher-1:1", peer="Publisher-1")
    rd.row(1.02, "Subscriber-1", "deliver", "message", latency_ms=6.0, channel="room",
           msg_id="Publisher-1:1", peer="Publisher-1")  # a duplicate; Subscriber-2 lost it
    run = rd.load()
    acct = A.delivery(run)
    assert (acct["expected"], acct["delivered"], acct["lost"], acct["duplicates"]) == (
        2, 1, 1, 1)
    assert A.delivery_latency(run).tolist() == [4.0, 6.0]
    assert A.reused_message_ids(run) == 0


def test_reused_message_ids_are_detected(rd: RunDir) -> None:
    rd.row(1.0, "Publisher-1", "publish", msg_id="Publisher-1:1")
    rd.row(1.1, "Publisher-1", "publish", "backend_error", attempt=1, msg_id="Publisher-1:2")
    rd.row(1.2, "Publisher-1", "publish", attempt=2, msg_id="Publisher-1:2")  # a retry: fine
    rd.row(9.0, "Publisher-1", "publish", msg_id="Publisher-1:1")  # after a reconnect
    assert A.reused_message_ids(rd.load()) == 1


# -- never-retry violations ---------------------------------------------------------------

def test_never_retry_violations_name_the_looping_client(rd: RunDir) -> None:
    rd.row(0.1, "Looper-1", "connect", "ok", peer="peer-A")
    rd.row(0.1, "Careful-1", "connect", "ok", peer="peer-B")
    for ts in (1.0, 2.0, 3.0):  # the same never-retry answer three times: a loop
        rd.event(ts, "error", conn=5, peer="peer-A", app="a", op="subscribe",
                 code="channel_not_authorized", requestId=f"x{ts}")
    rd.event(4.0, "error", conn=5, peer="peer-A", app="a", op="publish",
             code="channel_not_authorized")  # another op: counted separately, once
    for ts in (1.0, 2.0, 3.0):  # retryable: retrying is right
        rd.event(ts, "error", conn=6, peer="peer-B", app="a", op="publish",
                 code="backend_error")
    rd.event(1.0, "error", conn=7, peer="peer-B", app="a", op="publish", code="missing_data")
    rd.event(2.0, "error", conn=8, peer="peer-B", app="a", op="publish", code="missing_data")
    v = A.never_retry_violations(rd.load())
    assert len(v) == 1
    row = v.iloc[0]
    assert (row.conn, row.peer, row.user, row.user_class) == (5, "peer-A", "Looper-1",
                                                              "Looper")
    assert (row.code, row.op, row.repeats) == ("channel_not_authorized", "subscribe", 2)
    assert (row.first_ts, row.last_ts) == pytest.approx((1.0, 3.0))


def test_a_never_retry_loop_of_a_peer_the_clients_never_logged_has_no_user(rd: RunDir
                                                                           ) -> None:
    rd.row(0.1, "Careful-1", "connect", "ok", peer="peer-B")
    for ts in (1.0, 2.0):
        rd.event(ts, "error", conn=5, peer="peer-X", app="a", op="subscribe",
                 code="channel_not_authorized")
    v = A.never_retry_violations(rd.load())
    assert v[["peer", "user", "user_class", "repeats"]].values.tolist() == [
        ["peer-X", "", "", 1]]


# -- faults -------------------------------------------------------------------------------

def outage_run(rd: RunDir, *, back_at: int) -> RunDir:
    """10 ok publishes/s; outage 10-13 s (10 backend_error/s, no ok); stragglers after.

    Second 13: errors still coming (3); second 14: ok publishes at half rate; from
    `back_at` on: healthy.
    """
    for sec in range(30):
        if 10 <= sec < 13:
            errors, oks = 10, 0
        elif sec == 13:
            errors, oks = 3, 10
        elif sec < back_at and sec > 13:
            errors, oks = 0, 5
        else:
            errors, oks = 0, 10
        for i in range(errors):
            rd.event(sec + i / 20, "error", conn=1, peer="p", app="a", op="publish",
                     code="backend_error")
        for i in range(oks):
            rd.event(sec + i / 20, "ok", conn=1, peer="p", app="a", op="publish")
    rd.meta["faults"] = [{"id": "f1", "kind": "outage", "start_s": 10, "end_s": 13},
                         {"id": "f2", "kind": "latency", "start_s": 0, "end_s": None}]
    return rd


def test_recovery_time_of_a_synthetic_outage(rd: RunDir) -> None:
    rec = A.recovery_times(outage_run(rd, back_at=15).load()).set_index("id")
    f1 = rec.loc["f1"]
    assert (f1.baseline_errors_per_s, f1.baseline_publish_per_s) == (0.0, 10.0)
    assert f1.recovered_at_s == 15.0
    assert f1.recovered_s == 2.0
    assert math.isnan(rec.loc["f2"].recovered_s)
    assert rec.loc["f2"].note == "open-ended: active until the run ended"


def test_recovery_never_within_the_run_is_nan(rd: RunDir) -> None:
    rec = A.recovery_times(outage_run(rd, back_at=99).load()).set_index("id")
    assert math.isnan(rec.loc["f1"].recovered_s)
    assert rec.loc["f1"].note == "not recovered before the scenario ended"
    warnings = A.summary(A.load_run(rd.path))["warnings"]
    assert "fault f1 (outage): not recovered before the scenario ended" in warnings


@pytest.mark.parametrize(("close_code", "note", "warned"), [
    (4020, "terminal close 4020: well-behaved clients stay away, so throughput is not "
           "expected to come back", False),
    (4011, "not recovered before the scenario ended", True),  # clients should come back
])
def test_a_terminal_close_is_not_a_failure_to_recover(rd: RunDir, close_code: int,
                                                      note: str, warned: bool) -> None:
    outage_run(rd, back_at=99)
    rd.meta["faults"] = [{"id": "f1", "kind": "close", "close_code": close_code,
                          "start_s": 10, "end_s": 13}]
    rec = A.recovery_times(rd.load()).set_index("id")
    assert math.isnan(rec.loc["f1"].recovered_s)
    assert rec.loc["f1"].note == note
    warnings = A.summary(A.load_run(rd.path))["warnings"]
    assert any(w.startswith("fault f1") for w in warnings) is warned


def storm_run(rd: RunDir, delays: list[float]) -> A.Run:
    """A deploy closes 4 connections at 5.00-5.03 s; each user is back after `delays`."""
    rd.meta["faults"] = [{"id": "f1", "kind": "deploy", "at_s": 5, "fraction": 1.0}]
    for i, delay in enumerate(delays):
        user = f"Subscriber-{i}"
        rd.row(0.5, user, "connect", "ok", peer=f"p{i}")
        closed_at = 5.0 + i / 100
        rd.event(closed_at, "close", conn=i + 1, peer=f"p{i}", app="a", code=1001,
                 reason="going away (fault f1)")
        rd.row(closed_at + 0.05, user, "close", "close 1001", latency_ms=None)
        rd.row(closed_at + 0.05 + delay, user, "connect", "ok", peer=f"q{i}")
    rd.event(20.0, "close", conn=99, peer="z", app="a", code=1009, reason="too big")
    return rd.load()


def test_reconnect_storm_without_jitter_has_no_spread(rd: RunDir) -> None:
    storms = A.reconnect_storms(storm_run(rd, [1.0, 1.0, 1.0, 1.0]))
    assert len(storms) == 1  # the 1009 close is not a storm code
    s = storms.iloc[0]
    assert (s.code, s.closed, s.client_closed, s.reconnected, s.fault_id) == (
        1001, 4, 4, 4, "f1")
    assert s.at_s == pytest.approx(5.0)
    assert s.median_delay_s == pytest.approx(1.0)
    assert s.spread_s == pytest.approx(0.0, abs=1e-9)
    assert s.peak_reconnects_per_s == 4


def test_reconnect_storm_with_jitter_is_spread(rd: RunDir) -> None:
    s = A.reconnect_storms(storm_run(rd, [0.5, 1.0, 1.5, 2.0])).iloc[0]
    assert s.median_delay_s == pytest.approx(1.25)
    assert s.spread_s == pytest.approx(0.75)  # IQR, numpy linear: 1.625 - 0.875
    assert s.peak_reconnects_per_s == 2


def test_fault_windows_of_an_old_run_json(rd: RunDir) -> None:
    """Old runs: no ids, one-shot faults with at_s only, no window for background faults."""
    rd.meta["faults"] = [{"kind": "outage", "start_s": 20, "end_s": 23},
                         {"kind": "error", "probability": 0.02},
                         {"kind": "deploy", "at_s": 40}]
    rd.meta["duration_s"] = 50
    w = A.fault_windows(rd.load())
    assert w.id.tolist() == ["f1", "f2", "f3"]
    assert w.start_s.tolist() == [20.0, 0.0, 40.0]
    assert w.end_s.tolist() == [23.0, 50.0, 40.0]
    assert w.open_ended.tolist() == [False, True, False]
    assert w.one_shot.tolist() == [False, False, True]


# -- server time series -------------------------------------------------------------------

def test_timeline_keyed_by_admin_url_becomes_instance_names(rd: RunDir) -> None:
    rd.meta["admin_urls"] = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    for ts, n in ((0.0, 0), (1.0, 100), (2.0, 300)):
        rd.sample(ts, "http://127.0.0.1:9001", published=n, connections=3)
        rd.sample(ts, "http://127.0.0.1:9002", published=n // 2, connections=2)
    run = rd.load()
    assert sorted(run.timeline.instance.unique()) == ["i0", "i1"]
    tp = A.throughput(run, bin_s=1.0)
    assert tp.published_per_s.iloc[:2].tolist() == pytest.approx([150.0, 300.0])
    conns = A.connections_over_time(run, bin_s=1.0)
    assert conns.connections.iloc[:3].tolist() == [5, 5, 5]


def test_connections_over_time_counts_closes_per_code(rd: RunDir) -> None:
    rd.sample(0.5, connections=4).sample(1.5, connections=2)
    rd.event(1.2, "close", conn=1, code=1001).event(1.3, "close", conn=2, code=1001)
    rd.event(2.5, "reject", conn=3, code=4010).event(2.6, "connect", conn=4)
    df = A.connections_over_time(rd.load(), bin_s=1.0).set_index("ts")
    assert df.close_1001.loc[[0.0, 1.0, 2.0]].tolist() == [0, 2, 0]
    assert df.close_4010.loc[2.0] == 1
    assert df.connects.loc[2.0] == 1
    assert df.connections.loc[[0.0, 1.0, 2.0]].tolist() == [4, 2, 2]


def test_quota_over_time_reads_the_shared_ledger_once(rd: RunDir) -> None:
    for ts, used, bal in ((0.0, 0, 5.0), (1.0, 10, 4.5), (2.0, 25, 4.0)):
        for inst in ("i0", "i1"):  # two instances report the one shared ledger
            rd.sample(ts, inst, usage={"app1": usage(used, bal, 3)})
    rd.server_stats(usage={"app1": usage(30, 3.5, 0)})
    run = rd.load()
    q = A.quota_over_time(run)
    assert q.app.unique().tolist() == ["app1"]
    assert q.messagesUsed.tolist() == [0, 10, 25]
    assert q.balance.tolist() == [5.0, 4.5, 4.0]
    quota = A.summary(run)["quota"]["app1"]
    assert quota["messagesUsed"] == {"final": 30, "peak": 30}  # final stats come last
    assert quota["balance"] == {"final": 3.5, "peak": 5.0}
    assert quota["concurrentNow"] == {"final": 0, "peak": 3}


# -- capacity ------------------------------------------------------------------------------

def step_run(rd: RunDir, p99s: dict[int, float], errors_at: int | None = None) -> A.Run:
    """Three 10 s steps of 10/20/30 users; publish latency `p99s[users]` per step."""
    rd.meta.update(shape="step_ramp", duration_s=30)
    (rd.path / "locust").mkdir(parents=True)
    lines = ["Timestamp,User Count,Type,Name,Requests/s"]
    for sec in range(30):
        lines.append(f"{int(ORIGIN) + sec},{10 * (sec // 10 + 1)},,Aggregated,0")
    (rd.path / "locust" / "locust_stats_history.csv").write_text("\n".join(lines) + "\n")
    published = 0
    for sec in range(31):
        rd.sample(float(sec), published=published, connections=10 * (min(sec, 29) // 10 + 1))
        published += 10 * (sec // 10 + 1)
    for sec in range(30):
        users = 10 * (sec // 10 + 1)
        for i in range(10):
            outcome = "backend_error" if users == errors_at and i == 0 else "ok"
            rd.row(sec + i / 10, "Publisher-1", "publish", outcome, latency_ms=p99s[users])
    return rd.load()


def test_capacity_knee_is_the_last_step_under_the_p99_limit(rd: RunDir) -> None:
    cap = A.capacity(step_run(rd, {10: 10.0, 20: 50.0, 30: 200.0}))
    assert [s["users"] for s in cap["steps"]] == [10, 20, 30]
    assert [s["msgs_per_s"] for s in cap["steps"]] == pytest.approx([10.0, 20.0, 30.0])
    assert cap["knee"]["users"] == 20
    assert cap["sustainable_connections"] == 20
    assert cap["sustainable_msgs_per_s"] == pytest.approx(20.0)
    assert cap["limit"] == "p99 publish latency 200.0 ms > 100 ms at step 3 (30 users)"


def test_capacity_limit_by_error_rate(rd: RunDir) -> None:
    cap = A.capacity(step_run(rd, {10: 10.0, 20: 10.0, 30: 10.0}, errors_at=20))
    assert cap["knee"]["users"] == 10
    assert cap["limit"] == "error rate 10.00% > 1% at step 2 (20 users)"


# -- summary -------------------------------------------------------------------------------

def test_summary_is_byte_for_byte_reproducible(rd: RunDir) -> None:
    mixed_errors(rd)
    rd.row(0.5, "Publisher-1", "connect", "ok", latency_ms=12.5, peer="p1")
    rd.sample(0.0, usage={"app1": usage(0, 1.0, 1)}).sample(10.0, published=2)
    rd.meta["faults"] = [{"id": "f1", "kind": "outage", "start_s": 2, "end_s": 3}]
    path = rd.write()
    first = A.write_summary(path)
    text = (path / rundir.SUMMARY).read_bytes()
    A.write_summary(path)
    assert (path / rundir.SUMMARY).read_bytes() == text
    data = json.loads(text)
    assert data == first
    assert "NaN" not in text.decode()
    be = data["errors"]["backend_error"]
    assert (be["client"], be["server"], be["diff"]) == (3, 3, 0)
    assert be["client_per_s"] == 0.1  # 3 over the 30 s scenario
    assert be["per_1000_requests"] == pytest.approx(1000 * 3 / 7, abs=1e-6)
    assert data["latency_ms"]["publish"]["count"] == 2
    assert data["reconciliation"]["agree"] is True
    assert data["warnings"] == []


def test_summary_warns_about_never_retry_loops_and_differences(rd: RunDir) -> None:
    rd.row(0.1, "Looper-1", "connect", "ok", peer="peer-A")
    for ts in (1.0, 2.0):
        rd.row(ts, "Looper-1", "subscribe", "channel_not_authorized")
        rd.event(ts, "error", conn=5, peer="peer-A", app="a", op="subscribe",
                 code="channel_not_authorized")
    rd.server_stats(errors={"channel_not_authorized": 3})
    data = A.summary(rd.load())
    assert data["never_retry_violations"]["connections"] == 1
    assert data["never_retry_violations"]["top_offenders"][0]["user"] == "Looper-1"
    assert any(w.startswith("1 connections repeated a never-retry code")
               for w in data["warnings"])
    assert ("unreconciled: channel_not_authorized: clients recorded 2, the server counted "
            "3 (1 not seen by clients)") in data["warnings"]


def test_percentiles_method_is_numpy_linear() -> None:
    samples = np.array([3.0, 1.0, 2.0, 10.0])
    got = A.percentiles_of(samples, (50, 90))
    assert got["p50"] == np.percentile(samples, 50, method="linear") == 2.5
    assert got["p90"] == pytest.approx(7.9)
    assert A.PERCENTILE_METHOD == "linear"


# -- breakdowns, retry outcomes and projections (for the notebooks) ----------------------

def test_error_breakdown_client_by_class_and_op(rd: RunDir) -> None:
    table = A.error_breakdown(mixed_errors(rd).load(), ("user_class", "op"))
    pub = table.loc[("Publisher", "publish")]
    assert (pub.requests, pub.errors, pub.backend_error) == (5, 3, 3)
    assert pub.error_rate == pytest.approx(0.6)
    bad = table.loc[("Misbehaving", "invalid_channel")]
    assert (bad.requests, bad.errors, bad.invalid_channel, bad.backend_error) == (1, 1, 1, 0)
    assert list(table.columns[:3]) == ["requests", "errors", "error_rate"]
    assert list(table.columns[3:]) == ["backend_error", "invalid_channel"]  # most first


def test_error_breakdown_server_by_app_and_op(rd: RunDir) -> None:
    mixed_errors(rd)
    rd.event(5.0, "ok", conn=1, peer="p1", app="a", op="publish")
    rd.event(6.5, "error", conn=2, peer="p2", app="b", code="malformed_message")  # no op
    table = A.error_breakdown(rd.load(), ("app", "op"), side="server")
    assert table.loc[("a", "publish")].tolist()[:2] == [4, 3]
    assert table.loc[("b", "(unparsed)")].malformed_message == 1
    with pytest.raises(ValueError, match="by must name some of app, op, instance"):
        A.error_breakdown(rd.load(), "user_class", side="server")


def test_retry_outcomes_and_never_retry_retries(rd: RunDir) -> None:
    # default: one op needing three attempts, one first-try success
    rd.row(1.0, "Publisher-1", "publish", "backend_error", attempt=1)
    rd.row(1.1, "Publisher-1", "publish", "backend_error", attempt=2)
    rd.row(1.3, "Publisher-1", "publish", "ok", attempt=3)
    rd.row(2.0, "Publisher-1", "publish", "ok", attempt=1)
    # naive: retries a never-retry code twice, never succeeds; then a retryable retry
    for attempt in (1, 2, 3):
        rd.row(1.0 + attempt / 10, "Naive-1", "publish", "channel_reserved",
               attempt=attempt, policy="naive")
    rd.row(3.0, "Naive-1", "publish", "backend_error", attempt=1, policy="naive")
    rd.row(3.1, "Naive-1", "publish", "ok", attempt=2, policy="naive")
    run = rd.load()
    out = A.retry_outcomes(run)
    d, n = out.loc["default"], out.loc["naive"]
    assert (d.operations, d.succeeded, d.max_attempts) == (2, 2, 3)
    assert (d.success_rate, d.first_try_rate, d.attempts_per_operation) == (1.0, 0.5, 2.0)
    assert (n.operations, n.succeeded, n.success_rate, n.max_attempts) == (2, 1, 0.5, 3)
    v = A.retried_never_retry_codes(run)
    assert v.to_dict("records") == [{"user": "Naive-1", "user_class": "Naive",
                                     "policy": "naive", "code": "channel_reserved",
                                     "retries": 2, "operations": 1,
                                     "first_ts": pytest.approx(1.2)}]


def test_recovery_by_class_compares_policies_side_by_side(rd: RunDir) -> None:
    for sec in range(20):
        fast_ok = sec < 10 or sec >= 12  # Fast: back 0 s after the 10-12 s outage
        slow_ok = sec < 10 or sec >= 16  # Slow: back 4 s after
        for i in range(4):
            if fast_ok:
                rd.row(sec + i / 4, "Fast-1", "publish")
            if slow_ok:
                rd.row(sec + i / 4 + 0.1, "Slow-1", "publish")
    rd.meta.update(duration_s=20, faults=[
        {"id": "f1", "kind": "outage", "start_s": 10, "end_s": 12}])
    rec = A.recovery_by_class(rd.load()).set_index("user_class")
    assert rec.loc["Fast"].recovered_s == 0.0
    assert rec.loc["Slow"].recovered_s == 4.0
    assert rec.loc["Slow"].first_ok_s == pytest.approx(4.1)
    assert rec.loc["Fast"].baseline_ok_per_s == 4.0


def test_errors_by_step_grow_with_the_load(rd: RunDir) -> None:
    run = step_run(rd, {10: 10.0, 20: 10.0, 30: 10.0}, errors_at=30)
    by_step = A.errors_by_step(run)
    assert by_step[["step", "users", "code", "errors", "requests"]].values.tolist() == [
        [3, 30, "backend_error", 8, 80]]  # seconds 22-29: one error each (2 s settle)
    assert by_step.per_s.iloc[0] == pytest.approx(1.0)
    assert not by_step.client_fault.iloc[0]


def test_run_dirs_or_newest_prefers_the_named_scenario(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for name, started in (("retry-bakeoff", 10.0), ("default", 30.0),
                          ("retry-bakeoff", 20.0)):
        RunDir(results / f"{name}-{started:g}", name=name, started=started).write()
    (results / "notes").mkdir()  # not a run directory: ignored
    assert A.run_dirs_or_newest([], results) == [results / "default-30"]
    assert A.run_dirs_or_newest(None, results, "retry-bakeoff") == [
        results / "retry-bakeoff-20"]
    assert A.run_dirs_or_newest([], results, "capacity-ramp") == [results / "default-30"]
    assert A.run_dirs_or_newest(str(results / "default-30"), results) == [
        results / "default-30"]
    with pytest.raises(FileNotFoundError, match="notes: not a run directory"):
        A.run_dirs_or_newest([results / "notes"], results)
    with pytest.raises(FileNotFoundError, match=r"no run directory under .*: run `rtmsim "
                                                r"run scenarios/capacity-ramp\.toml` first"):
        A.run_dirs_or_newest([], tmp_path / "empty", "capacity-ramp")


def test_whose_fault_reads_the_code_table() -> None:
    assert [A.whose_fault(c) for c in ("channel_reserved", "channel_not_authorized",
                                       "backend_error", "over_message_quota",
                                       "peer_not_found", "teleported")] == [
        "client", "client", "service", "limit", "limit", "unknown"]


def test_capacity_names_the_resource_that_ran_out():
    two = SimpleNamespace(meta={"instances": 2})
    assert _resource(two, 1.9).startswith("server CPU ran out (1.90 cores busy over 2")
    assert _resource(two, 0.6).startswith("not the server's CPU (0.60 cores busy")
    assert _resource(two, float("nan")) == "server CPU not recorded (older run)"


@pytest.mark.parametrize(("share", "warned"), [(0.97, True), (0.5, False)])
def test_a_saturated_load_generator_is_a_warning(rd: RunDir, share: float,
                                                 warned: bool) -> None:
    mixed_errors(rd)
    rd.meta["load_generator"] = {"processes": 1, "cpu_s": 20.0, "busiest_share": share}
    warnings = A.summary(A.load_run(rd.write()))["warnings"]
    found = [w for w in warnings if w.startswith("load generator:")]
    assert found == ([f"load generator: a Locust process used {share:.0%} of a core in "
                      "its busiest second: client latencies and closed-loop rates include "
                      "its own queue (more swarm.workers, or `rtmsim simulate`, to see "
                      "past it)"] if warned else [])


def test_a_steps_rate_comes_from_the_samples_inside_it() -> None:
    # 60 publishes a second from 6 s until the load stops at 9 s, sampled each second
    # at .3: the samples inside [6.75, 9) give 60; interpolating at 9 s across the
    # sample at 9.3 (nothing published after 9) would spread 0.7 s over the whole second.
    t = [5.3, 6.3, 7.3, 8.3, 9.3, 10.3]
    total = pd.Series([152, 197, 257, 317, 359, 359], index=t, dtype=float)
    assert _rate(total, 6.75, 9.0) == pytest.approx(60.0)
    # a step with fewer than two samples a second apart inside: interpolated
    assert _rate(total, 6.5, 7.5) == pytest.approx(60.0)
    assert _rate(total, 8.5, 9.0) == pytest.approx((359 - 317) / 1.0)
