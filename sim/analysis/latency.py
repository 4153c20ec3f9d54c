"""Latency percentiles, delivery accounting and retry amplification from raw client rows.

Percentiles come from every unrounded sample in the client event log (Locust's own
CSVs round above 100 ms), with numpy's "linear" method (pandas' `quantile` default is
the same interpolation), so a p99 here can be recomputed by hand from the CSV.
Only requests answered `ok` are timed: an error's latency says how fast the server
said no, which would flatter a failing run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from loadtests.accounting import DeliveryReport, delivery_report, delivery_report_of_run
from loadtests.eventload import load_client_events

from .codes import NEVER_RETRY
from .run import Run, time_bins

PERCENTILE_METHOD = "linear"  # numpy.percentile / pandas.quantile interpolation


def percentile_name(p: float) -> str:
    """50 -> "p50", 99.9 -> "p99.9": the column names every table uses."""
    return f"p{p:g}"


def percentiles_of(samples: np.ndarray | pd.Series,
                   percentiles: Sequence[float] = (50, 90, 99, 99.9)) -> dict[str, float]:
    """count (int), mean, max and the named percentiles of raw samples (NaN when empty)."""
    x = np.asarray(samples, dtype=float)
    x = x[~np.isnan(x)]
    out: dict[str, float] = {"count": len(x),
                             "mean": float(x.mean()) if len(x) else np.nan}
    values = (np.percentile(x, list(percentiles), method=PERCENTILE_METHOD) if len(x)
              else [np.nan] * len(percentiles))
    for p, v in zip(percentiles, values, strict=True):
        out[percentile_name(p)] = float(v)
    out["max"] = float(x.max()) if len(x) else np.nan
    return out


def histogram_percentiles(bounds_ms: Sequence[float], counts: Sequence[int],
                          percentiles: Sequence[float] = (50, 90, 99, 99.9)
                          ) -> dict[str, float]:
    """`percentiles_of` from a histogram (counts[i]: samples at or under bounds_ms[i]
    and above the bound before; one more count, above the last): each percentile as
    the upper bound of the bin holding the upper of the two samples PERCENTILE_METHOD
    ("linear") interpolates between, so never below the percentile of the raw samples
    and at most two bins' width above (a bin: 12% here; two when the two samples
    straddle a bound). The mean
    takes each bin's upper bound too; max is the highest non-empty bin's bound (inf
    past the last)."""
    n = int(sum(counts))
    out: dict[str, float] = {"count": n, "mean": np.nan}
    if not n:
        out.update({percentile_name(p): np.nan for p in percentiles}, max=np.nan)
        return out
    tops = np.append(np.asarray(bounds_ms, dtype=float), np.inf)
    c = np.asarray(counts, dtype=np.int64)
    cum = np.cumsum(c)
    for p in percentiles:
        upper = int(np.ceil(p / 100 * (n - 1) - 1e-9))  # 0-based, as numpy's "linear"
        out[percentile_name(p)] = float(tops[int(np.searchsorted(cum, upper + 1))])
    finite = np.isfinite(tops)
    out["mean"] = float((c[finite] * tops[finite]).sum() / n) if c[~finite].sum() == 0 \
        else np.inf
    out["max"] = float(tops[np.nonzero(c)[0][-1]])
    return out


def _ok_requests(run: Run) -> pd.DataFrame:
    r = run.requests()
    return r[(r.outcome == "ok") & r.latency_ms.notna()]


def latency_percentiles(run: Run, percentiles: Sequence[float] = (50, 90, 99, 99.9)
                        ) -> pd.DataFrame:
    """Per op (index): count, mean, the percentiles and max, in ms, of ok requests."""
    ok = _ok_requests(run)
    rows = {op: percentiles_of(group.latency_ms.to_numpy(), percentiles)
            for op, group in ok.groupby("op", sort=True)}
    cols = ["count", "mean", *(percentile_name(p) for p in percentiles), "max"]
    df = pd.DataFrame.from_dict(rows, orient="index", columns=cols)
    df["count"] = df["count"].astype(np.int64)
    df.index.name = "op"
    return df


def latency_over_time(run: Run, bin_s: float = 5.0, percentiles: Sequence[float] = (50, 99)
                      ) -> pd.DataFrame:
    """ts (bin start), op, count and the percentiles (ms) of ok requests per bin."""
    ok = _ok_requests(run)
    names = [percentile_name(p) for p in percentiles]
    if not len(ok):
        return pd.DataFrame(columns=["ts", "op", "count", *names])
    ok = ok.assign(bin=time_bins(ok.ts, bin_s))
    g = ok.groupby(["bin", "op"], sort=True).latency_ms
    q = g.quantile([p / 100 for p in percentiles], interpolation=PERCENTILE_METHOD)
    wide = q.unstack(level=-1)
    wide.columns = names
    wide.insert(0, "count", g.size())
    out = wide.reset_index().rename(columns={"bin": "ts"})
    return out[["ts", "op", "count", *names]]


def delivery_latency(run: Run) -> pd.Series:
    """Publish-to-delivery latency (ms) of every delivery that carried a timestamp.

    Indexed by the delivery's scenario time. Measured from the publisher's send (or
    intended send under the open model) to the receiver's read: both clocks are the
    same machine's.
    """
    if run.deliveries_on_disk:  # read from disk once: the summary and a chart both ask
        if "delivery_latency" not in run._cache:
            c = load_client_events(run.dir, rows="deliveries", columns=("t", "latency_ms"))
            run._cache["delivery_latency"] = _latency_series(
                c.latency_ms, c.t.to_numpy(dtype=float) - run.origin,
                c.latency_ms.notna().to_numpy())
        return run._cache["delivery_latency"]
    c = run.client
    d = ((c.op == "deliver") & c.latency_ms.notna()).to_numpy()  # two columns, not all
    return _latency_series(c.latency_ms, c.ts.to_numpy(dtype=float), d)


def _latency_series(latency: pd.Series, ts: np.ndarray, rows: np.ndarray) -> pd.Series:
    return pd.Series(latency.to_numpy(dtype=float)[rows],
                     index=pd.Index(ts[rows], name="ts"), name="delivery_latency_ms")


def delivery(run: Run) -> dict[str, Any]:
    """End-to-end accounting (`loadtests.accounting`): owed, delivered, lost, duplicates.

    A run without a row a delivery (`--no-deliveries`) cannot say which recipient got
    which message: everything the (message, recipient) pairs decide (owed, delivered,
    lost, duplicates) is None, not measured; `frames` is the delivered frames its
    histogram holds, and `logged` says so."""
    if run.delivery_histogram is not None:
        return {**dict.fromkeys(DeliveryReport.__dataclass_fields__),
                "frames": run.delivery_count(), "logged": False}
    if "delivery" not in run._cache:
        report = delivery_report_of_run(run.dir, run.client) if run.deliveries_on_disk \
            else delivery_report(run.client)
        run._cache["delivery"] = report.as_dict()
    return dict(run._cache["delivery"])


def reused_message_ids(run: Run) -> int:
    """Message ids a user published (or sent) as new more than once.

    The accounting keys every message by (msg_id, recipient); a client that restarts
    its sequence after a reconnect reuses ids, and its later messages then read as
    duplicates (and reordered) of the earlier ones. Non-zero means the duplicate and
    reorder counts of `delivery` are not trustworthy for this run.
    """
    r = run.requests()
    firsts = r[r.op.isin(["publish", "send"]) & (r.attempt == 1) & (r.msg_id != "")]
    return int(firsts.duplicated(["user", "msg_id"]).sum())


def _policy_names(policy: pd.Series) -> pd.Series:
    """The retry policy of each row, "(none)" for a user without one. As strings: a
    categorical takes no new value, and groupby orders these names lexically."""
    return policy.astype(str).replace("", "(none)")


def retry_amplification(run: Run) -> pd.DataFrame:
    """Per retry policy (index) and user_class: operations, attempts, amplification.

    An operation is a request row with attempt 1 (a first try); every row is an
    attempt, so amplification = attempts / operations is how much traffic the policy
    multiplied the intended load by (1.0: no retries). `retried` counts operations
    that needed a second attempt.
    """
    r = run.requests()
    cols = ["user_class", "operations", "attempts", "retries", "retried", "amplification"]
    if not len(r):
        return pd.DataFrame(columns=cols, index=pd.Index([], name="policy"))
    r = r.assign(first=r.attempt == 1, second=r.attempt == 2, policy=_policy_names(r.policy))
    g = r.groupby(["policy", "user_class"], sort=True)
    df = pd.DataFrame({"operations": g["first"].sum(), "attempts": g.size(),
                       "retried": g["second"].sum()}).reset_index()
    df["retries"] = df.attempts - df.operations
    df["amplification"] = df.attempts / df.operations.where(df.operations > 0)
    return df.set_index("policy")[cols].astype({"operations": np.int64, "attempts": np.int64,
                                                 "retries": np.int64, "retried": np.int64})


def amplification_by_policy(run: Run) -> dict[str, dict[str, Any]]:
    """retry_amplification summed over user classes: {policy: {operations, attempts, ...}}."""
    df = retry_amplification(run)
    out: dict[str, dict[str, Any]] = {}
    for policy, g in df.groupby(level=0, sort=True):
        ops, attempts = int(g.operations.sum()), int(g.attempts.sum())
        out[str(policy)] = {"operations": ops, "attempts": attempts,
                            "retries": attempts - ops, "retried": int(g.retried.sum()),
                            "amplification": attempts / ops if ops else None,
                            "user_classes": sorted(g.user_class)}
    return out


def _operations(run: Run) -> pd.DataFrame:
    """Request rows numbered by logical operation: `operation` counts first attempts.

    A user runs one operation at a time (`RealtimeUser.attempt` retries before moving
    on), so within one (user, op) in time order every attempt-1 row opens an operation
    and the rows after it, up to the next attempt 1, are its retries.
    """
    r = run.requests().sort_values(["user", "op", "ts"], kind="stable")
    return r.assign(operation=(r.attempt == 1).astype(np.int64)
                    .groupby([r.user, r.op], sort=False).cumsum(),
                    policy=_policy_names(r.policy))


def retry_outcomes(run: Run) -> pd.DataFrame:
    """Per retry policy (index) and user_class: did operations end up succeeding?

    operations (first attempts), succeeded (some attempt answered ok), success_rate,
    first_try_rate (ok at attempt 1), attempts_per_operation (mean) and
    max_attempts (the longest chain). Rows before any first attempt of their (user,
    op) (a log that starts mid-operation) are left out.
    """
    cols = ["user_class", "operations", "succeeded", "success_rate", "first_try_rate",
            "attempts_per_operation", "max_attempts"]
    ops = _operations(run)
    ops = ops[ops.operation > 0]
    if not len(ops):
        return pd.DataFrame(columns=cols, index=pd.Index([], name="policy"))
    per_op = ops.assign(is_ok=ops.outcome == "ok",
                        first_ok=(ops.outcome == "ok") & (ops.attempt == 1)).groupby(
        ["policy", "user_class", "user", "op", "operation"], sort=False).agg(
        attempts=("attempt", "size"), ok=("is_ok", "any"), first_ok=("first_ok", "any"))
    g = per_op.groupby(["policy", "user_class"], sort=True)
    df = pd.DataFrame({"operations": g.size(), "succeeded": g.ok.sum(),
                       "first_ok": g.first_ok.sum(), "attempts": g.attempts.sum(),
                       "max_attempts": g.attempts.max()}).reset_index()
    df["success_rate"] = df.succeeded / df.operations
    df["first_try_rate"] = df.first_ok / df.operations
    df["attempts_per_operation"] = df.attempts / df.operations
    df = df.astype({"operations": np.int64, "succeeded": np.int64, "max_attempts": np.int64})
    return df.set_index("policy")[cols]


def retried_never_retry_codes(run: Run) -> pd.DataFrame:
    """Clients that retried an operation after a code whose guidance is never retry.

    Client view: a retry is a row with attempt n > 1 whose operation's attempt n - 1
    was answered with a never-retry code (server.codes). One row per (user, code):
    user_class, policy, code, retries, operations (distinct operations retried),
    first_ts; most retries first. Empty when every client followed the guidance.
    `never_retry_violations` is the server's view (repeats on one connection).
    """
    cols = ["user", "user_class", "policy", "code", "retries", "operations", "first_ts"]
    ops = _operations(run)
    previous = ops.groupby(["user", "op", "operation"], sort=False).outcome.shift()
    retried = ops[(ops.attempt > 1) & previous.isin(NEVER_RETRY)]
    retried = retried.assign(code=previous[retried.index])
    if not len(retried):
        return pd.DataFrame(columns=cols)
    g = retried.groupby(["user", "user_class", "policy", "code"], sort=True)
    df = pd.DataFrame({"retries": g.size(), "operations": g.operation.nunique(),
                       "first_ts": g.ts.min()}).reset_index()
    df = df.sort_values(["retries", "user"], ascending=[False, True], kind="stable")
    return df[cols].reset_index(drop=True)
