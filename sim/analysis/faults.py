"""What faults did to the service and its clients: recovery times and reconnect storms.

Recovery is judged per second: the rate of service-side error codes (those whose
guidance is "retry after a backoff": backend_error, internal_error), and of requests
the clients gave up waiting for (timeouts), must be back at its pre-fault level and
ok publishes back to 90 % of theirs. A server that answers every request after its
client has given up is busy, not healthy: counting only what it logged would call a
metastable retry storm (all work, no goodput) recovered. A storm is
judged by the clients: who was closed, when each came back, and how bunched the
returns were (the spread is what jitter buys).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from server.codes import CLOSE_CODES, CloseCode

from .codes import is_service_fault
from .run import NOTE_OPS, Run, bin_range, fault_windows, time_bins
from .timeline import throughput

# deploy, admin kick, dropped sockets
STORM_CODES = (CloseCode.GOING_AWAY, CloseCode.ADMIN_DISCONNECT, CloseCode.ABNORMAL_CLOSURE)
STORM_GAP_S = 1.0


def per_second_health(run: Run) -> pd.DataFrame:
    """Per 1 s bin (index ts): service_errors and publish_ok, both per second.

    Service errors are the server's service-side error codes plus the clients'
    timeouts. ok publishes come from the server event log's `ok` events when the
    server logged requests, else from its published counter in the timeline.
    """
    srv = run.server
    bins = bin_range(run, 1.0, run.server, run.client)
    errs = srv[(srv.event == "error") & srv.code.astype(str).map(is_service_fault).astype(bool)]
    out = pd.DataFrame(index=pd.Index(bins, name="ts"))
    out["service_errors"] = time_bins(errs.ts, 1.0).value_counts().reindex(bins, fill_value=0)
    client = run.client
    if len(client):
        timeouts = client[(client.outcome == "timeout") & ~client.op.isin(NOTE_OPS)]
        out["service_errors"] += time_bins(timeouts.ts, 1.0).value_counts().reindex(
            bins, fill_value=0)
    oks = srv[(srv.event == "ok") & (srv.op == "publish")]
    if len(oks):
        out["publish_ok"] = time_bins(oks.ts, 1.0).value_counts().reindex(bins, fill_value=0)
    else:
        tp = throughput(run, 1.0).set_index("ts").published_per_s
        out["publish_ok"] = tp.reindex(bins).fillna(0.0)
    return out.astype(float)


def recovery_times(run: Run, *, baseline_s: float = 10.0, hold_s: int = 2,
                   throughput_fraction: float = 0.9) -> pd.DataFrame:
    """Per fault window: how long after its end the service was healthy again.

    Baseline: the `baseline_s` seconds before the fault starts. Healthy second: service
    errors <= baseline mean + 3 sqrt(baseline mean) (Poisson noise; 0 when the baseline
    had none) and ok publishes >= `throughput_fraction` of the baseline mean.
    recovered_s = start of the first of `hold_s` consecutive healthy seconds at or after
    end_s, minus end_s (1 s resolution); NaN when that never happens before the
    scenario ends, or when there is no baseline (a fault from the first second) or no
    end (open-ended faults).
    """
    cols = ["id", "kind", "start_s", "end_s", "recovered_s", "recovered_at_s",
            "baseline_errors_per_s", "baseline_publish_per_s", "error_threshold_per_s",
            "note"]
    windows = fault_windows(run)
    if not len(windows):
        return pd.DataFrame(columns=cols)
    health = per_second_health(run)
    last_start = run.duration_s - 1.0  # the last whole second of the scenario
    rows = []
    for w in windows.itertuples(index=False):
        row: dict[str, Any] = {"id": w.id, "kind": w.kind, "start_s": w.start_s,
                               "end_s": w.end_s, "recovered_s": math.nan,
                               "recovered_at_s": math.nan, "baseline_errors_per_s": math.nan,
                               "baseline_publish_per_s": math.nan,
                               "error_threshold_per_s": math.nan, "note": ""}
        rows.append(row)
        if w.start_s >= run.duration_s:
            row["note"] = "scheduled after the scenario ended: never happened"
            continue
        if w.open_ended:
            row["note"] = "open-ended: active until the run ended"
            continue
        before = health[(health.index >= w.start_s - baseline_s) & (health.index < w.start_s)
                        & (health.index + 1.0 <= w.start_s)]
        if not len(before):
            row["note"] = "no baseline: the fault starts in the first second"
            continue
        err_mean = float(before.service_errors.mean())
        pub_mean = float(before.publish_ok.mean())
        threshold = err_mean + 3.0 * math.sqrt(err_mean)
        row.update(baseline_errors_per_s=err_mean, baseline_publish_per_s=pub_mean,
                   error_threshold_per_s=threshold)
        after = health[(health.index >= w.end_s) & (health.index <= last_start)]
        healthy = ((after.service_errors <= threshold + 1e-9)
                   & (after.publish_ok >= throughput_fraction * pub_mean - 1e-9)).to_numpy()
        first = _first_held(healthy, hold_s)
        if first is not None:
            at = float(after.index[first])
            row.update(recovered_at_s=at, recovered_s=at - float(w.end_s))
        elif _terminal_close(w.close_code):
            row["note"] = (f"terminal close {int(w.close_code)}: well-behaved clients stay "
                           "away, so throughput is not expected to come back")
        else:
            row["note"] = "not recovered before the scenario ended"
    return pd.DataFrame(rows, columns=cols)


def _terminal_close(code: Any) -> bool:
    """Whether a close fault's code tells clients never to reconnect (PROTOCOL.md 6)."""
    if code is None or (isinstance(code, float) and math.isnan(code)):
        return False
    entry = CLOSE_CODES.get(int(code))
    return entry is not None and entry.is_terminal


def _first_held(healthy: np.ndarray, hold_s: int) -> int | None:
    """The index of the first of `hold_s` consecutive True values, or None."""
    if len(healthy) < hold_s:
        return None
    held = np.convolve(healthy.astype(int), np.ones(hold_s, dtype=int), "valid")
    hits = np.flatnonzero(held == hold_s)
    return int(hits[0]) if len(hits) else None


def recovery_by_class(run: Run, *, baseline_s: float = 10.0, hold_s: int = 2,
                      throughput_fraction: float = 0.9) -> pd.DataFrame:
    """Per fault window and user class: how soon that class's clients were served again.

    The clients' view of `recovery_times`, to compare retry policies running side by
    side in one run: per second, the class's requests answered ok (any op). Baseline:
    its mean over the `baseline_s` seconds before the fault. recovered_s = start of the
    first of `hold_s` consecutive seconds at or after end_s with ok >= `throughput_fraction`
    of the baseline, minus end_s (1 s resolution); first_ok_s = the class's first ok
    answer at or after end_s, minus end_s. NaN (with a note) when it never happened
    before the scenario ended or there is nothing to compare with.
    """
    cols = ["id", "kind", "user_class", "start_s", "end_s", "baseline_ok_per_s",
            "first_ok_s", "recovered_s", "note"]
    windows = fault_windows(run)
    r = run.requests()
    ok = r[r.outcome == "ok"]
    bins = bin_range(run, 1.0, run.client)
    last_start = run.duration_s - 1.0
    rows = []
    for w in windows.itertuples(index=False):
        if w.open_ended or w.start_s >= run.duration_s:
            continue  # no end to recover from
        for cls in sorted(r.user_class.unique()):
            mine = ok[ok.user_class == cls]
            per_s = time_bins(mine.ts, 1.0).value_counts().reindex(bins, fill_value=0)
            before = per_s[(per_s.index >= w.start_s - baseline_s)
                           & (per_s.index + 1.0 <= w.start_s)]
            row: dict[str, Any] = {"id": w.id, "kind": w.kind, "user_class": cls,
                                   "start_s": w.start_s, "end_s": w.end_s,
                                   "baseline_ok_per_s": math.nan, "first_ok_s": math.nan,
                                   "recovered_s": math.nan, "note": ""}
            rows.append(row)
            later = mine.ts[mine.ts >= w.end_s]
            if len(later):
                row["first_ok_s"] = float(later.min()) - float(w.end_s)
            base = float(before.mean()) if len(before) else 0.0
            if base <= 0:
                row["note"] = "no ok requests before the fault: no baseline"
                continue
            row["baseline_ok_per_s"] = base
            after = per_s[(per_s.index >= w.end_s) & (per_s.index <= last_start)]
            first = _first_held((after >= throughput_fraction * base - 1e-9).to_numpy(),
                                hold_s)
            if first is None:
                row["note"] = "not recovered before the scenario ended"
            else:
                row["recovered_s"] = float(after.index[first]) - float(w.end_s)
    return pd.DataFrame(rows, columns=cols)


def _bursts(times: np.ndarray, gap_s: float) -> np.ndarray:
    """A burst number per (sorted) time: a new burst after a pause longer than gap_s."""
    if not len(times):
        return np.zeros(0, dtype=int)
    return np.concatenate([[0], np.cumsum(np.diff(times) > gap_s)])


def peak_per_window(times: np.ndarray, window_s: float = 1.0) -> int:
    """The most events in any `window_s`-long sliding window."""
    x = np.sort(np.asarray(times, dtype=float))
    if not len(x):
        return 0
    return int((np.searchsorted(x, x + window_s, side="left") - np.arange(len(x))).max())


def client_closes(run: Run) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(closes, connects): when each client connection learnt it was closed, and code.

    A close is the first row after a connect whose outcome is "close NNNN": the
    `close` note, or a request that hit the closed socket first (the client logs no
    `close` note in that case). connects: (user, back_ts) of every successful connect.
    """
    c = run.client
    connects = c[(c.op == "connect") & (c.outcome == "ok")][["user", "ts"]]
    connects = connects.rename(columns={"ts": "back_ts"}).sort_values("back_ts")
    signals = c[((c.op == "close") | ~c.op.isin(NOTE_OPS | {"connect"}))
                & c.outcome.str.startswith("close ")][["user", "ts", "outcome"]]
    signals = signals.sort_values("ts", kind="stable")
    epoch = pd.merge_asof(signals, connects.rename(columns={"back_ts": "since"}),
                          left_on="ts", right_on="since", by="user", direction="backward")
    first = epoch.drop_duplicates(["user", "since"], keep="first")
    first = first.assign(code=pd.to_numeric(first.outcome.str.slice(6), errors="coerce"))
    return first[["user", "ts", "code"]].reset_index(drop=True), connects


def reconnect_storms(run: Run, codes: tuple[int, ...] = STORM_CODES,
                     gap_s: float = STORM_GAP_S) -> pd.DataFrame:
    """One row per burst of closes with one of `codes` (closes <= gap_s apart).

    closed: closes the server decided in the burst (the clients' count when there is
    no server log); client_closed: closes clients noticed (`client_closes`); reconnected:
    those whose user connected again; median_delay_s and spread_s (IQR, numpy linear)
    of close-to-reconnected delays; peak_reconnects_per_s: most reconnects in any 1 s
    window; fault_id: the fault whose window holds the burst's start, if any.
    """
    cols = ["code", "at_s", "end_s", "closed", "client_closed", "reconnected",
            "median_delay_s", "spread_s", "peak_reconnects_per_s", "fault_id"]
    srv = run.server
    srv_closes = srv[srv.event == "close"].assign(
        code=lambda d: pd.to_numeric(d.code, errors="coerce"))
    cli_closes, connects = client_closes(run)
    windows = fault_windows(run)
    rows = []
    for code in codes:
        server_ts = np.sort(srv_closes.ts[srv_closes.code == code].to_numpy(dtype=float))
        mine = cli_closes[cli_closes.code == code].sort_values("ts")
        source = server_ts if len(server_ts) else mine.ts.to_numpy(dtype=float)
        burst_of = _bursts(source, gap_s)
        if not len(source):
            continue
        back = pd.merge_asof(mine[["user", "ts"]], connects, left_on="ts", right_on="back_ts",
                             by="user", direction="forward", allow_exact_matches=False)
        starts = np.array([source[burst_of == b].min() for b in range(burst_of[-1] + 1)])
        ends = np.array([source[burst_of == b].max() for b in range(burst_of[-1] + 1)])
        # A client notices a close a moment after the server sent it: allow gap_s.
        idx = np.searchsorted(starts, back.ts.to_numpy(dtype=float) + gap_s, side="right") - 1
        for b in range(len(starts)):
            in_burst = (idx == b) & (back.ts.to_numpy() <= ends[b] + gap_s)
            mine_b = back[in_burst]
            delays = (mine_b.back_ts - mine_b.ts).dropna().to_numpy(dtype=float)
            q = (np.percentile(delays, [25, 50, 75], method="linear") if len(delays)
                 else [math.nan] * 3)
            rows.append({"code": int(code), "at_s": float(starts[b]), "end_s": float(ends[b]),
                         "closed": int((burst_of == b).sum()),
                         "client_closed": int(in_burst.sum()),
                         "reconnected": len(delays), "median_delay_s": float(q[1]),
                         "spread_s": float(q[2] - q[0]),
                         "peak_reconnects_per_s": peak_per_window(
                             mine_b.back_ts.dropna().to_numpy(dtype=float)),
                         "fault_id": _fault_at(windows, float(starts[b]))})
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["at_s", "code"], kind="stable").reset_index(drop=True)


def _fault_at(windows: pd.DataFrame, t: float, slack_s: float = 1.0) -> str:
    """The first non-open-ended fault whose window (plus slack) holds time t, or ""."""
    for w in windows.itertuples(index=False):
        if not w.open_ended and w.start_s - slack_s <= t <= w.end_s + slack_s:
            return str(w.id)
    return ""
