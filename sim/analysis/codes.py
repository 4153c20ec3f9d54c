"""Per-code counts from both sides, their reconciliation, and never-retry violations.

The client log says what users saw, the server's counters and event log say what the
server sent; neither is trusted alone. Every table puts both side by side with the
difference, and `reconcile` names each disagreement in words, so a lost close frame
or an uncounted error is reported instead of averaged away. Meanings and retry
guidance come from `server.codes`, the one code table.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from server.codes import CLOSE_CODES, ERROR_CODES, CloseCode, Retry

from .run import NO_ANSWER, Run, bin_range, observed_counts, time_bins

NEVER_RETRY = frozenset(c for c, e in ERROR_CODES.items() if not e.is_retryable)
# RFC 6455 codes the server never sends itself, so the protocol table has no row for them.
WS_CLOSES = {
    CloseCode.NORMAL_CLOSURE: ("normal_closure", "normal closure", "none needed"),
    CloseCode.ABNORMAL_CLOSURE: ("abnormal_closure", "no close frame: the connection was "
                                 "dropped (network, crash, or an injected drop)",
                                 "reconnect after a backoff"),
}


def _server_totals(run: Run, section: str) -> Counter[str]:
    """A counter of `totals[section]` summed over instances (server-stats.json)."""
    total: Counter[str] = Counter()
    for stats in run.stats.values():
        total.update((stats.get("totals") or {}).get(section) or {})
    return total


def error_counts(run: Run) -> pd.DataFrame:
    """Per error code: client, server, server_log, diff, meaning, retry, client_fault.

    `client` counts client request rows answered with the code; `server` the server's
    final counters (summed over instances; the event log when there are no stats);
    `server_log` the server event log's `error` events; `diff` = client - server.
    """
    client = observed_counts(run.client_errors().outcome)
    srv = run.server
    log = srv.loc[srv.event == "error", "code"].astype(str).value_counts()
    stats = _server_totals(run, "errors")
    server = pd.Series(stats, dtype=np.int64) if run.stats else log
    codes = sorted(set(client.index) | set(server.index) | set(log.index))
    rows = []
    for code in codes:
        entry = ERROR_CODES.get(code)
        rows.append({
            "code": code, "client": int(client.get(code, 0)), "server": int(server.get(code, 0)),
            "server_log": int(log.get(code, 0)),
            "meaning": entry.meaning if entry else "not in the protocol's code table",
            "retry": entry.guidance if entry else "unknown code: tolerate it",
            "retry_kind": str(entry.retry) if entry else "",
            "client_fault": bool(entry.is_client_fault) if entry else False})
    df = pd.DataFrame(rows, columns=["code", "client", "server", "server_log", "meaning",
                                     "retry", "retry_kind", "client_fault"])
    df.insert(3, "diff", df.client - df.server)
    return _by_count(df, "code")


def _client_closes(run: Run) -> pd.Series:
    """Closes the clients recorded: `close` notes plus connects refused with a close."""
    c = run.client
    rows = c[((c.op == "close") | (c.op == "connect")) & c.outcome.str.startswith("close ")]
    return rows.outcome.str.slice(6).astype(int).value_counts()


def close_counts(run: Run) -> pd.DataFrame:
    """Per close code (int): client, server, server_log, diff, name, meaning, guidance.

    The client side is every `close` row (a close frame received, or 1006 for a socket
    that died) plus every connect answered by a close (rejections: 4001, 4010, ...);
    the server side counts closes it decided, rejections included.
    """
    client = _client_closes(run)
    srv = run.server
    closing = srv[srv.event.isin(["close", "reject"])]
    log = pd.to_numeric(closing.code, errors="coerce").dropna().astype(int).value_counts()
    stats = {int(k): v for k, v in _server_totals(run, "closes").items()}
    server = pd.Series(stats, dtype=np.int64) if run.stats else log
    rows = []
    for code in sorted(set(client.index) | set(server.index) | set(log.index)):
        entry = CLOSE_CODES.get(code)
        name, meaning, guidance = ((entry.name, entry.meaning, entry.guidance) if entry
                                   else WS_CLOSES.get(code, ("unknown", "not in the "
                                                             "protocol's code table", "")))
        rows.append({"code": int(code), "client": int(client.get(code, 0)),
                     "server": int(server.get(code, 0)), "server_log": int(log.get(code, 0)),
                     "name": name, "meaning": meaning, "guidance": guidance})
    df = pd.DataFrame(rows, columns=["code", "client", "server", "server_log", "name",
                                     "meaning", "guidance"])
    df.insert(3, "diff", df.client - df.server)
    return _by_count(df, "code")


def _by_count(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """Most frequent first, ties by code: the order a reader scans a table in."""
    most = np.maximum(df.client, df.server)
    df = df.assign(_most=most).sort_values(["_most", key], ascending=[False, True],
                                            kind="stable")
    return df.drop(columns="_most").set_index(key)


def reconcile(run: Run) -> dict[str, Any]:
    """Client vs server, per error code, per close code, and for message counts.

    {"agree": bool, "errors": {code: {client, server, diff}}, "closes": {...},
    "published": {client, server, rest, diff}, "sent": ..., "delivered": ...,
    "no_answer": {outcome: n}, "differences": [one sentence per disagreement]}.
    A request that got no answer (timeout) is not a disagreement by itself, but the
    server may have counted it under any code, so it is named too.
    """
    differences: list[str] = []
    out: dict[str, Any] = {}
    has_log = bool(len(run.server))
    for section, table, label in (("errors", error_counts(run), "{}"),
                                  ("closes", close_counts(run), "close {}")):
        out[section] = {}
        for code, row in table.iterrows():
            out[section][str(code)] = {"client": int(row.client), "server": int(row.server),
                                       "diff": int(row["diff"])}
            what = label.format(code)
            if row["diff"]:
                differences.append(_difference(what, int(row.client), int(row.server)))
            if has_log and run.stats and row.server_log != row.server:
                differences.append(f"{what}: the server event log has {int(row.server_log)} "
                                   f"but the server counters say {int(row.server)}")
    msgs = _server_totals(run, "messages")
    c = run.requests()
    rest = _rest_publishes(run)
    delivered = run.delivery_count()
    for name, client_n, server_n, extra in (
            ("published", int(((c.op == "publish") & (c.outcome == "ok")).sum()),
             int(msgs.get("published", 0)) - rest, {"rest": rest}),
            ("sent", int(((c.op == "send") & (c.outcome == "ok")).sum()),
             int(msgs.get("sent", 0)), {}),
            ("delivered", delivered, int(msgs.get("delivered", 0)), {})):
        out[name] = {"client": client_n, "server": server_n, "diff": client_n - server_n,
                     **extra}
        if run.stats and client_n != server_n:
            what = {"published": "acked publishes (REST publishes excluded)",
                    "sent": "acked direct sends",
                    "delivered": "deliveries (message + direct frames)"}[name]
            differences.append(_difference(what, client_n, server_n))
    no_answer = observed_counts(c.outcome[c.outcome.isin(NO_ANSWER)])
    out["no_answer"] = {k: int(v) for k, v in sorted(no_answer.items())}
    for outcome, n in sorted(no_answer.items()):
        differences.append(f"{int(n)} client requests ended with {outcome} (no answer): "
                           "the server may have counted them under any code")
    if not run.stats:
        differences.append("no server-stats.json: server counts come from the event log "
                           "alone, message counts could not be compared")
    out["differences"] = differences
    out["agree"] = not differences
    return out


def _rest_publishes(run: Run) -> int:
    """REST publishes the server accepted: counted in `published`, absent from clients."""
    srv = run.server
    if "path" not in srv.columns or "method" not in srv.columns:
        return 0
    rest = srv[srv.event == "rest"]
    ok = ((rest.method == "POST") & rest.path.astype(str).str.endswith("/publish")
          & (pd.to_numeric(rest.get("status"), errors="coerce") == 200))
    return int(ok.sum())


def _difference(what: str, client: int, server: int) -> str:
    if client < server:
        return (f"{what}: clients recorded {client}, the server counted {server} "
                f"({server - client} not seen by clients)")
    return (f"{what}: clients recorded {client}, the server counted {server} "
            f"({client - server} more on the client side)")


def error_rates(run: Run, bin_s: float = 1.0, side: str = "client") -> pd.DataFrame:
    """Errors per second per code in `bin_s` bins (index: bin start, scenario s).

    side "client": request rows answered with an error code; "server": the server
    event log's `error` events. Every bin of the run is present (zeros included).
    """
    if side == "client":
        rows = run.client_errors()
        codes = rows.outcome
    elif side == "server":
        rows = run.server[run.server.event == "error"]
        codes = rows.code.astype(str)
    else:
        raise ValueError(f"side must be 'client' or 'server', got {side!r}")
    bins = bin_range(run, bin_s, run.client, run.server)
    counts = pd.crosstab(time_bins(rows.ts, bin_s), codes) if len(rows) else pd.DataFrame()
    out = counts.reindex(bins, fill_value=0).sort_index(axis=1) / bin_s
    out.index.name = "ts"
    out.columns.name = "code"
    return out


def never_retry_violations(run: Run) -> pd.DataFrame:
    """Connections that repeated an operation after a never-retry answer (server view).

    A code whose guidance is "never" or "never on this connection" cannot succeed on
    a retry; a client that sends the same op again on the same connection and earns
    the same code again is looping. One row per (instance, conn, code, op) seen at
    least twice: `repeats` = answers after the first. `op` is "" for errors that
    carry no op (a frame the server could not parse). `user`/`user_class` name the
    Locust user, matched by peerId from the client's connect rows.
    """
    cols = ["instance", "conn", "peer", "user", "user_class", "app", "code", "op", "repeats",
            "first_ts", "last_ts"]
    srv = run.server
    errs = srv[(srv.event == "error") & srv.code.astype(str).isin(NEVER_RETRY)]
    if not len(errs):
        return pd.DataFrame(columns=cols)
    errs = errs.assign(op=errs.op.fillna("").astype(str), code=errs.code.astype(str),
                       peer=errs.peer.fillna("").astype(str), app=errs.app.fillna(""))
    g = errs.groupby(["instance", "conn", "peer", "app", "code", "op"], sort=True)
    df = g.ts.agg(["count", "min", "max"]).reset_index()
    df = df[df["count"] >= 2]
    df = df.assign(repeats=df["count"] - 1).rename(columns={"min": "first_ts",
                                                            "max": "last_ts"})
    c = run.client
    # As strings: a peer without a connect row gets "", not a category of the log.
    who = c.loc[(c.op == "connect") & (c.outcome == "ok") & (c.peer != ""),
                ["peer", "user", "user_class"]].astype(str)
    who = who.drop_duplicates("peer").set_index("peer")
    df["user"] = df.peer.map(who.user).fillna("")
    df["user_class"] = df.peer.map(who.user_class).fillna("")
    df["conn"] = df.conn.astype(np.int64)
    df = df.sort_values(["repeats", "first_ts", "instance", "conn"],
                        ascending=[False, True, True, True], kind="stable")
    return df[cols].reset_index(drop=True)


def is_service_fault(code: str) -> bool:
    """True for codes that mean the service failed (retry after a backoff)."""
    entry = ERROR_CODES.get(code)
    return entry is not None and entry.retry is Retry.BACKOFF


BREAKDOWN_KEYS = {"client": ("user_class", "op", "user", "policy"),
                  "server": ("app", "op", "instance")}


def error_breakdown(run: Run, by: str | tuple[str, ...] = ("user_class", "op"),
                    side: str = "client") -> pd.DataFrame:
    """Requests, errors, error_rate and per-code error counts for each group of `by`.

    side "client": the clients' request rows, grouped by any of user_class, op, user,
    policy (the client log knows who sent what but not the app); side "server": the
    server event log's `ok` and `error` events, grouped by any of app, op, instance
    (the server knows the app but not the Locust user). error_rate = errors / requests
    in the group; the code columns follow, most frequent first. Errors the server
    could not attribute to an op (a frame it could not parse) have op "(unparsed)".
    """
    keys = (by,) if isinstance(by, str) else tuple(by)
    allowed = BREAKDOWN_KEYS.get(side)
    if allowed is None:
        raise ValueError(f"side must be 'client' or 'server', got {side!r}")
    if not keys or any(k not in allowed for k in keys):
        raise ValueError(f"by must name some of {', '.join(allowed)} for side {side!r}, "
                         f"got {keys!r}")
    if side == "client":
        rows = run.requests()
        errs = run.client_errors()
        codes = errs.outcome
    else:
        srv = run.server
        rows = srv[srv.event.isin(["ok", "error"])]
        rows = rows.assign(**{k: rows[k].fillna("(unparsed)" if k == "op" else "")
                              .astype(str) for k in keys})
        errs = rows[rows.event == "error"]
        codes = errs.code.astype(str)
    df = rows.groupby(list(keys), sort=True).size().rename("requests").to_frame()
    code_cols: list[str] = []
    if len(errs):
        per_code = pd.crosstab([errs[k] for k in keys], codes)
        code_cols = list(per_code.sum().sort_values(ascending=False, kind="stable").index)
        df = df.join(per_code[code_cols], how="outer")
    df = df.fillna(0).astype(np.int64)
    df.insert(1, "errors", df[code_cols].sum(axis=1) if code_cols else 0)
    df.insert(2, "error_rate", df.errors / df.requests.where(df.requests > 0))
    df.columns.name = None
    df = df.sort_values(["errors", "requests"], ascending=False, kind="stable")
    return df


def whose_fault(code: str) -> str:
    """"client", "service", "limit" or "unknown": who must act on an error code.

    client: the request was wrong and retrying cannot help (never-retry codes: fix the
    client); service: the service failed (retry after a backoff); limit: a plan limit
    or a state the client must handle (quota, subscription limit, absent peer).
    """
    entry = ERROR_CODES.get(code)
    if entry is None:
        return "unknown"
    if entry.is_client_fault:
        return "client"
    return "service" if entry.retry is Retry.BACKOFF else "limit"
