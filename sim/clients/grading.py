"""Grading real clients' retry behaviour from the server's event log.

Every rule is chosen by a code's `Retry` guidance in `server.codes`, the table the
server itself uses, so a code added there with an existing kind of guidance is graded
here without touching this file (a new kind needs a rule; a test checks that every
kind has one or is deliberately ungraded).
"What a client did next" is read from the server's side: after an error on an op,
the client's next request of the same op (on any of its connections); after a close,
its next connection attempt (a `connect` or a `reject`). The server cannot tell a
retry from a new request of the same op, so a client that publishes faster than the
backoff threshold looks like one that retries at once; the reference clients publish
about once a second.

Clients are tied to processes by peerId: `rtmsim clients` gives process i tokens for
`client-<i>` only. Token fetches come from the harness's token endpoint log.

    grades = grade_run("results/clients-client-faults-...")
    grades["grade"]                         # "pass" | "warn" | "fail"
    grades["rules"]["respect_retry_after"]  # {"grade", "incidents", "violations", ...}
    grades["clients"][0]["violations"]      # ["reconnected 20 ms after 4020 ...", ...]
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from server.codes import CLOSE_CODES, ERROR_CODES, CloseCode, Retry

from .. import rundir
from ..analysis import Run, load_run

# Thresholds: grading policy, not protocol data. A retry sooner than this after a
# "backoff" answer is "immediate" (the loadtests' default base backoff is 50 ms).
MIN_BACKOFF_S = 0.05
MIN_RECONNECT_S = 0.1  # reconnecting after a drop/1011/4011 sooner than this: no backoff
RECONNECT_WAIT_FLOOR_S = 30.0  # 4010: the code table's guidance "wait (SDKs: >= 30 s)"
QUOTA_PROBE_S = 1.0  # after over_message_quota, at most one probe per second
LOOP_WINDOW_S = 2.0  # peer_not_found: three repeats within this is a loop
RESUBSCRIBE_S = 5.0  # a reconnected client re-subscribes within this
HINT_TOLERANCE_S = 0.01  # clock granularity when comparing with retryAfterMs
GROUP_WINDOW_S = 1.0  # closes of one code this close together are one mass event
HERD_WINDOW_S = 0.05  # reconnects this close together are counted as a herd
NO_JITTER_STD_S = 0.01  # reconnect delays of a mass event spread less than this: no jitter
# A mass event with fewer reconnecting clients is not graded for jitter: clients with
# the SDKs' +-20 % jitter on 500 ms look unjittered (std < 10 ms) by chance 3.7 % of the
# time with 3 clients, 0.7 % with 4, 0.14 % with 5.
MIN_HERD = 4
WARN_AT = 1  # immediate retries / fast probes from one client: warn from 1, fail from FAIL_AT
FAIL_AT = 3
DEFAULT_RETRY_AFTER_MS = 1000  # the server's shutdown hint, when no deploy fault matches

THRESHOLDS = {"min_backoff_s": MIN_BACKOFF_S, "min_reconnect_s": MIN_RECONNECT_S,
              "reconnect_wait_floor_s": RECONNECT_WAIT_FLOOR_S, "quota_probe_s": QUOTA_PROBE_S,
              "loop_window_s": LOOP_WINDOW_S, "resubscribe_s": RESUBSCRIBE_S,
              "group_window_s": GROUP_WINDOW_S, "herd_window_s": HERD_WINDOW_S,
              "no_jitter_std_s": NO_JITTER_STD_S, "min_herd": MIN_HERD, "warn_at": WARN_AT,
              "fail_at": FAIL_AT}

# 1006 is not in the code table (the server never sends it: a socket that died);
# it reads like 1011: reconnect after a backoff.
ABNORMAL = CloseCode.ABNORMAL_CLOSURE
SLOW_CONSUMER = CloseCode.POLICY_VIOLATION


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    what: str


RULES: dict[str, Rule] = {r.id: r for r in (
    Rule("connected", "every client reaches the server",
         "each process connects (or is refused) at least once as client-<i>; else "
         "nothing can be graded"),
    Rule("no_retry", "never retry a never-retry code",
         "codes whose guidance is never / never on this connection: the op is not repeated"),
    Rule("unsubscribe_first", "unsubscribe before subscribing again",
         "channel_limit_exceeded: no subscribe until an unsubscribe frees a slot"),
    Rule("dont_loop", "retry once, don't loop",
         f"peer_not_found: fewer than {FAIL_AT} repeats within {LOOP_WINDOW_S:g} s"),
    Rule("wait_for_period", "wait for the quota period",
         f"over_message_quota: at most one probe per {QUOTA_PROBE_S:g} s until it passes"),
    Rule("backoff_on_error", "back off before retrying",
         f"backend_error / internal_error: the op is not repeated within "
         f"{MIN_BACKOFF_S * 1000:g} ms"),
    Rule("respect_retry_after", "reconnect after going_away.retryAfterMs",
         "1001: the next connection attempt comes no sooner than retryAfterMs"),
    Rule("fresh_token", "fetch a fresh token after 4002",
         "4002: a token fetch before the next connection attempt"),
    Rule("concurrency_floor", "wait out the 4010 floor",
         f"4010: no connection attempt for {RECONNECT_WAIT_FLOOR_S:g} s"),
    Rule("reconnect_backoff", "back off before reconnecting",
         f"1006 / 1011 / 4011: the next attempt no sooner than {MIN_RECONNECT_S * 1000:g} ms"),
    Rule("come_back_lighter", "a slow consumer comes back lighter",
         f"1008 (slow consumer): the next attempt no sooner than {MIN_RECONNECT_S * 1000:g} "
         "ms, and the connection it opens is not closed 1008 again"),
    Rule("stay_away", "terminal closes are terminal",
         "4001 / 4003 / 4012 / 4020: no reconnect"),
    Rule("jitter", "spread reconnects (jitter)",
         f"a close that hit {MIN_HERD}+ clients at once: their reconnect delays spread "
         f"by more than {NO_JITTER_STD_S * 1000:g} ms (std)"),
    Rule("resubscribe", "re-subscribe after reconnecting",
         f"a client that had subscriptions subscribes again within {RESUBSCRIBE_S:g} s "
         "of reconnecting"),
)}

# Which rule grades an error code, by its guidance (server.codes.Retry).
ERROR_RULE: dict[Retry, str] = {
    Retry.NEVER: "no_retry",
    Retry.NEVER_ON_CONNECTION: "no_retry",
    Retry.AFTER_UNSUBSCRIBE: "unsubscribe_first",
    Retry.ONCE_AFTER_DELAY: "dont_loop",
    Retry.AFTER_PERIOD: "wait_for_period",
    Retry.BACKOFF: "backoff_on_error",
}
# Which rule grades the reconnect after a close code; INSPECT and NEVER (1009: fix the
# payload, then reconnecting is fine) have none.
CLOSE_RULE: dict[Retry, str] = {
    Retry.RECONNECT_AFTER_HINT: "respect_retry_after",
    Retry.RECONNECT_NEW_TOKEN: "fresh_token",
    Retry.RECONNECT_AFTER_WAIT: "concurrency_floor",
    Retry.RECONNECT_THROTTLED: "reconnect_backoff",
    Retry.BACKOFF: "reconnect_backoff",
    Retry.TERMINAL: "stay_away",
    Retry.RECONNECT_LIGHTER: "come_back_lighter",
}
# Closes after which the client is expected back: graded for jitter and resubscribe.
COME_BACK = frozenset({Retry.RECONNECT_AFTER_HINT, Retry.RECONNECT_NEW_TOKEN,
                       Retry.RECONNECT_AFTER_WAIT, Retry.RECONNECT_THROTTLED, Retry.BACKOFF,
                       Retry.RECONNECT_LIGHTER})


def close_retry(code: int) -> Retry | None:
    entry = CLOSE_CODES.get(code)
    if entry is not None:
        return entry.retry
    return Retry.BACKOFF if code == ABNORMAL else None


def close_name(code: int) -> str:
    entry = CLOSE_CODES.get(code)
    return entry.name if entry else ("abnormal_closure" if code == ABNORMAL else "unknown")


class Findings:
    """Incidents and violations per rule and per client."""

    def __init__(self) -> None:
        self.incidents: dict[str, int] = defaultdict(int)
        self.violations: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.warnings: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def saw(self, rule: str, n: int = 1) -> None:
        self.incidents[rule] += n

    def violate(self, rule: str, client: str, ts: float, text: str, *, warn: bool = False
                ) -> None:
        (self.warnings if warn else self.violations)[rule].append(
            {"client": client, "ts": round(float(ts), 3), "text": text})


# -- loading -------------------------------------------------------------------------------

def client_events(run: Run) -> pd.DataFrame:
    """The server events of the graded clients: `client` = the peerId (client-<i>)."""
    srv = run.server
    if not len(srv):
        return srv.assign(client=pd.Series(dtype=object))
    peer = srv.peer.fillna("").astype(str)
    ev = srv[peer.str.fullmatch(r"client-\d+")].copy()
    ev["client"] = ev.peer.astype(str)
    return ev


def token_fetches(run: Run) -> pd.DataFrame:
    rows = rundir.read_jsonl(run.dir, rundir.CLIENT_TOKENS)
    df = pd.DataFrame(rows, columns=["t", "client", "peer", "expiresAt", "initial"])
    df["ts"] = df.t.astype(float) - run.origin
    return df


def _deploy_hints(run: Run) -> list[tuple[float, int]]:
    return [(float(f["start_s"]), int(f.get("retry_after_ms", DEFAULT_RETRY_AFTER_MS)))
            for f in run.faults if f.get("kind") == "deploy"]


def _hint_for(ts: float, hints: list[tuple[float, int]]) -> int:
    """retryAfterMs of the deploy that closed at `ts` (the event log does not carry it)."""
    near = [(abs(ts - at), ms) for at, ms in hints if -0.5 <= ts - at <= 2.0]
    return min(near)[1] if near else DEFAULT_RETRY_AFTER_MS


# -- error rules -------------------------------------------------------------------------

def _requests(ev: pd.DataFrame) -> pd.DataFrame:
    r = ev[ev.event.isin(["ok", "error"]) & ev.op.notna()].copy()
    r["op"] = r.op.astype(str)
    r["code"] = r.code.where(r.event == "error", None)
    return r


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _durations(a: float, b: float) -> str:
    if b < 1:
        return f"{a * 1000:.0f}-{b * 1000:.0f} ms"
    return f"{_duration(a)}-{_duration(b)}"


def _span(a: float, b: float) -> str:
    return f"{a:.1f}-{b:.1f} s" if f"{a:.1f}" != f"{b:.1f}" else f"at {a:.1f} s"


@dataclass(frozen=True)
class ErrorAnswers:
    """The answers of one error code one client got on one op, and what came next."""

    client: str
    op: str
    code: str
    retry: Retry
    ts: np.ndarray  # scenario time of each answer
    delays: list[float]  # from each answer to the client's next request of the op (NaN: none)
    conns: np.ndarray  # the connection each answer came on


def _check_no_retry(a: ErrorAnswers, f: Findings) -> None:
    if a.retry is Retry.NEVER_ON_CONNECTION:
        repeats = int((pd.Series(a.conns).value_counts() - 1).clip(lower=0).sum())
    else:
        repeats = len(a.ts) - 1
    if repeats > 0:
        f.violate("no_retry", a.client, a.ts[0],
                  f"retried {a.code} {_times(repeats)} in {_duration(a.ts[-1] - a.ts[0])} "
                  f"({a.op}, {_span(a.ts[0], a.ts[-1])})")


def _check_unsubscribe_first(a: ErrorAnswers, f: Findings) -> None:
    if len(a.ts) > 1:  # an unsubscribe in between frees a slot: not graded here
        f.violate("unsubscribe_first", a.client, a.ts[0],
                  f"subscribed again {len(a.ts) - 1} times after {a.code} "
                  f"({_span(a.ts[0], a.ts[-1])})")


def _check_dont_loop(a: ErrorAnswers, f: Findings) -> None:
    loops = int((np.diff(a.ts) < LOOP_WINDOW_S).sum())
    if loops >= FAIL_AT - 1:
        f.violate("dont_loop", a.client, a.ts[0],
                  f"looped on {a.code}: {loops + 1} answers within {LOOP_WINDOW_S:g} s of "
                  f"each other ({_span(a.ts[0], a.ts[-1])})")


def _fast_retries(a: ErrorAnswers, limit_s: float) -> list[tuple[float, float]]:
    """(answer time, delay) of the answers the client followed up sooner than `limit_s`."""
    return [(t, d) for t, d in zip(a.ts, a.delays, strict=True)
            if not math.isnan(d) and d < limit_s]


def _flag_fast(a: ErrorAnswers, f: Findings, rule: str, fast: list[tuple[float, float]],
               what: str) -> None:
    """A warning from WARN_AT fast retries, a violation from FAIL_AT."""
    if len(fast) >= WARN_AT:
        median_ms = np.median([d for _, d in fast]) * 1000
        f.violate(rule, a.client, fast[0][0],
                  f"{what} (median {median_ms:.0f} ms; {_span(fast[0][0], fast[-1][0])})",
                  warn=len(fast) < FAIL_AT)


def _check_wait_for_period(a: ErrorAnswers, f: Findings) -> None:
    fast = _fast_retries(a, QUOTA_PROBE_S)
    _flag_fast(a, f, "wait_for_period", fast, f"tried {a.op} {_times(len(fast))} less than "
               f"{QUOTA_PROBE_S:g} s after {a.code}")


def _check_backoff_on_error(a: ErrorAnswers, f: Findings) -> None:
    fast = _fast_retries(a, MIN_BACKOFF_S)
    _flag_fast(a, f, "backoff_on_error", fast, f"retried {a.op} {_times(len(fast))} within "
               f"{MIN_BACKOFF_S * 1000:g} ms of {a.code}")


# How each error rule judges a client's answers (the rule comes from ERROR_RULE).
ERROR_CHECKS: dict[str, Callable[[ErrorAnswers, Findings], None]] = {
    "no_retry": _check_no_retry,
    "unsubscribe_first": _check_unsubscribe_first,
    "dont_loop": _check_dont_loop,
    "wait_for_period": _check_wait_for_period,
    "backoff_on_error": _check_backoff_on_error,
}


def grade_errors(ev: pd.DataFrame, f: Findings) -> dict[str, dict[str, Any]]:
    """Per client: the error codes received and what followed. Fills `f`."""
    per_client: dict[str, dict[str, Any]] = defaultdict(dict)
    for (client, op), g in _requests(ev).groupby(["client", "op"], sort=True):
        g = g.sort_values("ts", kind="stable")
        ts = g.ts.to_numpy(float)
        codes = g.code.to_numpy(object)
        events = g.event.to_numpy(object)
        for code, delays in _delays_by_code(ts, codes, events).items():
            _count_answers(per_client[client], code, delays)
            entry = ERROR_CODES.get(code)
            rule = ERROR_RULE.get(entry.retry) if entry is not None else None
            if rule is None:
                continue
            f.saw(rule, len(delays))
            mask = (events == "error") & (codes == code)
            ERROR_CHECKS[rule](ErrorAnswers(client, op, code, entry.retry, ts[mask], delays,
                                            g.conn.to_numpy()[mask]), f)
    for codes_ in per_client.values():
        for stats in codes_.values():
            d = stats.pop("delays_ms")
            stats["median_delay_ms"] = float(np.median(d)) if d else None
            stats["min_delay_ms"] = float(min(d)) if d else None
    return per_client


def _delays_by_code(ts: np.ndarray, codes: np.ndarray, events: np.ndarray
                    ) -> dict[str, list[float]]:
    """Per error code: from each answer to the next request of the op (NaN: none)."""
    by_code: dict[str, list[float]] = defaultdict(list)
    for i, code in enumerate(codes):
        if events[i] != "error" or code is None:
            continue
        by_code[str(code)].append(ts[i + 1] - ts[i] if i + 1 < len(ts) else math.nan)
    return by_code


def _count_answers(codes: dict[str, Any], code: str, delays: list[float]) -> None:
    stats = codes.setdefault(code, {"received": 0, "retried": 0, "delays_ms": []})
    stats["received"] += len(delays)
    done = [d for d in delays if not math.isnan(d)]
    stats["retried"] += len(done)
    stats["delays_ms"] += [round(d * 1000, 1) for d in done]


# -- close rules --------------------------------------------------------------------------

def reconnects(ev: pd.DataFrame, hints: list[tuple[float, int]]) -> pd.DataFrame:
    """One row per close (or refused connect) of a client, with what it did next.

    Columns: client, conn, code, name, retry, close_ts, next_ts (NaN: never came
    back), delay_s, next_event (connect/reject), next_conn, hint_ms (1001 only).
    """
    cols = ["client", "conn", "code", "name", "retry", "close_ts", "next_ts", "delay_s",
            "next_event", "next_conn", "hint_ms"]
    ends = ev[ev.event.isin(["close", "reject"])]
    attempts = ev[ev.event.isin(["connect", "reject"])].sort_values("ts", kind="stable")
    rows = []
    by_client = {c: (g.ts.to_numpy(float), g.event.to_numpy(object), g.conn.to_numpy())
                 for c, g in attempts.groupby("client")}
    for e in ends.sort_values("ts", kind="stable").itertuples(index=False):
        code = int(e.code)
        ts, kinds, conns = by_client.get(e.client, (np.array([]), None, None))
        i = int(np.searchsorted(ts, e.ts, side="right"))  # the first attempt after the close
        if i < len(ts):
            next_ts, nev, nconn = float(ts[i]), str(kinds[i]), int(conns[i])
        else:
            next_ts, nev, nconn = math.nan, "", -1
        retry = close_retry(code)
        rows.append({"client": e.client, "conn": int(e.conn), "code": code,
                     "name": close_name(code), "retry": str(retry) if retry else "",
                     "close_ts": float(e.ts), "next_ts": next_ts,
                     "delay_s": next_ts - float(e.ts), "next_event": nev, "next_conn": nconn,
                     "hint_ms": (_hint_for(float(e.ts), hints)
                                 if code == CloseCode.GOING_AWAY else None)})
    return pd.DataFrame(rows, columns=cols)


@dataclass(frozen=True)
class CloseSeen:
    """One close of a client (a row of `reconnects`) and what the close rules need."""

    r: pd.Series  # the reconnects row
    tokens: pd.DataFrame  # token fetches (token_fetches)
    closed_slow: frozenset[tuple[str, int]]  # (client, conn) closed 1008

    @property
    def back(self) -> bool:
        return not math.isnan(self.r.next_ts)

    @property
    def what(self) -> str:
        return f"{self.r.code} ({self.r['name']}) at {self.r.close_ts:.1f} s"

    @property
    def after(self) -> str:
        return f"reconnected {_duration(self.r.delay_s)} after {self.what}" if self.back else ""


# A check returns (violation text, is it only a warning), or None when the client did right.
CloseVerdict = tuple[str, bool] | None


def _check_stay_away(c: CloseSeen) -> CloseVerdict:
    return (f"{c.after}: terminal", False) if c.back else None


def _check_respect_retry_after(c: CloseSeen) -> CloseVerdict:
    if not c.back:
        return f"did not come back after {c.what}", True
    if c.r.delay_s + HINT_TOLERANCE_S < c.r.hint_ms / 1000:
        return f"{c.after}, before retryAfterMs={int(c.r.hint_ms)}", False
    return None


def _check_concurrency_floor(c: CloseSeen) -> CloseVerdict:
    if c.back and c.r.delay_s < RECONNECT_WAIT_FLOOR_S:
        return f"{c.after}, before the {RECONNECT_WAIT_FLOOR_S:g} s floor", False
    return None


def _check_reconnect_backoff(c: CloseSeen) -> CloseVerdict:
    return (f"{c.after}: no backoff", False) if c.back and c.r.delay_s < MIN_RECONNECT_S else None


def _check_come_back_lighter(c: CloseSeen) -> CloseVerdict:
    if not c.back:
        return None
    if c.r.delay_s < MIN_RECONNECT_S:
        return f"{c.after}: no backoff", False
    if (c.r.client, c.r.next_conn) in c.closed_slow:
        return f"{c.after}, and was closed 1008 again: read faster or subscribe to less", False
    return None


def _check_fresh_token(c: CloseSeen) -> CloseVerdict:
    t = c.tokens
    mine = t[(t.peer == c.r.client) & (t.ts > c.r.close_ts) & ~t.initial.astype(bool)]
    until = c.r.next_ts if c.back else math.inf
    if (mine.ts <= until + HINT_TOLERANCE_S).any():
        return None
    tail = f"reconnected {_duration(c.r.delay_s)} later" if c.back else "never connected again"
    return f"no fresh token fetched after {c.what}; {tail}", False


# How each close rule judges what a client did after the close (the rule: CLOSE_RULE).
CLOSE_CHECKS: dict[str, Callable[[CloseSeen], CloseVerdict]] = {
    "stay_away": _check_stay_away,
    "respect_retry_after": _check_respect_retry_after,
    "concurrency_floor": _check_concurrency_floor,
    "reconnect_backoff": _check_reconnect_backoff,
    "come_back_lighter": _check_come_back_lighter,
    "fresh_token": _check_fresh_token,
}


def grade_closes(ev: pd.DataFrame, rc: pd.DataFrame, tokens: pd.DataFrame,
                 f: Findings) -> None:
    """Reconnect rules per close; one violation per (rule, client, code) with a count."""
    found: dict[tuple[str, str, int, bool], list[tuple[float, float, str]]] = defaultdict(list)
    slow = rc.code == SLOW_CONSUMER
    closed_slow = frozenset(zip(rc.client[slow], rc.conn[slow], strict=True))
    for _, r in rc.iterrows():
        retry = close_retry(int(r.code))
        rule = CLOSE_RULE.get(retry) if retry else None
        if rule is None:
            continue
        f.saw(rule)
        verdict = CLOSE_CHECKS[rule](CloseSeen(r, tokens, closed_slow))
        if verdict is not None:
            text, warn = verdict
            found[(rule, r.client, int(r.code), warn)].append((r.close_ts, r.delay_s, text))
    for (rule, client, _code, warn), items in found.items():
        first_ts, _, text = items[0]
        if len(items) > 1:
            delays = [d for _, d, _ in items if not math.isnan(d)]
            each = f"; {_durations(min(delays), max(delays))} after each" if delays else ""
            text += f" ({len(items)} times, {_span(first_ts, items[-1][0])}{each})"
        f.violate(rule, client, first_ts, text, warn=warn)


def grade_jitter(rc: pd.DataFrame, f: Findings) -> list[dict[str, Any]]:
    """Mass closes (one code, many clients within GROUP_WINDOW_S): are reconnects spread?

    Returns the groups, for the herd charts.
    """
    groups: list[dict[str, Any]] = []
    come_back = rc[rc.retry.isin([str(r) for r in COME_BACK])]
    for code, g in come_back.groupby("code"):
        g = g.sort_values("close_ts", kind="stable")
        start, members = None, []
        for _, r in g.iterrows():
            if start is None or r.close_ts - start > GROUP_WINDOW_S:
                if members:
                    groups.append(_group(int(code), members))
                start, members = r.close_ts, []
            if all(m.client != r.client for m in members):  # a client's first close only
                members.append(r)
        if members:
            groups.append(_group(int(code), members))
    for grp in groups:
        back = [m for m in grp["members"] if m["delay_s"] is not None]
        if len(grp["members"]) < MIN_HERD or len(back) < MIN_HERD:
            continue
        f.saw("jitter")
        delays = np.array([m["delay_s"] for m in back])
        times = np.sort(np.array([m["next_ts"] for m in back]))
        herd = int(max(np.searchsorted(times, times + HERD_WINDOW_S, side="right")
                       - np.arange(len(times))))
        grp.update(herd=herd, spread_ms=round(float(np.ptp(delays)) * 1000, 1),
                   std_ms=round(float(np.std(delays)) * 1000, 1))
        if np.std(delays) < NO_JITTER_STD_S:
            text = (f"reconnected {np.median(delays) * 1000:.0f} ms after {grp['code']} "
                    f"({grp['name']}) at {grp['ts']:.1f} s with no jitter: {herd} clients "
                    f"within {HERD_WINDOW_S * 1000:g} ms (std {np.std(delays) * 1000:.1f} ms)")
            for m in back:
                f.violate("jitter", m["client"], grp["ts"], text)
    return groups


def _group(code: int, members: list[pd.Series]) -> dict[str, Any]:
    return {"code": code, "name": close_name(code), "ts": round(float(members[0].close_ts), 3),
            "members": [{"client": m.client, "close_ts": round(float(m.close_ts), 3),
                         "delay_s": None if math.isnan(m.delay_s) else round(float(m.delay_s), 4),
                         "next_ts": None if math.isnan(m.next_ts) else round(float(m.next_ts), 4)}
                        for m in members]}


def grade_resubscribe(ev: pd.DataFrame, rc: pd.DataFrame, f: Findings) -> None:
    """After a reconnect, a client that had subscriptions subscribes again."""
    subs = ev[(ev.op == "subscribe") & ev.event.isin(["ok", "error"])]
    ok_subs = subs[subs.event == "ok"]
    ends = ev[ev.event.isin(["close", "disconnect"])].groupby("conn").ts.max()
    for _, r in rc[(rc.next_event == "connect")].iterrows():
        had = ok_subs[(ok_subs.client == r.client) & (ok_subs.ts < r.close_ts)]
        if not len(had):
            continue
        f.saw("resubscribe")
        new = subs[subs.conn == r.next_conn]
        end = float(ends.get(r.next_conn, math.inf))
        window = min(r.next_ts + RESUBSCRIBE_S, end)
        if not len(new[new.ts <= window]):
            f.violate("resubscribe", r.client, r.next_ts,
                      f"did not re-subscribe after reconnecting at {r.next_ts:.1f} s "
                      f"(after {r.code} {r['name']})")


# -- the whole grade -----------------------------------------------------------------------

def _grade(violations: int, warnings: int) -> str:
    return "fail" if violations else ("warn" if warnings else "pass")


WORST = {"n/a": 0, "pass": 1, "warn": 2, "fail": 3}


def grade_run(run_dir: str | Path) -> dict[str, Any]:
    """The whole grade of a `rtmsim clients` run directory (what clients.json holds)."""
    run = load_run(run_dir)
    ev = client_events(run)
    tokens = token_fetches(run)
    procs = {p["peer"]: p for p in rundir.read_json(run.dir, rundir.CLIENT_PROCS, []) or []}
    f = Findings()
    per_client_errors = grade_errors(ev, f)
    rc = reconnects(ev, _deploy_hints(run))
    grade_closes(ev, rc, tokens, f)
    groups = grade_jitter(rc, f)
    grade_resubscribe(ev, rc, f)
    for name, proc in procs.items():
        f.saw("connected")
        if not ((ev.client == name) & ev.event.isin(["connect", "reject"])).any():
            f.violate("connected", name, 0.0,
                      f"never reached the server as {name} (see "
                      f"{rundir.client_log(proc['index'], 'err')})")

    rules = {}
    for rid, rule in RULES.items():
        v, w = f.violations.get(rid, []), f.warnings.get(rid, [])
        n = f.incidents.get(rid, 0)
        rules[rid] = {"title": rule.title, "what": rule.what, "incidents": n,
                      "grade": _grade(len(v), len(w)) if n else "n/a",
                      "violations": sorted(v, key=lambda x: (x["ts"], x["client"])),
                      "warnings": sorted(w, key=lambda x: (x["ts"], x["client"])),
                      "clients_failing": sorted({x["client"] for x in v}, key=_client_key)}
    names = sorted(set(procs) | set(ev.client.unique()), key=_client_key)
    clients = [_client_row(name, procs.get(name, {}), ev, rc, tokens, per_client_errors, f)
               for name in names]
    overall = max((r["grade"] for r in rules.values()), key=WORST.__getitem__, default="n/a")
    unattributed = run.server[(run.server.event == "reject") & run.server.peer.isna()]
    return {
        "run_dir": str(run.dir), "scenario": run.meta.get("name"),
        "command": (run.meta.get("clients") or {}).get("command"),
        "count": (run.meta.get("clients") or {}).get("count"),
        "grade": "pass" if overall == "n/a" else overall,
        "rules": rules, "clients": clients,
        "reconnect_groups": groups,
        "reconnects": [_jsonable(r) for r in rc.to_dict("records")],
        "unattributed_rejects": {str(int(k)): int(v) for k, v in
                                 unattributed.code.value_counts().sort_index().items()},
        "thresholds": THRESHOLDS,
        "faults": run.faults,
    }


def _client_key(name: str) -> tuple[int, str]:
    tail = name.rsplit("-", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (1 << 30, name)


def _client_row(name: str, proc: dict[str, Any], ev: pd.DataFrame, rc: pd.DataFrame,
                tokens: pd.DataFrame, errors: dict[str, dict[str, Any]],
                f: Findings) -> dict[str, Any]:
    mine = ev[ev.client == name]
    closes = rc[rc.client == name]
    by_rule = {}
    for rid in RULES:
        v = [x for x in f.violations.get(rid, []) if x["client"] == name]
        w = [x for x in f.warnings.get(rid, []) if x["client"] == name]
        if v or w:
            by_rule[rid] = _grade(len(v), len(w))
    close_stats: dict[str, dict[str, Any]] = {}
    for code, g in closes.groupby("code"):
        d = g.delay_s.dropna() * 1000
        close_stats[str(int(code))] = {
            "received": len(g), "came_back": int(g.next_ts.notna().sum()),
            "median_delay_ms": round(float(d.median()), 1) if len(d) else None,
            "min_delay_ms": round(float(d.min()), 1) if len(d) else None}
    violations = [x for rid in RULES for x in f.violations.get(rid, []) if x["client"] == name]
    warnings = [x for rid in RULES for x in f.warnings.get(rid, []) if x["client"] == name]
    grade = max(by_rule.values(), key=WORST.__getitem__, default="pass")
    return {
        "client": name, "index": proc.get("index"), "pid": proc.get("pid"),
        "exit_code": proc.get("rc"),
        "connections": int((mine.event == "connect").sum()),
        "rejected": int((mine.event == "reject").sum()),
        "requests_ok": int((mine.event == "ok").sum()),
        "token_fetches": int(((tokens.peer == name) & ~tokens.initial.astype(bool)).sum()),
        "errors": errors.get(name, {}), "closes": close_stats, "rules": by_rule,
        "grade": grade,
        "violations": [x["text"] for x in sorted(violations, key=lambda x: x["ts"])],
        "warnings": [x["text"] for x in sorted(warnings, key=lambda x: x["ts"])],
    }


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and math.isnan(v):
            v = None
        elif isinstance(v, np.integer):
            v = int(v)
        elif isinstance(v, np.floating):
            v = float(v)
        out[k] = v
    return out


def print_grades(grades: dict[str, Any], out: TextIO) -> None:
    """The aggregate grade per rule, then each client's violations (a few each)."""
    print(f"\nclient grade: {grades['grade'].upper()}  ({grades.get('count')} x "
          f"`{grades.get('command')}`)", file=out)
    for rid, r in grades["rules"].items():
        if r["grade"] == "n/a":
            continue
        bad = len(r["clients_failing"])
        tail = f"  {bad} client(s) failing" if bad else ""
        print(f"  {r['grade']:5} {rid:20} {r['incidents']:5d} incidents{tail}", file=out)
    for c in grades["clients"]:
        if not c["violations"] and not c["warnings"]:
            continue
        print(f"  {c['client']} ({c['grade']}):", file=out)
        for text in c["violations"][:5]:
            print(f"    - {text}", file=out)
        if len(c["violations"]) > 5:
            print(f"    ... {len(c['violations']) - 5} more", file=out)
        for text in c["warnings"][:2]:
            print(f"    ~ {text}", file=out)
    out.flush()
