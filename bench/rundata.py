"""A synthetic run directory with the mix of a real default run, at any size.

Proportions come from `rtmsim run scenarios/default.toml` (60 users, 104,495 client
events in 20 s): 96.5 % deliveries (36 subscribers per channel group, three channels
each, a third through a wildcard), 2.8 % publishes (2 % answered backend_error and
retried), direct sends with their deliveries, connects and subscribes, a misbehaving
client's error codes and 1009 closes, a deploy (close 1001 + reconnect) of a fifth of
the subscribers, a disconnect per user at the end. Users come in groups of 62 (one
group per million events, one Locust process each), so N events is a ~3-minute run
of N / 1 M x 62 users. The server side (event log, final stats, a per-second timeline)
is derived from the client rows, so the run reconciles: client and server agree and
no delivery is lost.

Everything is vectorised (numpy); one group is in memory at a time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from loadtests.eventlog import COLUMNS, FLUSH_ROWS, SCHEMA, log_dir, write_batch

EVENTS_PER_GROUP = 1_000_000
SUBSCRIBERS, WILDCARD, PUBLISHERS, SENDERS, MISBEHAVING = 36, 12, 18, 6, 2
CHANNELS = 3
ERROR_P = 0.02  # backend_error on publish
SENDS_PER_PUBLISH = 0.078
DEPLOY_FRACTION = 0.2
ORIGIN = 1_796_000_000.0
BAD_OPS = (("reserved_channel", "channel_reserved", "publish"),
           ("missing_data", "missing_data", "publish"),
           ("invalid_channel", "invalid_channel", "subscribe"),
           ("invalid_json", "malformed_message", None),
           ("unknown_type", "unknown_type", None),
           ("missing_type", "malformed_message", None),
           ("oversize_frame", "close 1009", None))


def _frame(n: int, **cols: Any) -> pd.DataFrame:
    """A client-event frame of n rows: given columns, defaults for the rest."""
    defaults = {"latency_ms": np.nan, "attempt": 1, "bytes": 0, "channel": "", "msg_id": "",
                "peer": "", "intended_t": np.nan, "policy": "default"}
    data = {c: cols.get(c, defaults.get(c)) for c in COLUMNS}
    return pd.DataFrame({c: (np.full(n, v, dtype=object) if isinstance(v, str) else
                             np.full(n, v) if np.isscalar(v) else v)
                         for c, v in data.items()})


def group_events(g: int, n: int, duration: float, rng: np.random.Generator) -> pd.DataFrame:
    """About n client events of user group g over `duration` seconds (unix times)."""
    t0 = ORIGIN
    chans = np.array([f"room/{g}/{k + 1}" for k in range(CHANNELS)], dtype=object)
    subs = np.array([f"Subscriber-{g}-{i}" for i in range(SUBSCRIBERS)], dtype=object)
    pubs = np.array([f"Publisher-{g}-{i}" for i in range(PUBLISHERS)], dtype=object)
    senders = np.array([f"DirectSender-{g}-{i}" for i in range(SENDERS)], dtype=object)
    bad = np.array([f"Misbehaving-{g}-{i}" for i in range(MISBEHAVING)], dtype=object)
    per_pub = 1 + ERROR_P + SUBSCRIBERS + 2 * SENDS_PER_PUBLISH
    n_pub = max(1, int((n - 300 - duration) / per_pub))
    frames = []
    users = np.concatenate([subs, pubs, senders, bad])
    classes = np.array(["Subscriber"] * SUBSCRIBERS + ["Publisher"] * PUBLISHERS
                       + ["DirectSender"] * SENDERS + ["Misbehaving"] * MISBEHAVING,
                       dtype=object)
    start = t0 + rng.uniform(0.05, 1.0, len(users))
    frames.append(_frame(len(users), t=start, user=users, user_class=classes, op="connect",
                         outcome="ok", latency_ms=rng.uniform(8, 25, len(users)),
                         peer=np.array([f"peer-{g}-{u}" for u in users], dtype=object)))
    # Subscriptions: explicit subscribers take the three channels, the rest `room/g/*`.
    explicit = SUBSCRIBERS - WILDCARD
    sub_user = np.concatenate([np.repeat(subs[:explicit], CHANNELS), subs[explicit:]])
    sub_name = np.concatenate([np.tile(chans, explicit),
                               np.full(WILDCARD, f"room/{g}/*", dtype=object)])
    sub_t = np.concatenate([np.repeat(start[:explicit], CHANNELS), start[explicit:SUBSCRIBERS]]
                           ) + 0.02 + rng.uniform(0, 0.3, len(sub_user))
    frames.append(_frame(len(sub_user), t=sub_t, user=sub_user, user_class="Subscriber",
                         op="subscribe", outcome="ok", latency_ms=rng.uniform(1, 9, len(sub_t)),
                         bytes=75, channel=sub_name))
    # The deploy: a fifth of the subscribers closed 1001, back 1-2 s later.
    t_deploy = t0 + 0.4 * duration
    hit = rng.choice(SUBSCRIBERS, max(1, int(DEPLOY_FRACTION * SUBSCRIBERS)), replace=False)
    back = t_deploy + rng.uniform(1.0, 2.0, len(hit))
    frames.append(_frame(len(hit), t=np.full(len(hit), t_deploy) + rng.uniform(0, .01, len(hit)),
                         user=subs[hit], user_class="Subscriber", op="close",
                         outcome="close 1001"))
    frames.append(_frame(len(hit), t=back, user=subs[hit], user_class="Subscriber",
                         op="connect", outcome="ok", latency_ms=rng.uniform(8, 25, len(hit)),
                         peer=np.array([f"peer-{g}-{u}-2" for u in subs[hit]], dtype=object)))
    resub = np.zeros(SUBSCRIBERS)  # when each hit subscriber is subscribed again
    for i, b in zip(hit, back, strict=True):
        names = chans if i < explicit else np.array([f"room/{g}/*"], dtype=object)
        ts = b + 0.02 + rng.uniform(0, 0.05, len(names))
        resub[i] = ts.max()
        frames.append(_frame(len(names), t=ts, user=np.full(len(names), subs[i], dtype=object),
                             user_class="Subscriber", op="subscribe", outcome="ok",
                             latency_ms=rng.uniform(1, 9, len(names)), bytes=75,
                             channel=names))
    # Publishes: sent uniformly over [2 s, duration - 2 s], acked 1-4 ms later (+20 ms
    # on a tenth); 2 % first answered backend_error and retried 50 ms later.
    sent = np.sort(t0 + rng.uniform(2.0, duration - 2.0, n_pub))
    who = rng.integers(0, PUBLISHERS, n_pub)
    seq = pd.Series(np.ones(n_pub, dtype=np.int64)).groupby(who).cumsum().to_numpy()
    msg = pd.Series(pubs[who]).str.cat(pd.Series(seq).astype(str), sep=":").to_numpy(object)
    chan = rng.integers(0, CHANNELS, n_pub)
    failed = rng.random(n_pub) < ERROR_P
    ack_lat = rng.lognormal(math.log(2.0), 0.4, n_pub) + 20.0 * (rng.random(n_pub) < 0.1)
    ok_sent = sent + 0.05 * failed
    frames.append(_frame(int(failed.sum()), t=sent[failed] + 0.001, user=pubs[who[failed]],
                         user_class="Publisher", op="publish", outcome="backend_error",
                         latency_ms=np.full(int(failed.sum()), 1.0), bytes=254,
                         channel=chans[chan[failed]], msg_id=msg[failed]))
    frames.append(_frame(n_pub, t=ok_sent + ack_lat / 1000, user=pubs[who],
                         user_class="Publisher", op="publish", outcome="ok",
                         latency_ms=ack_lat, attempt=1 + failed.astype(np.int64), bytes=254,
                         channel=chans[chan], msg_id=msg))
    # Deliveries: every subscriber of the channel, except a deployed one between its
    # close and its new subscription (not owed: the accounting excludes or skips them).
    p_idx = np.repeat(np.arange(n_pub), SUBSCRIBERS)
    s_idx = np.tile(np.arange(SUBSCRIBERS), n_pub)
    gone = np.zeros(len(p_idx), dtype=bool)
    for i in hit:
        mine = s_idx == i
        gone |= mine & (ok_sent[p_idx] >= t_deploy - 0.001) & (ok_sent[p_idx] <= resub[i])
    p_idx, s_idx = p_idx[~gone], s_idx[~gone]
    d_t = ok_sent[p_idx] + rng.lognormal(math.log(1.8), 0.35, len(p_idx)) / 1000
    d_lat = (d_t - ok_sent[p_idx]) * 1000  # as the client measures it: time.time() apart
    frames.append(_frame(len(p_idx), t=d_t, user=subs[s_idx],
                         user_class="Subscriber", op="deliver", outcome="message",
                         latency_ms=d_lat, bytes=254, channel=chans[chan[p_idx]],
                         msg_id=msg[p_idx], peer=pubs[who[p_idx]]))
    # Direct sends between the senders, and their deliveries.
    n_send = int(SENDS_PER_PUBLISH * n_pub)
    s_t = np.sort(t0 + rng.uniform(2.0, duration - 2.0, n_send))
    frm, to = rng.integers(0, SENDERS, n_send), rng.integers(0, SENDERS, n_send)
    sseq = pd.Series(np.ones(n_send, dtype=np.int64)).groupby(frm).cumsum().to_numpy()
    smsg = pd.Series(senders[frm]).str.cat(pd.Series(sseq).astype(str), sep=":").to_numpy(object)
    s_lat = rng.lognormal(math.log(1.5), 0.4, n_send)
    frames.append(_frame(n_send, t=s_t + s_lat / 1000, user=senders[frm],
                         user_class="DirectSender", op="send", outcome="ok", latency_ms=s_lat,
                         bytes=120, msg_id=smsg,
                         peer=np.array([f"peer-{g}-{u}" for u in senders[to]], dtype=object)))
    frames.append(_frame(n_send, t=s_t + s_lat / 2000, user=senders[to],
                         user_class="DirectSender", op="deliver", outcome="direct",
                         latency_ms=s_lat / 2, bytes=120, msg_id=smsg, peer=senders[frm]))
    # The misbehaving clients: one bad request every 3 s each, cycling through the kinds.
    b_t = t0 + np.arange(2.0, duration - 2.0, 3.0)
    k = np.arange(len(b_t)) % len(BAD_OPS)
    for i, u in enumerate(bad):
        ts = b_t + 0.1 * i
        ops = np.array([BAD_OPS[j][0] for j in k], dtype=object)
        outs = np.array([BAD_OPS[j][1] for j in k], dtype=object)
        frames.append(_frame(len(ts), t=ts, user=np.full(len(ts), u, dtype=object),
                             user_class="Misbehaving", op=ops, outcome=outs,
                             latency_ms=np.full(len(ts), 0.5)))
        big = ts[outs == "close 1009"]
        frames.append(_frame(len(big), t=big + 0.001, user=np.full(len(big), u, dtype=object),
                             user_class="Misbehaving", op="close", outcome="close 1009"))
        frames.append(_frame(len(big), t=big + 0.5, user=np.full(len(big), u, dtype=object),
                             user_class="Misbehaving", op="connect", outcome="ok",
                             latency_ms=np.full(len(big), 10.0),
                             peer=np.array([f"peer-{g}-{u}-{j}" for j in range(len(big))],
                                           dtype=object)))
    frames.append(_frame(len(users), t=t0 + duration + rng.uniform(0, 0.5, len(users)),
                         user=users, user_class=classes, op="disconnect", outcome="client"))
    df = pd.concat(frames, ignore_index=True)
    return df.sort_values("t", kind="stable").reset_index(drop=True)


def _server_events(df: pd.DataFrame) -> list[str]:
    """The server's JSON lines for one group's client rows (what it would have logged)."""
    out = []
    bad = {op: sop for op, _, sop in BAD_OPS}
    for t, user, op, outcome, peer in zip(df.t, df.user, df.op, df.outcome, df.peer,
                                          strict=True):
        if op == "deliver":
            continue
        rec: dict[str, Any] = {"t": round(t - 0.0005, 6), "app": "app_demo"}
        if op == "connect":
            rec.update(event="connect", peer=peer)
        elif op == "disconnect":
            rec.update(event="disconnect", code=1000)
        elif op == "close":
            rec.update(event="close", code=int(outcome[6:]))
        elif outcome.startswith("close "):
            continue  # the close row carries it
        elif outcome == "ok":
            rec.update(event="ok", op=op, requestId=user)
        else:
            rec.update(event="error", op=bad.get(op, op), code=outcome, requestId=user)
        out.append(json.dumps(rec))
    return out


class _Totals:
    """Per-second histograms of what the server counts, summed over groups."""

    def __init__(self, seconds: int) -> None:
        self.n = seconds
        self.bins: dict[str, np.ndarray] = {}

    def add(self, name: str, ts: np.ndarray) -> None:
        b = np.clip(np.floor(ts - ORIGIN).astype(np.int64), 0, self.n - 1)
        self.bins[name] = self.bins.get(name, np.zeros(self.n, np.int64)) + np.bincount(
            b, minlength=self.n)

    def cumulative(self, name: str) -> np.ndarray:
        return np.cumsum(self.bins.get(name, np.zeros(self.n, np.int64)))

    def count(self, df: pd.DataFrame) -> None:
        t = df.t.to_numpy()
        op, out = df.op.to_numpy(), df.outcome.to_numpy()
        is_ok = out == "ok"
        self.add("published", t[(op == "publish") & is_ok])
        self.add("sent", t[(op == "send") & is_ok])
        self.add("delivered", t[op == "deliver"])
        self.add("connects", t[(op == "connect") & is_ok])
        self.add("disconnects", t[(op == "disconnect") | (op == "close")])
        note = np.isin(op, ["deliver", "close", "disconnect", "connect"])
        err = ~note & ~is_ok & ~pd.Series(out).str.startswith("close ").to_numpy()
        for code in np.unique(out[err]):
            self.add(f"errors_{code}", t[err & (out == code)])
        for code in np.unique(out[op == "close"]):
            self.add(f"closes_{code[6:]}", t[(op == "close") & (out == code)])


def _stats(totals: _Totals, second: int) -> dict[str, Any]:
    """/sim/v1/stats as of the end of `second` (the last one: the final stats)."""
    def at(name: str) -> int:
        return int(totals.cumulative(name)[second])
    errors = {k[7:]: at(k) for k in sorted(totals.bins) if k.startswith("errors_") and at(k)}
    closes = {k[7:]: at(k) for k in sorted(totals.bins) if k.startswith("closes_") and at(k)}
    messages = {"published": at("published"), "sent": at("sent"), "delivered": at("delivered")}
    conns = {"now": at("connects") - at("disconnects"), "total": at("connects")}
    body = {"connections": conns, "errors": errors, "closes": closes, "messages": messages}
    return {"totals": body, "apps": {"app_demo": body},
            "process": {"cpu_s": 0.2 * second},
            "usage": {"app_demo": {"messagesUsed": messages["published"] + messages["sent"],
                                   "overageMessages": 0, "overageConnections": 0,
                                   "balance": 0.0, "concurrentNow": conns["now"],
                                   "peakConcurrent": conns["total"]}}}


def synthesise(run_dir: str | Path, events: int, fmt: str = "parquet", seed: int = 1,
               log: Any = None) -> dict[str, Any]:
    """Write a run directory of about `events` client events; returns what it holds."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    groups = max(1, round(events / EVENTS_PER_GROUP))
    per_group = events / groups
    duration = float(max(20, round(180 * min(1.0, events / EVENTS_PER_GROUP))))
    seconds = int(duration) + 2
    totals = _Totals(seconds)
    rng = np.random.default_rng(seed)
    written = client_bytes = 0
    deliveries = 0
    with (d / "server-events.jsonl").open("w", encoding="utf-8") as srv:
        for g in range(groups):
            df = group_events(g, int(per_group), duration, rng)
            written += len(df)
            deliveries += int((df.op == "deliver").sum())
            totals.count(df)
            srv.write("".join(line + "\n" for line in _server_events(df)))
            client_bytes += _write_client(d, f"synth-{g}", df, fmt)
            if log:
                log(f"group {g + 1}/{groups}: {written:,} client events")
    with (d / "server-timeline.jsonl").open("w", encoding="utf-8") as f:
        for s in range(seconds):
            f.write(json.dumps({"t": ORIGIN + s + 1, "instance": "i0",
                                "stats": _stats(totals, s)}) + "\n")
    (d / "server-stats.json").write_text(json.dumps({"i0": _stats(totals, seconds - 1)}))
    meta = {"name": "synthetic", "description": "bench analyze: a synthesised default run",
            "status": "complete", "duration_s": duration, "origin": ORIGIN,
            "started": ORIGIN - 1, "ended": ORIGIN + duration + 1, "instances": 1,
            "backend": "memory", "users": groups * (SUBSCRIBERS + PUBLISHERS + SENDERS
                                                      + MISBEHAVING),
            "workers": groups, "model": "closed", "shape": None, "seed": seed,
            "faults": [{"id": "f1", "kind": "error", "code": "backend_error",
                        "probability": ERROR_P, "ops": ["publish"], "start_s": 0.0,
                        "end_s": None},
                       {"id": "f2", "kind": "deploy", "at_s": 0.4 * duration,
                        "start_s": 0.4 * duration, "end_s": 0.4 * duration,
                        "fraction": DEPLOY_FRACTION, "retry_after_ms": 1000}]}
    (d / "run.json").write_text(json.dumps(meta, indent=2))
    return {"events": written, "deliveries": deliveries, "groups": groups,
            "duration_s": duration, "client_bytes": client_bytes}


def _write_client(d: Path, tag: str, df: pd.DataFrame, fmt: str) -> int:
    """One group's rows as one Locust process would have written them; bytes written."""
    if fmt == "csv":
        path = d / f"client-events-{tag}.csv"
        df.to_csv(path, index=False, na_rep="")
        return path.stat().st_size
    directory = log_dir(d, tag)
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, schema=SCHEMA, preserve_index=False)
    size = 0
    for seq, start in enumerate(range(0, len(df), FLUSH_ROWS), start=1):
        size += write_batch(directory, seq, table.slice(start, FLUSH_ROWS)).stat().st_size
    return size
