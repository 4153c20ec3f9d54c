"""End-to-end delivery accounting from the raw client event logs.

Loss is a count, not a guess: every publish row names its message id and channel,
every subscription has an acked start and an end (unsubscribe, close, disconnect), so
the recipients a message was owed are known. A subscriber whose subscription began or
ended while the message was in flight (between its send and its ack, plus a grace for
the delivery already on the wire) is excluded and counted separately: under
at-most-once delivery nobody owed it that message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from server.patterns import is_wildcard, match_channel

from .eventlog import COLUMNS, SCHEMA, SUFFIX

GRACE_S = 1.0


def client_event_files(run_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """(Parquet batches, old CSV logs) of a run directory's client event logs.

    Batches are `client-events-<tag>/<seq>.parquet` (`loadtests.eventlog`); older runs
    wrote one `client-events-<tag>.csv` per process. Temporary files of a batch being
    written (a process killed mid-flush) do not match and are left out.
    """
    d = Path(run_dir)
    parquet = sorted(p for p in d.glob(f"client-events-*/*{SUFFIX}") if p.name[0] != ".")
    return parquet, sorted(d.glob("client-events-*.csv"))


def load_client_events(run_dir: str | Path) -> pd.DataFrame:
    """Every client event of a run directory (Parquet batches and old CSV logs), in one
    frame sorted by time, with the same columns and dtypes whichever format it read."""
    parquet, csvs = client_event_files(run_dir)
    frames = []
    if parquet:
        table = pq.read_table(parquet, schema=SCHEMA)
        df = table.to_pandas()
        frames.append(df.astype({"attempt": np.int64}))
    frames.extend(pd.read_csv(f, dtype={"user": str, "channel": str, "msg_id": str,
                                        "peer": str, "outcome": str, "op": str},
                              keep_default_na=False,
                              na_values={"latency_ms": [""], "intended_t": [""]})
                  for f in csvs)
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    df = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    return df.sort_values("t", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class DeliveryReport:
    published: int  # acked publishes carrying a message id
    expected: int  # (message, recipient) pairs owed a delivery
    delivered: int  # of those, delivered at least once
    lost: int  # expected - delivered
    duplicates: int  # extra copies received
    reordered: int  # deliveries older than one already seen from the same stream
    excluded: int  # recipients whose subscription changed while the message was in flight
    unexpected: int  # deliveries to a recipient that was not owed the message

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def subscription_intervals(df: pd.DataFrame) -> pd.DataFrame:
    """(user, name, requested, start, end) for every acked subscription.

    `start` is when the ack arrived (surely active), `requested` when the subscribe
    was sent (possibly active from then on: the server may register it long before
    its ack reaches a busy client); `end` is inf while held.
    """
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
        else:  # the connection ended: every subscription of this user ends with it
            for key in [k for k in open_ if k[0] == user]:
                rows.append((user, key[1], *open_.pop(key), t))
    rows.extend((u, c, *began, float("inf")) for (u, c), began in open_.items())
    return pd.DataFrame(rows, columns=["user", "name", "requested", "start", "end"])


def delivery_report(df: pd.DataFrame, grace_s: float = GRACE_S) -> DeliveryReport:
    """Count what every acked publish owed, what arrived, and what did not."""
    pubs = df[(df.op == "publish") & (df.outcome == "ok") & (df.msg_id != "")]
    sent = pubs.t - pubs.latency_ms.fillna(0) / 1000.0
    pubs = pubs.assign(sent=sent.where(pubs.intended_t.isna(), pubs.intended_t))
    subs = subscription_intervals(df)
    delivered = df[(df.op == "deliver") & (df.outcome == "message") & (df.msg_id != "")]
    copies = delivered.groupby(["msg_id", "user"]).size()
    received = set(copies.index)

    owed: set[tuple[str, str]] = set()
    excluded: set[tuple[str, str]] = set()
    names = subs.name.to_numpy()
    wild = np.array([is_wildcard(n) for n in names], dtype=bool)
    for channel, group in pubs.groupby("channel", sort=False):
        # The subscriptions that can receive this channel: computed once per channel.
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
    excluded -= owed  # owed through one subscription, ambiguous through another
    got = len(owed & received)
    duplicates = int((copies - 1).clip(lower=0).sum()) if len(copies) else 0
    unexpected = len(received - owed - excluded)
    return DeliveryReport(published=len(pubs), expected=len(owed), delivered=got,
                          lost=len(owed) - got, duplicates=duplicates,
                          reordered=count_reordered(delivered), excluded=len(excluded),
                          unexpected=unexpected)


def count_reordered(delivered: pd.DataFrame) -> int:
    """First copies whose sequence number is below one already seen on the same stream."""
    reordered = 0
    last: dict[tuple[str, str, str], int] = {}
    seen: set[tuple[str, str]] = set()
    for user, peer, channel, msg_id in zip(delivered.user, delivered.peer, delivered.channel,
                                           delivered.msg_id, strict=True):
        _, _, tail = msg_id.rpartition(":")
        if not tail.isdigit() or (user, msg_id) in seen:
            continue  # a duplicate is counted as such, not as reordering
        seen.add((user, msg_id))
        seq = int(tail)
        stream = (user, peer, channel)
        if seq < last.get(stream, 0):
            reordered += 1
        else:
            last[stream] = seq
    return reordered
