"""The vectorised delivery accounting gives exactly the numbers of the original
row-by-row implementation, kept here as the oracle, on random and synthesised logs."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.rundata import group_events
from loadtests.accounting import (
    GRACE_S,
    DeliveryReport,
    count_reordered,
    delivery_report,
    delivery_report_of_run,
    subscription_intervals,
)
from loadtests.eventload import load_client_events
from loadtests.eventlog import SCHEMA
from server.patterns import is_wildcard, match_channel

COLS = ["t", "user", "user_class", "op", "outcome", "latency_ms", "attempt", "bytes",
        "channel", "msg_id", "peer", "intended_t", "policy"]


# -- the oracle: the accounting as first written (a Python loop per row) ----------------

def reference_intervals(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    open_: dict[tuple[str, str], tuple[float, float]] = {}
    ends = df[(df.op.isin(["subscribe", "unsubscribe"]) & (df.outcome == "ok"))
              | df.op.isin(["close", "disconnect", "give_up"])]
    latency = ends.latency_ms.fillna(0.0) / 1000.0
    for user, op, channel, t, lat in zip(ends.user, ends.op, ends.channel, ends.t, latency,
                                         strict=True):
        if op == "subscribe":
            open_.setdefault((user, channel), (t - lat, t))
        elif op == "unsubscribe":
            began = open_.pop((user, channel), None)
            if began is not None:
                rows.append((user, channel, *began, t))
        else:
            for key in [k for k in open_ if k[0] == user]:
                rows.append((user, key[1], *open_.pop(key), t))
    rows.extend((u, c, *began, float("inf")) for (u, c), began in open_.items())
    return pd.DataFrame(rows, columns=["user", "name", "requested", "start", "end"])


def reference_reordered(delivered: pd.DataFrame) -> int:
    reordered = 0
    last: dict[tuple[str, str, str], int] = {}
    seen: set[tuple[str, str]] = set()
    for user, peer, channel, msg_id in zip(delivered.user, delivered.peer, delivered.channel,
                                           delivered.msg_id, strict=True):
        _, _, tail = msg_id.rpartition(":")
        if not tail.isdigit() or (user, msg_id) in seen:
            continue
        seen.add((user, msg_id))
        seq = int(tail)
        stream = (user, peer, channel)
        if seq < last.get(stream, 0):
            reordered += 1
        else:
            last[stream] = seq
    return reordered


def reference_report(df: pd.DataFrame, grace_s: float = GRACE_S) -> DeliveryReport:
    pubs = df[(df.op == "publish") & (df.outcome == "ok") & (df.msg_id != "")]
    sent = pubs.t - pubs.latency_ms.fillna(0) / 1000.0
    pubs = pubs.assign(sent=sent.where(pubs.intended_t.isna(), pubs.intended_t))
    subs = reference_intervals(df)
    delivered = df[(df.op == "deliver") & (df.outcome == "message") & (df.msg_id != "")]
    copies = delivered.groupby(["msg_id", "user"]).size()
    received = set(copies.index)
    owed: set[tuple[str, str]] = set()
    excluded: set[tuple[str, str]] = set()
    names = subs.name.to_numpy()
    wild = np.array([is_wildcard(n) for n in names], dtype=bool)
    for channel, group in pubs.groupby("channel", sort=False):
        match = ~wild & (names == channel)
        if wild.any():
            match |= wild & np.array([w and match_channel(n, channel)
                                      for n, w in zip(names, wild, strict=True)], dtype=bool)
        cand = subs[match]
        users, requested = cand.user.to_numpy(), cand.requested.to_numpy()
        starts, ends = cand.start.to_numpy(), cand.end.to_numpy()
        for msg_id, publisher, t_sent, t_ack in zip(group.msg_id, group.user, group.sent,
                                                    group.t, strict=True):
            late = t_ack + grace_s
            others = users != publisher
            full = others & (starts <= t_sent) & (ends >= late)
            partial = others & ~full & (requested <= late) & (ends >= t_sent)
            owed.update((msg_id, u) for u in users[full])
            excluded.update((msg_id, u) for u in users[partial])
    excluded -= owed
    got = len(owed & received)
    duplicates = int((copies - 1).clip(lower=0).sum()) if len(copies) else 0
    return DeliveryReport(published=len(pubs), expected=len(owed), delivered=got,
                          lost=len(owed) - got, duplicates=duplicates,
                          reordered=reference_reordered(delivered), excluded=len(excluded),
                          unexpected=len(received - owed - excluded))


# -- random event logs ----------------------------------------------------------------

USERS = ["a", "b", "c", "p", "q"]
CHANNELS = ["room/1", "room/2", "room/x/y", "c", "room/*", "room/\\*"]
NAMES = [*CHANNELS, "room/**", "**", "c*", "*/1"]
MSG_IDS = ["p:1", "p:2", "p:3", "p:10", "p:007", "q:1", "q:2", "a:b:3", "p:", "x", "12",
           "q:99999999999999999999999", ""]
# Binary fractions, so that a window's edges can coincide exactly (t == ack + grace):
# ties, in-flight windows shorter and longer than the grace.
GAPS = [0.0, 1 / 1024, 1 / 256, 0.5, 1.0, 1.5, 4.0]
LATENCIES = [None, 0.0, 1.0, 500.0, 1000.0, 2500.0]


@st.composite
def logs(draw):
    """A client log over a few users, names, channels and ids drawn per example, so
    that the same subscription is opened, re-opened and closed, and ids collide."""
    def some(pool):
        return st.sampled_from(draw(st.lists(st.sampled_from(pool), min_size=1,
                                             max_size=4, unique=True)))
    users, names, channels, ids = some(USERS), some(NAMES), some(CHANNELS), some(MSG_IDS)
    event = st.one_of(
        st.tuples(st.just("subscribe"), st.sampled_from(["ok", "ok", "ok", "forbidden"]),
                  names, st.just(""), st.just("")),
        st.tuples(st.just("unsubscribe"), st.sampled_from(["ok", "ok", "not_subscribed"]),
                  names, st.just(""), st.just("")),
        st.tuples(st.sampled_from(["close", "disconnect", "give_up", "connect"]),
                  st.sampled_from(["close 1001", "client", "ok"]), st.just(""), st.just(""),
                  st.just("")),
        st.tuples(st.just("publish"), st.sampled_from(["ok", "ok", "ok", "backend_error"]),
                  channels, ids, st.just("")),
        st.tuples(st.just("deliver"), st.sampled_from(["message", "message", "direct"]),
                  channels, ids, users),
    )
    return draw(st.lists(st.tuples(st.sampled_from(GAPS), users, event,
                                   st.sampled_from(LATENCIES),
                                   st.sampled_from([None, None, -0.5])),
                         min_size=draw(st.sampled_from([0, 20, 40])), max_size=80))


def frame(log) -> pd.DataFrame:
    """A client-event frame in log order (times non-decreasing, ties kept in order)."""
    out, t = [], 100.0
    for gap, user, (op, outcome, channel, msg_id, peer), latency, intended in log:
        t += gap
        out.append([t, user, "X", op, outcome, latency, 1, 0, channel, msg_id, peer,
                    None if intended is None else t + intended, ""])
    return pd.DataFrame(out, columns=COLS).astype({"latency_ms": float, "intended_t": float})


def interval_rows(iv: pd.DataFrame) -> list[tuple]:
    return sorted(map(tuple, iv[["user", "name", "requested", "start", "end"]].values.tolist()))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs(), st.sampled_from([GRACE_S, 0.0, 2.0]))
def test_vectorised_accounting_equals_the_row_by_row_oracle(log, grace_s):
    df = frame(log)
    assert interval_rows(subscription_intervals(df)) == interval_rows(reference_intervals(df))
    assert delivery_report(df, grace_s).as_dict() == reference_report(df, grace_s).as_dict()


@settings(max_examples=200, deadline=None)
@given(logs())
def test_reordering_equals_the_oracle(log):
    df = frame(log)
    d = df[df.op == "deliver"]
    assert count_reordered(d) == reference_reordered(d)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs())
def test_categorical_columns_count_the_same(log):
    # The loader's frames hold the strings as categoricals (sorted categories).
    df = frame(log)
    cat = df.astype({c: "category" for c in ("user", "user_class", "op", "outcome",
                                               "channel", "msg_id", "peer", "policy")})
    assert interval_rows(subscription_intervals(cat)) == interval_rows(reference_intervals(df))
    assert delivery_report(cat).as_dict() == reference_report(df).as_dict()
    assert count_reordered(cat[cat.op == "deliver"]) == reference_reordered(
        df[df.op == "deliver"])


def test_a_synthesised_default_run_counts_the_same():
    # The bench's realistic mix: wildcards, a deploy with reconnects and resubscribes,
    # retried publishes, direct sends, misbehaving clients. Then loss, duplicates and
    # reordering on top, so every count is non-zero.
    df = group_events(0, 30_000, 20.0, np.random.default_rng(3))
    rng = np.random.default_rng(4)
    deliveries = np.flatnonzero((df.op == "deliver").to_numpy())
    lost = rng.choice(deliveries, 200, replace=False)
    again = df.iloc[rng.choice(np.setdiff1d(deliveries, lost), 300)].assign(
        t=lambda d: d.t + rng.uniform(0, 0.2, len(d)))
    df = pd.concat([df.drop(index=lost), again]).sort_values("t", kind="stable")
    df = df.reset_index(drop=True)
    new, old = delivery_report(df).as_dict(), reference_report(df).as_dict()
    assert new == old
    assert min(old[k] for k in ("expected", "lost", "duplicates", "reordered",
                                "excluded")) > 0


def _write_log(df: pd.DataFrame, run_dir: Path, files: int) -> None:
    """`df` as the Parquet batches of `files` Locust processes (each its own strings'
    dictionaries), rows dealt out in turn."""
    for k in range(files):
        part = df.iloc[k::files]
        out = run_dir / f"client-events-w{k}"
        out.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(part[COLS], schema=SCHEMA, preserve_index=False),
                       out / "000001.parquet")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs(), st.integers(1, 3), st.integers(1, 40))
def test_recipient_partitions_count_what_one_pass_does(log, files, rows_per_part):
    # The out-of-core accounting splits deliveries by recipient on disk and tallies
    # each partition against one ledger: the sums must be the one-pass numbers.
    df = frame(log)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _write_log(df, d, files)
        whole = delivery_report(load_client_events(d))
        split = delivery_report_of_run(d, load_client_events(d, rows="no deliveries"),
                                       rows_per_part=rows_per_part)
    assert split.as_dict() == whole.as_dict()
