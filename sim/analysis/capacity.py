"""Capacity from a step-ramp run: per load step throughput, p99 and errors; the knee.

The steps are read from what Locust actually ran (the user count in its stats
history), not from the shape's parameters, so a ramp that could not spawn its users
is measured as it happened. A virtual run (`rtmsim simulate`) has no Locust: its
steps are its shape's, which its swarm follows exactly. The first seconds of each step
are skipped: users that just connected and subscribed would otherwise blur the step's
steady state.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from loadtests.schedules import target
from server.codes import ERROR_CODES

from .. import rundir
from ..scenario import load_scenario
from .run import Run, fault_windows, observed_counts
from .timeline import timeline_total

P99_LIMIT_MS = 100.0
ERROR_RATE_LIMIT = 0.01
SETTLE_S = 2.0
# A step's rate from its own samples needs them a second apart at least (the timeline's
# period): one sample, or two closer, says nothing of a rate.
MIN_RATE_SPAN_S = 1.0
STEP_OPS = ("connect", "subscribe", "unsubscribe", "publish", "send")


def user_levels(run: Run) -> pd.DataFrame:
    """(ts, users) from Locust's stats history (Aggregated rows), one row a second; for a
    virtual run, which has no Locust, the users its shape asked for each second."""
    path = run.dir / f"{rundir.LOCUST_PREFIX}_stats_history.csv"
    if not path.exists():
        if run.meta.get("virtual") and (run.dir / rundir.SCENARIO).exists():
            return _shape_levels(run)
        return pd.DataFrame(columns=["ts", "users"])
    hist = pd.read_csv(path, usecols=["Timestamp", "User Count", "Name"])
    hist = hist[hist.Name == "Aggregated"]
    return pd.DataFrame({"ts": hist.Timestamp.astype(float) - run.origin,
                         "users": hist["User Count"].astype(int)}).reset_index(drop=True)


def _shape_levels(run: Run) -> pd.DataFrame:
    """A virtual run's users each second: what its shape asked for (the virtual swarm
    follows it as Locust's runner does, once a second, spawning `spawn_rate` a second);
    without a shape, its users spawned `spawn_rate` a second."""
    swarm = load_scenario(run.dir / rundir.SCENARIO).swarm
    # run.json's users and spawn rate are the run's: the file's, less --users and
    # less a mirrored deployment's other instances (`--simulate-instances`)
    swarm = dataclasses.replace(swarm, users=int(run.meta.get("users") or swarm.users),
                                spawn_rate=float(run.meta.get("spawn_rate")
                                                 or swarm.spawn_rate))
    per = max(1, int(swarm.spawn_rate))
    ts, users = [], []
    for sec in range(math.ceil(swarm.duration_s)):
        if swarm.shape:
            want = target(swarm.shape, float(sec),
                          {"duration_s": swarm.duration_s, **swarm.shape_params})
            if want is None:
                break
            n = want[0]
        else:
            n = min(swarm.users, per * (sec + 1))
        ts.append(float(sec))
        users.append(int(n))
    return pd.DataFrame({"ts": ts, "users": users})


def load_steps(run: Run) -> pd.DataFrame:
    """step, users, start_s, end_s: maximal runs of one user count lasting >= 2 samples.

    Shorter runs are the spawn in progress between two levels, not a step.
    """
    levels = user_levels(run)
    cols = ["step", "users", "start_s", "end_s"]
    if not len(levels):
        return pd.DataFrame(columns=cols)
    run_id = (levels.users != levels.users.shift()).cumsum()
    g = levels.groupby(run_id, sort=True)
    steps = pd.DataFrame({"users": g.users.first(), "start_s": g.ts.min(),
                          "end_s": g.ts.max() + 1.0, "n": g.size()})
    # Levels after the scenario's end are Locust stopping its users, not a step.
    steps = steps[(steps.users > 0) & (steps.n >= 2)
                  & (steps.start_s < run.duration_s)].reset_index(drop=True)
    steps.insert(0, "step", np.arange(1, len(steps) + 1))
    return steps[cols]


def capacity_steps(run: Run, settle_s: float = SETTLE_S) -> pd.DataFrame:
    """Per step: users, connections (server median), msgs_per_s (accepted publishes),
    publish_p99_ms (ok publishes, numpy linear), requests, errors, error_rate, faults
    (ids of the fault windows overlapping the step: a limit crossed under an injected
    fault is the fault's doing, not the load's).

    Errors are request outcomes other than ok, leaving out codes that are the client's
    own fault (never-retry codes: a misbehaving client is not a capacity limit).
    """
    steps = load_steps(run)
    cols = ["step", "users", "start_s", "end_s", "connections", "msgs_per_s",
            "publish_p99_ms", "requests", "errors", "error_rate", "faults", "server_cpu"]
    if not len(steps):
        return pd.DataFrame(columns=cols)
    r = run.requests()
    r = r[r.op.isin(STEP_OPS)]
    failed = service_errors(r)
    published = timeline_total(run, "published")
    conns = timeline_total(run, "connections_now")
    cpu = timeline_total(run, "cpu_s")  # server processes' CPU seconds, all instances
    windows = fault_windows(run)
    rows = []
    for s in steps.itertuples(index=False):
        lo = s.start_s + min(settle_s, 0.25 * (s.end_s - s.start_s))
        hi = s.end_s
        in_step = (r.ts >= lo) & (r.ts < hi)
        pubs = r[in_step & (r.op == "publish") & (r.outcome == "ok")].latency_ms.dropna()
        rate = _rate(published, lo, hi) if len(published) else len(pubs) / (hi - lo)
        n = int(in_step.sum())
        errors = int((in_step & failed).sum())
        c = conns[(conns.index >= lo) & (conns.index < hi)]
        busy = math.nan  # cores the server used: ~1 per instance means its CPU ran out
        if len(cpu.dropna()) > 1:
            busy = _rate(cpu.dropna(), lo, hi)
        rows.append({"step": int(s.step), "users": int(s.users), "start_s": float(s.start_s),
                     "end_s": float(s.end_s),
                     "connections": float(c.median()) if len(c) else math.nan,
                     "msgs_per_s": rate,
                     "publish_p99_ms": float(np.percentile(pubs, 99, method="linear"))
                     if len(pubs) else math.nan,
                     "requests": n, "errors": errors,
                     "error_rate": errors / n if n else math.nan,
                     "faults": " ".join(windows.id[(windows.start_s < hi)
                                                   & (windows.end_s >= lo)]),
                     "server_cpu": busy})
    return pd.DataFrame(rows, columns=cols)


def _rate(total: pd.Series, lo: float, hi: float) -> float:
    """How fast a cumulative server counter (indexed by scenario seconds) grew in
    [lo, hi): between the first and last of its samples inside, when they span at least
    a second; else interpolated at lo and hi. Interpolating across a sample outside
    the step spreads what came before or after it over the step: the last step's
    sample after the load stopped read 54.4 publishes a second of 60."""
    x, y = total.index.to_numpy(dtype=float), total.to_numpy(dtype=float)
    inside = np.flatnonzero((x >= lo) & (x <= hi))
    if len(inside) >= 2 and x[inside[-1]] - x[inside[0]] >= MIN_RATE_SPAN_S:
        a, b = inside[0], inside[-1]
        return float(y[b] - y[a]) / float(x[b] - x[a])
    return float(np.diff(np.interp([lo, hi], x, y))[0]) / (hi - lo)


def service_errors(requests: pd.DataFrame,
                   planned_closes: frozenset[str] = frozenset()) -> pd.Series:
    """Which request rows failed for the service's reasons (a boolean mask): not ok,
    not the client's own fault, and not one of `planned_closes` (the closes a
    scenario's faults send on purpose, e.g. {"close 1001"})."""
    client_fault = {c for c, e in ERROR_CODES.items() if e.is_client_fault}
    out = requests.outcome
    return (out != "ok") & ~out.isin(client_fault) & ~out.isin(planned_closes)


def capacity(run: Run, p99_limit_ms: float = P99_LIMIT_MS,
             error_rate_limit: float = ERROR_RATE_LIMIT) -> dict[str, Any]:
    """The knee: the last step before p99 publish latency or the error rate crossed
    its limit. {"steps": [...], "knee": step dict | None, "limit": sentence | None,
    "sustainable_connections", "sustainable_msgs_per_s", "verdict": sentence}.
    """
    steps = capacity_steps(run)
    out: dict[str, Any] = {"p99_limit_ms": p99_limit_ms, "error_rate_limit": error_rate_limit,
                           "steps": steps.to_dict("records"), "knee": None, "limit": None,
                           "resource": None,
                           "sustainable_connections": None, "sustainable_msgs_per_s": None}
    if not len(steps):
        out["verdict"] = "no load steps found (no Locust stats history in the run directory)"
        return out
    knee = None
    for s in steps.to_dict("records"):
        crossed = []
        if s["publish_p99_ms"] > p99_limit_ms:
            crossed.append(f"p99 publish latency {s['publish_p99_ms']:.1f} ms > "
                           f"{p99_limit_ms:g} ms")
        if s["error_rate"] > error_rate_limit:
            crossed.append(f"error rate {100 * s['error_rate']:.2f}% > "
                           f"{100 * error_rate_limit:g}%")
        if crossed:
            under = f", with faults {s['faults']} active" if s["faults"] else ""
            out["limit"] = (f"{' and '.join(crossed)} at step {s['step']} "
                            f"({s['users']} users{under})")
            out["resource"] = _resource(run, s.get("server_cpu", math.nan))
            break
        knee = s
    out["knee"] = knee
    why = f" ({out['resource']})" if out.get("resource") else ""
    if knee is None:
        out["verdict"] = f"already over a limit at the first step: {out['limit']}{why}"
        return out
    out["sustainable_connections"] = knee["connections"]
    out["sustainable_msgs_per_s"] = knee["msgs_per_s"]
    tail = (f"; then {out['limit']}{why}" if out["limit"]
            else "; no limit crossed up to the last step (capacity is at least this)")
    out["verdict"] = (f"sustainable: {knee['users']} users, {knee['connections']:.0f} "
                      f"connections, {knee['msgs_per_s']:.1f} msgs/s (step {knee['step']})"
                      f"{tail}")
    return out


def _resource(run: Run, server_cpu: float) -> str:
    """Which resource ran out at the limit, from the server's CPU use in that step."""
    instances = int(run.meta.get("instances") or 1)
    if math.isnan(server_cpu):
        return "server CPU not recorded (older run)"
    share = server_cpu / instances
    if share >= 0.85:
        return (f"server CPU ran out ({server_cpu:.2f} cores busy over {instances} "
                f"instance(s))")
    return (f"not the server's CPU ({server_cpu:.2f} cores busy over {instances} "
            "instance(s)): the load generator or the machine ran out first")


def errors_by_step(run: Run, settle_s: float = SETTLE_S) -> pd.DataFrame:
    """Per load step and outcome: how each error code grows with the load.

    step, users, code (a request outcome other than ok: an error code, "close NNNN",
    "timeout"), errors, requests (all requests of the step), per_s and
    per_1000_requests, client_fault (the code is the client's own fault). Same step
    windows (settle time skipped) and ops as `capacity_steps`; only codes seen appear.
    """
    cols = ["step", "users", "code", "errors", "requests", "per_s", "per_1000_requests",
            "client_fault"]
    steps = load_steps(run)
    r = run.requests()
    r = r[r.op.isin(STEP_OPS)]
    rows = []
    for s in steps.itertuples(index=False):
        lo = s.start_s + min(settle_s, 0.25 * (s.end_s - s.start_s))
        in_step = r[(r.ts >= lo) & (r.ts < s.end_s)]
        failed = in_step.outcome[in_step.outcome != "ok"]
        for code, n in sorted(observed_counts(failed).items()):
            entry = ERROR_CODES.get(code)
            rows.append({"step": int(s.step), "users": int(s.users), "code": str(code),
                         "errors": int(n), "requests": len(in_step),
                         "per_s": n / (s.end_s - lo),
                         "per_1000_requests": 1000 * n / len(in_step),
                         "client_fault": bool(entry and entry.is_client_fault)})
    return pd.DataFrame(rows, columns=cols)
