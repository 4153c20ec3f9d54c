"""End-to-end delivery accounting from the raw client event logs.

Loss is a count, not a guess: every publish row names its message id and channel,
every subscription has an acked start and an end (unsubscribe, close, disconnect), so
the recipients a message was owed are known. A subscriber whose subscription began or
ended while the message was in flight (between its send and its ack, plus a grace for
the delivery already on the wire) is excluded and counted separately: under
at-most-once delivery nobody owed it that message.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from server.patterns import is_wildcard, match_channel

from .eventload import (
    count_events,
    load_client_events,
    partition_of_users,
    split_deliveries,
)

GRACE_S = 1.0
# Rows of the log per partition of the out-of-core accounting (`delivery_report_of_run`):
# a partition's deliveries name nearly every message, so each costs a pass over the
# message ids, and fewer, larger partitions are faster (two in flight take about 4 GB).
ROWS_PER_PART = 25_000_000


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

    @classmethod
    def merged(cls, parts: list[DeliveryReport], published: int) -> DeliveryReport:
        """The report of disjoint sets of recipients, tallied against one ledger."""
        sums = {k: sum(getattr(p, k) for p in parts) for k in cls.__dataclass_fields__}
        return cls(**{**sums, "published": published})


_ENDS_CONNECTION = ["close", "disconnect", "give_up"]
# Owed pairs are generated a block of publishes at a time, about this many at once
# (a few hundred MB of index arrays at most), however large the run.
_PAIRS_PER_BLOCK = 1 << 21


def _shared_codes(*columns: pd.Series) -> tuple[list[np.ndarray], int]:
    """Integer codes of several string columns over one shared set of values (equal
    strings get equal codes in every column; a null gets -1), and how many values.

    Columns cut from one categorical column (the loader's) share its categories, and
    so its codes: those are used as they are, with no concatenation or hashing."""
    if isinstance(columns[0].dtype, pd.CategoricalDtype) and all(
            c.dtype == columns[0].dtype for c in columns):
        return ([c.cat.codes.to_numpy().astype(np.int64) for c in columns],
                len(columns[0].cat.categories))
    sizes = [len(c) for c in columns]
    codes, uniques = pd.factorize(pd.concat(columns, ignore_index=True))
    return list(np.split(codes.astype(np.int64), np.cumsum(sizes)[:-1])), len(uniques)


def _distinct(keys: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an int64 array (sorting: numpy's hash-based
    `unique` is several times slower on millions of int64 keys)."""
    keys = np.sort(keys)
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys


def _is_in(keys: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Which of `keys` are in `sorted_set` (sorted, distinct): a binary search each."""
    at = np.searchsorted(sorted_set, keys)
    return (at < len(sorted_set)) & (sorted_set[np.minimum(at, len(sorted_set) - 1)] == keys) \
        if len(sorted_set) else np.zeros(len(keys), dtype=bool)


def _next_or_previous(left: pd.DataFrame, right: pd.DataFrame, by: str,
                      direction: str) -> pd.DataFrame:
    """For each row of `left` (sorted by pos), the nearest row of `right` with the same
    `by` strictly before or after it in the log (rows hold distinct positions)."""
    return pd.merge_asof(left[["pos", by]], right.rename(columns={"pos": "near"}),
                         left_on="pos", right_on="near", by=by, direction=direction)


def subscription_intervals(df: pd.DataFrame) -> pd.DataFrame:
    """(user, name, requested, start, end) for every acked subscription.

    `start` is when the ack arrived (surely active), `requested` when the subscribe
    was sent (possibly active from then on: the server may register it long before
    its ack reaches a busy client); `end` is inf while held.

    Per (user, name) the log is a sequence of opens (an acked subscribe) and closes
    (an acked unsubscribe of that name, or the end of the user's connection). A
    subscribe opens an interval only when the name is not held, i.e. when no earlier
    subscribe of it came after its last close; the interval ends at the first close
    after it. Both are nearest-row lookups (`merge_asof` on the row position), so
    this is vectorised however long the log.
    """
    op, ok = df.op, (df.outcome == "ok").to_numpy()
    is_sub = (op == "subscribe").to_numpy() & ok
    is_unsub = (op == "unsubscribe").to_numpy() & ok
    is_end = op.isin(_ENDS_CONNECTION).to_numpy()
    pos = np.arange(len(df))
    (su, uu, eu), _ = _shared_codes(df.user[is_sub], df.user[is_unsub], df.user[is_end])
    (sc, uc), n_names = _shared_codes(df.channel[is_sub], df.channel[is_unsub])
    t = df.t.to_numpy(dtype=float)
    subs = pd.DataFrame({"pos": pos[is_sub], "user": su, "key": su * max(n_names, 1) + sc})
    unsubs = pd.DataFrame({"pos": pos[is_unsub], "key": uu * max(n_names, 1) + uc})
    ends = pd.DataFrame({"pos": pos[is_end], "user": eu})
    prev_sub = subs.groupby("key", sort=False).pos.shift().to_numpy(dtype=float)
    last_close = np.fmax(_next_or_previous(subs, unsubs, "key", "backward").near.to_numpy(float),
                         _next_or_previous(subs, ends, "user", "backward").near.to_numpy(float))
    # Opens an interval: the first subscribe of the name, or one after a close.
    opens = np.isnan(prev_sub) | (last_close > prev_sub)
    subs = subs[opens].reset_index(drop=True)
    closing = np.fmin(_next_or_previous(subs, unsubs, "key", "forward").near.to_numpy(float),
                      _next_or_previous(subs, ends, "user", "forward").near.to_numpy(float))
    at = subs.pos.to_numpy()
    end = np.full(len(at), np.inf)
    held = np.isnan(closing)
    end[~held] = t[closing[~held].astype(np.int64)]
    latency = df.latency_ms.to_numpy(dtype=float)[at]
    start = t[at]
    requested = start - np.where(np.isnan(latency), 0.0, latency) / 1000.0
    # `take` keeps a categorical one (and is 10 M strings cheaper than `to_numpy()[at]`).
    return pd.DataFrame({"user": df.user.array.take(at), "name": df.channel.array.take(at),
                         "requested": requested, "start": start, "end": end})


def _matching_pairs(names: np.ndarray, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(name index, channel index) of every subscription name that receives a channel:
    the same name, or a wildcard pattern matching it. Once per distinct pair."""
    where = {c: j for j, c in enumerate(channels)}
    pairs = []
    for i, name in enumerate(names):
        if is_wildcard(name):
            pairs.extend((i, j) for j, c in enumerate(channels) if match_channel(name, c))
        elif name in where:
            pairs.append((i, where[name]))
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def delivery_report(df: pd.DataFrame, grace_s: float = GRACE_S) -> DeliveryReport:
    """Count what every acked publish owed, what arrived, and what did not.

    A (message, recipient) pair is owed when the recipient (not the publisher) held a
    matching subscription from before the send until after the ack plus the grace;
    excluded when a matching subscription of it overlapped that window only in part.
    Every pair is a single int64 (message code x users + user code), so the owed,
    excluded and received sets are sorted int arrays, not Python tuples.
    """
    df = _categorical_keys(df)
    is_got = (df.op == "deliver").to_numpy() & _carries_a_message(df)
    return Ledger(df, grace_s).tally(_delivery_codes(df, is_got))


def delivery_report_of_run(run_dir: str | Path, requests: pd.DataFrame,
                           grace_s: float = GRACE_S,
                           rows_per_part: int = ROWS_PER_PART) -> DeliveryReport:
    """`delivery_report` of a run too large to hold its deliveries in memory.

    `requests` is every client row but the deliveries (`load_client_events(rows="no
    deliveries")`). The deliveries are split by recipient into partitions on disk
    (`split_deliveries`, one pass), and each partition is tallied against the same
    ledger: every pair, duplicate and stream belongs to one recipient, so the counts
    add up to exactly what one pass over all of them would give.
    """
    ledger = Ledger(_categorical_keys(requests), grace_s)
    parts = max(1, -(-count_events(run_dir) // rows_per_part))
    with tempfile.TemporaryDirectory(prefix="rtmsim-deliveries-") as tmp:
        files = {int(p.stem.rpartition("-")[2]): p
                 for p in split_deliveries(run_dir, Path(tmp), parts)}
        user_part = partition_of_users(ledger.users, parts)

        def tally(k: int) -> DeliveryReport:
            # A partition no delivery fell in still owes its recipients' pairs.
            got = load_client_events(files=[files[k]] if k in files else [],
                                     columns=(*_DELIVERY_KEYS, "outcome"))
            return ledger.tally(_delivery_codes(got, _carries_a_message(got)),
                                recipients=user_part == k)

        # Two at a time: numpy's sorts and Arrow's reads release the GIL.
        with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            reports = list(pool.map(tally, range(parts)))
    return DeliveryReport.merged(reports, published=ledger.published)


class Ledger:
    """What every acked publish owed, resolved once from the request rows: the publishes
    (message, publisher, send and ack plus grace), the subscription intervals, and
    which subscriptions can receive each channel (once per distinct pair)."""

    def __init__(self, df: pd.DataFrame, grace_s: float) -> None:
        op, outcome, msg = df.op, df.outcome, df.msg_id
        is_pub = ((op == "publish") & (outcome == "ok") & (msg != "")).to_numpy()
        pubs = df.loc[is_pub, ["t", "user", "channel", "msg_id", "latency_ms", "intended_t"]]
        subs = subscription_intervals(df)
        self.published = len(pubs)
        self.users = df.user.cat.categories.to_numpy()
        # Hash indexes of the values, built once: every partition's codes are mapped.
        self.user_index, self.msg_index = pd.Index(self.users), pd.Index(df.msg_id.cat.categories)
        (self.pub_user, self.sub_user), _ = _shared_codes(pubs.user, subs.user)
        (self.pub_msg,), _ = _shared_codes(pubs.msg_id)
        t_ack = pubs.t.to_numpy(dtype=float)
        latency, intended = pubs.latency_ms.to_numpy(float), pubs.intended_t.to_numpy(float)
        sent = t_ack - np.where(np.isnan(latency), 0.0, latency) / 1000.0
        self.sent = np.where(np.isnan(intended), sent, intended)
        self.late = t_ack + grace_s
        self.requested, self.starts = subs.requested.to_numpy(), subs.start.to_numpy()
        self.ends = subs.end.to_numpy()
        self._match(pubs.channel, subs.name)

    def _match(self, channel: pd.Series, name: pd.Series) -> None:
        """Which subscriptions can receive each publish's channel: per channel, a run
        of `sub_of_pair` (wildcards matched once per distinct name and channel)."""
        self.chan_code, channels = pd.factorize(channel)
        name_code, names = pd.factorize(name)
        pair_name, pair_chan = _matching_pairs(np.asarray(names, dtype=object),
                                               np.asarray(channels, dtype=object))
        m = pd.DataFrame({"name": pair_name, "chan": pair_chan}).merge(
            pd.DataFrame({"name": name_code, "sub": np.arange(len(name))}), on="name")
        m = m.sort_values(["chan", "sub"], kind="stable")
        self.n_channels = len(channels)
        self.chan_of_pair, self.sub_of_pair = m.chan.to_numpy(), m["sub"].to_numpy()

    def tally(self, got: dict[str, Codes], recipients: np.ndarray | None = None
              ) -> DeliveryReport:
        """The report for deliveries `got` (codes of `_DELIVERY_KEYS`), counting only
        the pairs of `recipients` (a mask over `users`; None: everyone) as owed."""
        n_users = len(self.users) + len(got["user"][1]) + 1  # room for users not in ours
        got_msg = _recode(got["msg_id"], self.msg_index)
        got_user = _recode(got["user"], self.user_index)
        keep = (got_msg >= 0) & (got_user >= 0)  # as groupby drops null keys
        got_key = got_msg[keep] * n_users + got_user[keep]
        del keep, got_msg, got_user
        received = _distinct(got_key)
        duplicates = len(got_key) - len(received)
        del got_key
        reordered = _reordered(*(got[c] for c in _DELIVERY_KEYS))
        owed, excluded = self._owed(n_users, recipients)
        got_n = int(_is_in(received, owed).sum())
        ambiguous = int(_is_in(received, excluded).sum())
        return DeliveryReport(published=self.published, expected=len(owed), delivered=got_n,
                              lost=len(owed) - got_n, duplicates=duplicates,
                              reordered=reordered, excluded=len(excluded),
                              unexpected=len(received) - got_n - ambiguous)

    def _owed(self, n_users: int, recipients: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
        """(owed, excluded) pair keys, sorted and distinct, a block of publishes at a
        time; a pair owed through one subscription and ambiguous through another is
        owed."""
        sub_user, pub_user, chan_code = self.sub_user, self.pub_user, self.chan_code
        sub_of_pair, chan_of_pair = self.sub_of_pair, self.chan_of_pair
        if recipients is not None:  # only their subscriptions: pairs cost what they owe
            counted = recipients[np.maximum(sub_user, 0)] & (sub_user >= 0)
            keep = counted[sub_of_pair]
            sub_of_pair, chan_of_pair = sub_of_pair[keep], chan_of_pair[keep]
        # Per channel, a run of `sub_of_pair`: the subscriptions that receive it.
        per_chan = np.bincount(chan_of_pair, minlength=self.n_channels)
        first_of_chan = np.cumsum(per_chan) - per_chan
        owed_parts, excluded_parts = [], []
        # Subscriptions each publish is matched against (none for a null channel).
        n_subs = np.where(chan_code >= 0, per_chan[np.maximum(chan_code, 0)], 0) \
            if len(per_chan) else np.zeros(len(chan_code), np.int64)
        bounds = [*np.searchsorted(np.cumsum(n_subs), np.arange(0, n_subs.sum(),
                                                                _PAIRS_PER_BLOCK), side="right")]
        for lo, hi in zip(bounds, [*bounds[1:], len(n_subs)][:len(bounds)], strict=True):
            count = n_subs[lo:hi]
            p = np.repeat(np.arange(lo, hi), count)
            within = np.arange(len(p)) - np.repeat(np.cumsum(count) - count, count)
            s = sub_of_pair[first_of_chan[chan_code[p]] + within]
            others = sub_user[s] != pub_user[p]
            sent, late = self.sent[p], self.late[p]
            full = others & (self.starts[s] <= sent) & (self.ends[s] >= late)
            partial = others & ~full & (self.requested[s] <= late) & (self.ends[s] >= sent)
            key = self.pub_msg[p] * n_users + sub_user[s]
            owed_parts.append(_distinct(key[full]))
            excluded_parts.append(_distinct(key[partial]))
        owed = _distinct(np.concatenate([np.zeros(0, np.int64), *owed_parts]))
        excluded = _distinct(np.concatenate([np.zeros(0, np.int64), *excluded_parts]))
        return owed, excluded[~_is_in(excluded, owed)]


def _recode(codes: Codes, space: pd.Index) -> np.ndarray:
    """Codes of one categorical as int64 codes into the values `space` (another
    categorical's categories); a value not in `space` gets a code past its end."""
    code, values = codes
    at = space.get_indexer(values) if len(values) else np.zeros(0, np.int64)
    missing = at < 0
    at[missing] = len(space) + np.arange(int(missing.sum()))
    return np.where(code >= 0, np.append(at, -1)[code], -1).astype(np.int64)


def _sequence_number(msg_id: str) -> int | None:
    """The number after the last `:` of a message id (the whole id without one)."""
    tail = msg_id.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


def count_reordered(delivered: pd.DataFrame) -> int:
    """First copies whose sequence number is below one already seen on the same stream.

    A stream is (recipient, publisher, channel); a copy is the first of its (recipient,
    message) pair (a duplicate is counted as such, not as reordering).
    """
    if not len(delivered):
        return 0
    codes = _delivery_codes(_categorical_keys(delivered))
    return _reordered(*(codes[c] for c in _DELIVERY_KEYS))


# What a delivery row is keyed by, in the order `_reordered` takes them.
_DELIVERY_KEYS = ("msg_id", "user", "peer", "channel")
Codes = tuple[np.ndarray, np.ndarray]  # a column's integer codes (null: -1), their values


def _carries_a_message(df: pd.DataFrame) -> np.ndarray:
    """Rows that are a received message with an id (what the accounting counts)."""
    return ((df.outcome == "message") & (df.msg_id != "")).to_numpy()


def _delivery_codes(df: pd.DataFrame, rows: np.ndarray | None = None) -> dict[str, Codes]:
    """The key columns of delivery rows as their own codes (the narrowest dtype each)
    and categories, not a frame: deliveries are most of the rows, and the peak memory
    of a large run is theirs."""
    pick = slice(None) if rows is None else rows
    return {c: (df[c].cat.codes.to_numpy()[pick], df[c].cat.categories.to_numpy())
            for c in _DELIVERY_KEYS}


def _categorical_keys(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with its key columns as categoricals (the loader's already are: no copy), so
    every step works on integer codes shared by all the rows cut from one column."""
    plain = {c: df[c].astype("category") for c in _DELIVERY_KEYS
             if not isinstance(df[c].dtype, pd.CategoricalDtype)}
    return df.assign(**plain) if plain else df


def _first_of_each(keys: np.ndarray) -> np.ndarray:
    """The index of the first occurrence of each distinct key (in key order): what
    `np.unique(return_index=True)` gives, with a third of its temporary memory."""
    perm = np.argsort(keys, kind="stable")
    ordered = keys[perm]
    new = np.ones(len(keys), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    del ordered
    return perm[new]


def _reordered(msg: Codes, user: Codes, peer: Codes, channel: Codes) -> int:
    """`count_reordered` on the delivery rows' codes.

    Sequence numbers are parsed once per distinct message id and replaced by their
    rank, so any size of number compares exactly; the running maximum per stream is
    one accumulate over the copies sorted by stream.
    """
    msg_code, msg_ids = msg
    numbers = [_sequence_number(m) for m in msg_ids]
    distinct = sorted({n for n in numbers if n is not None})
    rank_of = {n: r for r, n in enumerate(distinct)}
    rank = np.array([-1 if n is None else rank_of[n] for n in numbers], dtype=np.int64)
    seq = rank[msg_code] if len(msg_ids) else np.full(len(msg_code), -1, np.int64)
    numbered = np.flatnonzero((msg_code >= 0) & (seq >= 0))
    user_code = user[0]
    pair = msg_code[numbered].astype(np.int64) * (len(user[1]) + 1) + user_code[numbered] + 1
    first = np.sort(numbered[_first_of_each(pair)])
    del pair, numbered  # row-sized arrays go as soon as done: this runs on every delivery
    if not len(first):
        return 0
    seq = seq[first]
    # The stream of each first copy as one integer, a column at a time (refactorized
    # only if the next product could overflow): grouping by three columns is slower.
    stream, size = user_code[first].astype(np.int64) + 1, len(user[1]) + 1
    for codes, values in (peer, channel):
        width = len(values) + 1  # null: 0
        if size * width >= 1 << 62:
            stream, size = pd.factorize(stream)[0], len(stream)
        stream = stream * width + codes[first] + 1
        size *= width
    order = np.argsort(stream, kind="stable")  # log order within each stream
    stream, seq = stream[order], seq[order]
    # Per-stream running maximum in one accumulate: streams sorted, each lifted above
    # every value of the streams before it, so a stream's first copy is never below.
    lifted = stream * (len(distinct) + 1) + seq
    running = np.maximum.accumulate(lifted)
    return int((lifted[1:] < running[:-1]).sum())
