"""One window of a run, measured: latency, throughput, errors by code, each instance's CPU.

The planner judges a deployment by two windows of the same run (steady state, and
through the storms); these are the numbers it judges by, from the run directory as
any other analysis reads it. Errors follow `capacity_steps`: request outcomes other
than ok, without the client's own faults, and here also without the closes the
scenario's own faults send by design (a deploy's 1001 is the storm, not a failure to
carry it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .capacity import STEP_OPS, service_errors
from .run import Run, observed_counts

COUNTERS = ("connections_total", "connections_now", "published", "sent", "delivered",
            "cpu_s")


def _counter_diffs(run: Run, lo: float, hi: float) -> dict[str, dict[str, float]]:
    """instance -> counter -> its growth over [lo, hi] (interpolated between samples)."""
    tl = run.timeline
    out: dict[str, dict[str, float]] = {}
    if not len(tl):
        return out
    for name, rows in tl.groupby("instance", sort=True):
        x = rows.ts.to_numpy(dtype=float)
        diffs = {}
        for col in COUNTERS:
            if col not in rows.columns:
                continue
            y = rows[col].to_numpy(dtype=float)
            ok = ~np.isnan(y)
            diffs[col] = (float(np.diff(np.interp([lo, hi], x[ok], y[ok]))[0])
                          if ok.sum() > 1 else math.nan)
        out[str(name)] = diffs
    return out


def busiest_second(run: Run, lo: float, hi: float) -> dict[str, Any] | None:
    """The sample interval within [lo, hi) in which one instance used the most CPU:
    {from_s, to_s, instance, cpu (share of a core), instances (counter growth of every
    instance over that interval)}. A storm's reconnect burst fills a core for a second
    or two that a window's mean hides."""
    tl = run.timeline
    if not len(tl) or "cpu_s" not in tl.columns:
        return None
    best: tuple[float, float, float, str] | None = None
    for name, rows in tl.groupby("instance", sort=True):
        rows = rows[(rows.ts >= lo) & (rows.ts <= hi)].dropna(subset=["cpu_s"])
        ts, cpu = rows.ts.to_numpy(dtype=float), rows.cpu_s.to_numpy(dtype=float)
        if len(ts) < 2:
            continue
        shares = np.diff(cpu) / np.diff(ts)
        i = int(np.argmax(shares))
        if best is None or shares[i] > best[0]:
            best = (float(shares[i]), float(ts[i]), float(ts[i + 1]), str(name))
    if best is None:
        return None
    share, a, b, name = best
    diffs = _counter_diffs(run, a, b)
    return {"from_s": a, "to_s": b, "instance": name, "cpu": share,
            "instances": {n: {k: v for k, v in d.items() if k != "cpu_s"}
                          for n, d in diffs.items()}}


def connected_latency_ms(requests: pd.DataFrame, publishes: pd.DataFrame) -> pd.Series:
    """Each ok publish's latency counted from when its client was last connected, if that
    was after the publish was meant to go (open model: `t - latency` is the intended
    time). A publish due while a deploy had sent its client away waits for the
    reconnect the protocol asks for (`retryAfterMs`, jitter): that wait is the storm's
    design, the same on any deployment; what is left is the service's."""
    if not len(publishes):
        return publishes.latency_ms
    connects = requests[(requests.op == "connect") & (requests.outcome == "ok")]
    pubs = publishes[["user", "t", "latency_ms"]].copy()
    pubs["start"] = pubs.t - pubs.latency_ms / 1000.0
    pubs = pubs.reset_index().sort_values("t", kind="stable")
    back = connects[["user", "t"]].rename(columns={"t": "back"}).sort_values("back")
    joined = pd.merge_asof(pubs, back, left_on="t", right_on="back", by="user",
                           direction="backward")
    start = np.fmax(joined.start.to_numpy(dtype=float), joined.back.to_numpy(dtype=float))
    out = pd.Series((joined.t.to_numpy(dtype=float) - start) * 1000.0,
                    index=joined["index"].to_numpy())
    return out.sort_index()


def _percentile(values: pd.Series, q: float) -> float:
    return float(np.percentile(values, q, method="linear")) if len(values) else math.nan


def window_stats(run: Run, lo: float, hi: float, *,
                 planned_closes: frozenset[str] = frozenset(),
                 connects_from: float | None = None) -> dict[str, Any]:
    """The window [lo, hi) of scenario time.

    - publish_p50_ms / publish_p99_ms: ok publishes, counted from when their client
      was connected (`connected_latency_ms`); publish_p99_from_intended_ms: from when
      they were meant to go; connect_p99_ms;
    - msgs_per_s, deliveries_per_s, connects_per_s: the server's counters;
    - requests, errors, error_rate, errors_by_code: service errors (`planned_closes`,
      like {"close 1001"}, left out);
    - peak_connections, least_connections (summed over instances, per sample);
    - per instance its CPU share of one core (`cpu`) and counter growth (`instances`),
      and the `busiest_second` of any instance's core.

    `connects_from` (earlier than `lo`) counts connects from then on too: a steady
    state is judged with the connects that built it, so clients that never got in (a
    4010 at start) are not out of sight.
    """
    everything = run.requests()
    first = lo if connects_from is None else connects_from
    r = everything[everything.op.isin(STEP_OPS) & (everything.ts < hi)
                   & ((everything.ts >= lo) | ((everything.op == "connect")
                                               & (everything.ts >= first)))]
    failed = service_errors(r, planned_closes)
    ok = r[r.outcome == "ok"]
    published = ok[(ok.op == "publish") & ok.latency_ms.notna()]
    pubs = published.latency_ms
    connected = connected_latency_ms(everything[everything.ts < hi], published)
    conns = ok.latency_ms[ok.op == "connect"].dropna()
    seconds = hi - lo
    diffs = _counter_diffs(run, lo, hi)
    total = {c: sum(d.get(c, 0.0) for d in diffs.values()) for c in COUNTERS}
    tl = run.timeline
    in_window = tl[(tl.ts >= lo) & (tl.ts < hi)] if len(tl) else tl
    by_sample = in_window.groupby("ts").connections_now.sum() if len(in_window) else None
    peak = float(by_sample.max()) if by_sample is not None else math.nan
    least = float(by_sample.min()) if by_sample is not None else math.nan
    return {
        "from_s": lo, "to_s": hi, "seconds": seconds,
        "publishes_ok": len(pubs),
        "publish_p50_ms": _percentile(connected, 50),
        "publish_p99_ms": _percentile(connected, 99),
        "publish_p99_from_intended_ms": _percentile(pubs, 99),
        "connect_p99_ms": _percentile(conns, 99),
        "msgs_per_s": total["published"] / seconds,
        "deliveries_per_s": total["delivered"] / seconds,
        "connects_per_s": total["connections_total"] / seconds,
        "requests": len(r), "errors": int(failed.sum()),
        "error_rate": float(failed.sum()) / len(r) if len(r) else 0.0,
        "errors_by_code": {str(k): int(v) for k, v in
                           sorted(observed_counts(r.outcome[failed]).items())},
        "peak_connections": peak, "least_connections": least,
        "cpu": {name: d.get("cpu_s", math.nan) / seconds for name, d in diffs.items()},
        "instances": {name: {k: v for k, v in d.items() if k != "cpu_s"}
                      for name, d in diffs.items()},
        "busiest_second": busiest_second(run, lo, hi),
    }
