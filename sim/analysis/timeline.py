"""Server-side time series: throughput, connections and closes, quota and billing.

The server timeline holds cumulative counters sampled about once a second per
instance. Rates come from the counters interpolated at bin edges (not from sample
to sample), so bins are exact-width and instances that were sampled a few
milliseconds apart still add up. Instances are summed; app usage, which lives in
one ledger shared by every instance, is read from one instance, not summed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .run import USAGE_FIELDS, Run, bin_range, time_bins


def timeline_total(run: Run, column: str) -> pd.Series:
    """A timeline counter summed over instances, indexed by sample ts.

    An instance whose sample is missing at some time keeps its last value there
    (forward fill), so a skipped sample is not a dip.
    """
    tl = run.timeline
    if not len(tl) or column not in tl.columns:
        return pd.Series(dtype=float, name=column)
    wide = tl.pivot_table(index="ts", columns="instance", values=column, aggfunc="last")
    total = wide.sort_index().ffill().fillna(0).sum(axis=1)
    total.name = column
    return total


def _rate(run: Run, column: str, edges: np.ndarray, bin_s: float) -> np.ndarray:
    total = timeline_total(run, column)
    if not len(total):
        return np.zeros(len(edges) - 1)
    cumulative = np.interp(edges, total.index.to_numpy(dtype=float),
                           total.to_numpy(dtype=float))
    return np.diff(cumulative) / bin_s


def throughput(run: Run, bin_s: float = 1.0) -> pd.DataFrame:
    """ts (bin start), published_per_s, sent_per_s, delivered_per_s (server counters).

    `published` counts accepted publishes (socket and REST), `delivered` message and
    direct frames handed to recipients (one publish fans out to many).
    """
    starts = bin_range(run, bin_s, run.timeline)
    edges = np.append(starts, starts[-1] + bin_s) if len(starts) else starts
    out = pd.DataFrame({"ts": starts})
    for name in ("published", "sent", "delivered"):
        out[f"{name}_per_s"] = _rate(run, name, edges, bin_s) if len(starts) else []
    return out


def connections_over_time(run: Run, bin_s: float = 1.0) -> pd.DataFrame:
    """ts, connections (server view, last sample in the bin), connects, close_<code>.

    Closes come from the server event log (`close` and `reject` events), so each bin
    counts the closes decided in it, rejections at connect included.
    """
    srv = run.server
    starts = bin_range(run, bin_s, run.timeline, srv)
    out = pd.DataFrame({"ts": starts})
    conns = timeline_total(run, "connections_now")
    if len(conns):
        last = conns.groupby(time_bins(pd.Series(conns.index, index=conns.index), bin_s)
                             .to_numpy()).last()
        out["connections"] = last.reindex(starts).ffill().fillna(0).to_numpy()
    else:
        out["connections"] = 0.0
    connects = srv[srv.event == "connect"]
    out["connects"] = (time_bins(connects.ts, bin_s).value_counts()
                       .reindex(starts, fill_value=0).to_numpy())
    closes = srv[srv.event.isin(["close", "reject"])]
    if len(closes):
        codes = pd.to_numeric(closes.code, errors="coerce").fillna(0).astype(int)
        table = pd.crosstab(time_bins(closes.ts, bin_s), codes)
        for code in sorted(table.columns):
            out[f"close_{code}"] = table[code].reindex(starts, fill_value=0).to_numpy()
    return out


def quota_over_time(run: Run) -> pd.DataFrame:
    """ts, app and the ledger's usage fields (messagesUsed, overage..., balance, ...).

    One row per timeline sample and app; NaN while the ledger was unreachable.
    """
    tl = run.timeline
    cols = ["ts", "app", *USAGE_FIELDS]
    apps = sorted({c.split(".", 1)[0] for c in tl.columns if "." in c})
    frames = []
    for app in apps:
        fields = [f"{app}.{f}" for f in USAGE_FIELDS]
        # The ledger is shared: take the first instance that answered at each sample.
        part = tl[["ts", "instance", *[f for f in fields if f in tl.columns]]]
        part = part.sort_values(["ts", "instance"], kind="stable")
        part = part.dropna(subset=[c for c in part.columns if c.startswith(f"{app}.")],
                           how="all").groupby("ts", sort=True).first()
        part = part.drop(columns="instance").rename(columns=lambda c: c.split(".", 1)[1])
        part = part.reset_index().assign(app=app)
        frames.append(part)
    if not frames:
        return pd.DataFrame(columns=cols)
    df = pd.concat(frames, ignore_index=True)
    for f in USAGE_FIELDS:
        if f not in df.columns:
            df[f] = np.nan
    return df[cols].sort_values(["ts", "app"], kind="stable").reset_index(drop=True)
