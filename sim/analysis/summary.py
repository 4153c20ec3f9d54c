"""`summary.json`: a run's headline numbers and warnings, reproducible byte for byte.

Everything is computed by the analysis functions and only arranged here. The output
is plain JSON (no NaN: missing numbers are null), floats are rounded to
`FLOAT_DIGITS` decimals and keys are sorted, so analysing the same run directory
twice gives identical files that diff cleanly between runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtests.catalog import parse_params
from server.schema import ConfigError

from .. import rundir
from ..thresholds import evaluate, parse_thresholds
from ..virtual.spawn import uneven
from .capacity import capacity
from .codes import close_counts, error_counts, never_retry_violations, reconcile
from .faults import reconnect_storms, recovery_times
from .latency import (
    PERCENTILE_METHOD,
    amplification_by_policy,
    delivery,
    delivery_latency,
    histogram_percentiles,
    latency_percentiles,
    percentiles_of,
    reused_message_ids,
)
from .run import Run, fault_windows, load_run, observed_counts
from .timeline import quota_over_time, throughput

FLOAT_DIGITS = 6
TOP_OFFENDERS = 10
QUOTA_FIELDS = ("messagesUsed", "overageMessages", "overageConnections", "balance",
                "concurrentNow")
# A Locust process this busy is the bottleneck of what its users measure.
LOADGEN_SATURATED = 0.9


def jsonable(value: Any, digits: int = FLOAT_DIGITS) -> Any:
    """Plain JSON types: numpy scalars unwrapped, floats rounded, NaN/inf -> None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, digits) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        if not math.isfinite(f):
            return None
        r = round(f, digits)
        return 0.0 if r == 0 else r  # no "-0.0"
    if value is None or isinstance(value, str):
        return value
    return str(value)


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return df.to_dict("records")


def delivery_percentiles(run: Run, latencies: pd.Series) -> dict[str, float]:
    """Delivery latency percentiles: of the rows, or of a virtual run's histogram."""
    hist = run.delivery_histogram
    if hist is not None:
        return histogram_percentiles(hist["bounds_ms"], hist["counts"])
    return percentiles_of(latencies.to_numpy())


def summary(run: Run) -> dict[str, Any]:
    """Headline numbers, per-code tables and warnings for one run (JSON-ready)."""
    acct = delivery(run)  # first: its peak memory is the largest, and nothing else is held
    requests = run.requests()
    n_requests = len(requests)
    lat = latency_percentiles(run)
    dlat = delivery_latency(run)
    reused = reused_message_ids(run)
    amp = amplification_by_policy(run)
    violations = never_retry_violations(run)
    recovery = recovery_times(run)
    storms = reconnect_storms(run)
    rec = reconcile(run)
    tp = throughput(run, 1.0)

    out: dict[str, Any] = {
        "run": {k: run.meta.get(k) for k in ("name", "description", "status", "duration_s",
                                             "users", "model", "shape", "seed", "backend",
                                             "instances", "workers", "mirror")},
        "origin": run.origin,
        "method": {"percentiles": f"numpy.percentile(method={PERCENTILE_METHOD!r}) over "
                                  "raw client samples (ms); latency of ok requests only",
                   "rates": "per second over the scenario duration; per 1000 client "
                            "requests (every request row, retries included)"},
        "requests": {"total": n_requests,
                     "per_op": {str(k): int(v) for k, v in
                                observed_counts(requests.op).sort_index().items()},
                     "ok": int((requests.outcome == "ok").sum())},
        "errors": error_section(run, n_requests),
        "closes": close_section(run),
        "latency_ms": {str(op): {**row.to_dict(), "count": int(row["count"])}
                       for op, row in lat.iterrows()},
        "delivery_latency_ms": delivery_percentiles(run, dlat),
        "delivery": {**acct, "reused_message_ids": reused},
        "retry_amplification": amp,
        "never_retry_violations": {
            "connections": len(violations), "repeats": int(violations.repeats.sum())
            if len(violations) else 0,
            "top_offenders": _records(violations.head(TOP_OFFENDERS))},
        "faults": _records(fault_windows(run)),
        "recovery": _records(recovery),
        "reconnect_storms": _records(storms),
        "quota": quota_summary(run),
        "throughput": {
            "published_per_s_mean": float(tp.published_per_s.mean()) if len(tp) else None,
            "published_per_s_peak": float(tp.published_per_s.max()) if len(tp) else None,
            "delivered_per_s_mean": float(tp.delivered_per_s.mean()) if len(tp) else None,
            "delivered_per_s_peak": float(tp.delivered_per_s.max()) if len(tp) else None},
        "reconciliation": rec,
    }
    if run.meta.get("shape") == "step_ramp":
        out["capacity"] = capacity(run)
    out["warnings"] = summary_warnings(run, violations, rec, acct, reused, recovery)
    out = jsonable(out)
    rows = evaluate(run_thresholds(run), out)  # judged on the numbers as written
    out["thresholds"] = {"passed": all(r["ok"] for r in rows), "checks": jsonable(rows)}
    return out


def run_thresholds(run: Run) -> tuple[Any, ...]:
    """The scenario's `[thresholds]` as the runner recorded them in run.json."""
    return parse_thresholds(run.meta.get("thresholds"),
                            fault_ids=[str(f.get("id")) for f in run.faults])


def error_section(run: Run, n_requests: int) -> dict[str, dict[str, Any]]:
    """summary.json's "errors": per code, both sides' counts and rates."""
    duration = run.duration_s
    return {str(code): {
        "client": row.client, "server": row.server, "server_log": row.server_log,
        "diff": row["diff"], "meaning": row.meaning, "retry": row.retry,
        "client_fault": row.client_fault,
        "client_per_s": row.client / duration if duration else None,
        "server_per_s": row.server / duration if duration else None,
        "per_1000_requests": 1000 * row.client / n_requests if n_requests else None}
        for code, row in error_counts(run).iterrows()}


def close_section(run: Run) -> dict[str, dict[str, Any]]:
    """summary.json's "closes": per close code, both sides' counts."""
    duration = run.duration_s
    return {str(code): {"client": row.client, "server": row.server,
                        "server_log": row.server_log, "diff": row["diff"],
                        "name": row["name"], "meaning": row.meaning, "guidance": row.guidance,
                        "server_per_s": row.server / duration if duration else None}
            for code, row in close_counts(run).iterrows()}


def summary_warnings(run: Run, violations: pd.DataFrame, rec: dict[str, Any],
                     acct: dict[str, Any], reused: int, recovery: pd.DataFrame) -> list[str]:
    """What deserves a look, one line each: partial data, never-retry repeats,
    unreconciled counts, delivery problems, faults not recovered from."""
    warnings: list[str] = []
    if run.meta.get("status") not in (None, "complete"):
        warnings.append(f"run status is {run.meta.get('status')!r}: partial results")
    for name, frame in (("client events", run.client), ("server event log", run.server),
                        ("server timeline", run.timeline)):
        if not len(frame):
            warnings.append(f"no {name} in the run directory")
    if len(violations):
        top = violations.iloc[0]
        who = top.user or f"peer {top.peer}"
        warnings.append(
            f"{len(violations)} connections repeated a never-retry code "
            f"({int(violations.repeats.sum())} repeats); worst: {who} "
            f"({top.user_class or '?'}) got {top.code} on {top.op or 'an unparsed frame'} "
            f"{int(top.repeats) + 1} times on connection {top.instance}/{top.conn}")
    warnings.extend(f"unreconciled: {d}" for d in rec["differences"])
    if acct.get("logged") is False:
        warnings.append("delivery: no row a delivery (rtmsim simulate --no-deliveries): "
                        "lost, duplicate and reordered deliveries are not measured, and "
                        "delivery latency is read from a histogram (each value as its "
                        "bin's upper bound, bins 12% wide)")
    if acct["lost"]:
        warnings.append(f"delivery: {acct['lost']} of {acct['expected']} owed deliveries "
                        "lost")
    for key, word in (("duplicates", "duplicate"), ("reordered", "reordered"),
                      ("unexpected", "unexpected")):
        if acct[key]:
            warnings.append(f"delivery: {acct[key]} {word} deliveries")
    if reused:
        warnings.append(f"delivery: clients reused {reused} message ids (a sequence restarted "
                        "after a reconnect): duplicate and reorder counts are inflated")
    for r in recovery.itertuples(index=False):
        if r.note == "not recovered before the scenario ended":
            warnings.append(f"fault {r.id} ({r.kind}): {r.note}")
    spread = uneven_instances(run.meta)
    if spread:
        warnings.append(f"instances: {spread}: users go to instances in turn in Locust's "
                        "class order, so the instances did not carry alike loads (a "
                        "class's share whose period is not a multiple of the instance "
                        "count spreads it)")
    loadgen = run.meta.get("load_generator") or {}
    if (loadgen.get("busiest_share") or 0.0) >= LOADGEN_SATURATED:
        warnings.append(
            f"load generator: a Locust process used {loadgen['busiest_share']:.0%} of a "
            "core in its busiest second: client latencies and closed-loop rates include "
            "its own queue (more swarm.workers, or `rtmsim simulate`, to see past it)")
    return warnings


def uneven_instances(meta: dict[str, Any]) -> str | None:
    """How a run's users fell unevenly on its instances (`spawn.uneven`), from what
    `run.json` says of the swarm; None when evenly, with one instance, under a shape
    (its users come and go) or when the classes cannot be read (an older run)."""
    instances, users = int(meta.get("instances") or 1), int(meta.get("users") or 0)
    if instances < 2 or meta.get("shape") or not isinstance(meta.get("classes"), dict):
        return None
    try:
        params = {name: parse_params(name, table) for name, table in meta["classes"].items()}
    except (ConfigError, TypeError):
        return None
    return uneven(users, {name: (p.weight, p.fixed_count) for name, p in params.items()},
                  instances)


def quota_summary(run: Run) -> dict[str, Any]:
    """Per app: the final value and the peak of each usage field over the run."""
    q = quota_over_time(run)
    out: dict[str, Any] = {}
    for app, g in q.groupby("app", sort=True):
        g = g.sort_values("ts")
        out[str(app)] = {f: {"final": g[f].dropna().iloc[-1] if g[f].notna().any() else None,
                             "peak": g[f].max()} for f in QUOTA_FIELDS}
    for app, stats in _final_usage(run).items():
        for f in QUOTA_FIELDS:
            if f in stats:  # the final stats are later than the last timeline sample
                entry = out.setdefault(app, {}).setdefault(f, {"final": None, "peak": None})
                entry["final"] = stats[f]
                peak = entry["peak"]
                entry["peak"] = stats[f] if peak is None or math.isnan(peak) else max(
                    peak, stats[f])
    return out


def _final_usage(run: Run) -> dict[str, dict[str, Any]]:
    for name in sorted(run.stats):
        usage = run.stats[name].get("usage") or {}
        if usage:
            return {app: u for app, u in sorted(usage.items()) if u}
    return {}


def write_summary(run: str | Path | Run) -> dict[str, Any]:
    """Summarise a run (a loaded `Run`, or its directory), write `summary.json`;
    returns the summary. Pass the `Run` when it is loaded anyway: loading is most of
    the cost of a large run."""
    if not isinstance(run, Run):
        run = load_run(run)
    data = summary(run)
    text = json.dumps(data, sort_keys=True, indent=2, allow_nan=False) + "\n"
    (run.dir / rundir.SUMMARY).write_text(text, encoding="utf-8")
    return data
