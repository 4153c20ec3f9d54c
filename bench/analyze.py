"""`bench analyze --events N`: how `rtmsim analyze` scales with the client event log.

Synthesises a run directory of N client events (`bench.rundata`: the mix of a real
default run), then runs `rtmsim analyze RUN_DIR` in a child process and reports its
wall time, its peak RSS (getrusage of the waited child) and the bytes on disk per
million events. `--candidates` instead times candidate engines (pandas over CSV,
DuckDB and Polars over Parquet) on the same data, each in its own process, for the
load and the heaviest aggregations the analysis does: per-code counts, latency
percentiles per op, and the delivery accounting's owed/received join.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .procs import ROOT, BenchError
from .rundata import synthesise

GOALS = {"events": 10_000_000, "wall_s": 30.0, "rss_mb": 2048.0,
         "mb_per_million_deliveries": 10.0}

# Each candidate: load the client log, count error codes, latency percentiles of ok
# requests per op, and the delivery join (owed pairs of every acked publish x matching
# subscription, against received pairs). Wildcards are matched in Python on the
# distinct (subscription, channel) pairs, as the analysis does.
_PREAMBLE = """
import sys, time, glob
t0 = time.time()
run = sys.argv[1]
from server.patterns import match_channel
def matches(names, channels):
    return [(n, c) for n in names for c in channels if n == c or match_channel(n, c)]
"""
CANDIDATES = {
    "pandas-csv": _PREAMBLE + """
from loadtests.accounting import load_client_events, delivery_report
df = load_client_events(run)
t_load = time.time() - t0
req = df[~df.op.isin(["deliver", "close", "disconnect", "give_up", "burst"])]
codes = req.outcome[req.outcome != "ok"].value_counts()
ok = req[(req.outcome == "ok") & req.latency_ms.notna()]
pct = ok.groupby("op").latency_ms.quantile([.5, .9, .99, .999])
rep = delivery_report(df)
print(t_load, rep.expected, rep.delivered)
""",
    "duckdb-parquet": _PREAMBLE + """
import duckdb
con = duckdb.connect()
con.execute("SET memory_limit='1500MB'")
con.execute(f"CREATE VIEW c AS SELECT * FROM read_parquet('{run}/client-events-*/*.parquet')")
t_load = time.time() - t0
con.execute("SELECT outcome, count(*) FROM c WHERE op NOT IN ('deliver','close','disconnect',"
            "'give_up','burst') AND outcome <> 'ok' GROUP BY 1").fetchall()
con.execute("SELECT op, quantile_cont(latency_ms, [0.5,0.9,0.99,0.999]) FROM c WHERE "
            "outcome = 'ok' AND op NOT IN ('deliver','close','disconnect','give_up','burst')"
            " AND latency_ms IS NOT NULL GROUP BY 1").fetchall()
names = [r[0] for r in con.execute("SELECT DISTINCT channel FROM c WHERE op='subscribe'"
                                   " AND outcome='ok'").fetchall()]
chans = [r[0] for r in con.execute("SELECT DISTINCT channel FROM c WHERE op='publish'"
                                   " AND outcome='ok'").fetchall()]
m = matches(names, chans)
con.execute("CREATE TABLE m(name VARCHAR, channel VARCHAR)")
con.executemany("INSERT INTO m VALUES (?, ?)", m)
# Subscription intervals simplified to (user, name, first ack) for the join's cost.
expected, delivered = con.execute('''
WITH p AS (SELECT msg_id, user AS publisher, channel,
                  coalesce(intended_t, t - coalesce(latency_ms, 0) / 1000) AS sent
           FROM c WHERE op = 'publish' AND outcome = 'ok' AND msg_id <> ''),
     s AS (SELECT user, channel AS name, min(t) AS start FROM c
           WHERE op = 'subscribe' AND outcome = 'ok' GROUP BY 1, 2),
     owed AS (SELECT DISTINCT p.msg_id, s.user FROM p JOIN m ON m.channel = p.channel
              JOIN s ON s.name = m.name WHERE s.user <> p.publisher AND s.start <= p.sent),
     got AS (SELECT DISTINCT msg_id, user FROM c WHERE op = 'deliver'
             AND outcome = 'message' AND msg_id <> '')
SELECT (SELECT count(*) FROM owed),
       (SELECT count(*) FROM owed JOIN got USING (msg_id, user))''').fetchone()
print(t_load, expected, delivered)
""",
    "polars-parquet": _PREAMBLE + """
import polars as pl
c = pl.scan_parquet(f"{run}/client-events-*/*.parquet")
t_load = time.time() - t0
notes = ["deliver", "close", "disconnect", "give_up", "burst"]
req = c.filter(~pl.col("op").is_in(notes))
req.filter(pl.col("outcome") != "ok").group_by("outcome").len().collect()
req.filter((pl.col("outcome") == "ok") & pl.col("latency_ms").is_not_null()).group_by(
    "op").agg([pl.col("latency_ms").quantile(q, "linear").alias(str(q))
               for q in (.5, .9, .99, .999)]).collect()
subs = c.filter((pl.col("op") == "subscribe") & (pl.col("outcome") == "ok")).group_by(
    ["user", "channel"]).agg(pl.col("t").min().alias("start")).rename(
    {"channel": "name"}).collect()
pubs = c.filter((pl.col("op") == "publish") & (pl.col("outcome") == "ok")
                & (pl.col("msg_id") != "")).select(
    "msg_id", pl.col("user").alias("publisher"), "channel",
    pl.coalesce("intended_t", pl.col("t") - pl.col("latency_ms").fill_null(0) / 1000
                ).alias("sent")).collect()
m = pl.DataFrame(matches(subs["name"].unique().to_list(), pubs["channel"].unique().to_list()),
                 schema=["name", "channel"], orient="row")
owed = (pubs.join(m, on="channel").join(subs, on="name")
        .filter((pl.col("user") != pl.col("publisher")) & (pl.col("start") <= pl.col("sent")))
        .select("msg_id", "user").unique())
got = c.filter((pl.col("op") == "deliver") & (pl.col("outcome") == "message")
               & (pl.col("msg_id") != "")).select("msg_id", "user").unique().collect(
    engine="streaming")
print(t_load, len(owed), len(owed.join(got, on=["msg_id", "user"])))
""",
}


_OWN_RSS = ("\nimport resource\nprint('rss_kb', "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")


def _child(args: list[str]) -> dict[str, Any]:
    """Run one child to completion: wall time, its peak RSS, its last stdout line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise BenchError(f"{' '.join(args[:4])} ... exited {proc.returncode}: {tail[0]}")
    # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: run the big one last,
    # or read it as "at most".
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(max(peak, before) / 1024, 1),
            "out": proc.stdout.strip().splitlines()[-1:]}


def _disk(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in run_dir.glob("client-events-*/*.parquet")) + sum(
        p.stat().st_size for p in run_dir.glob("client-events-*.csv"))


def analyze(events: int, candidates: bool = False, keep: Path | None = None,
            log: Any = print) -> dict[str, Any]:
    """Synthesise, then time `rtmsim analyze` (or the candidate engines) on it."""
    with tempfile.TemporaryDirectory(prefix="bench-analyze-") as tmp:
        root = keep or Path(tmp)
        out: dict[str, Any] = {"benchmark": "analyze", "events": events}
        fmts = ("parquet", "csv") if candidates else ("parquet",)
        dirs = {}
        for fmt in fmts:
            d = root / f"run-{fmt}"
            log(f"synthesising {events:,} client events as {fmt} in {d} ...")
            t = time.perf_counter()
            made = synthesise(d, events, fmt, log=log)
            dirs[fmt] = d
            out[f"{fmt}_bytes"] = size = _disk(d)
            out[f"{fmt}_mb_per_million_events"] = round(size / made["events"] * 1e6 / 2**20, 2)
            out[f"{fmt}_mb_per_million_deliveries"] = round(
                size / made["deliveries"] * 1e6 / 2**20, 2)
            out.update(events=made["events"], deliveries=made["deliveries"],
                       users=made["groups"] * 62, duration_s=made["duration_s"])
            log(f"  {size / 2**20:,.1f} MB in {time.perf_counter() - t:.1f} s")
        if candidates:
            out["candidates"] = {}
            for name, code in CANDIDATES.items():
                d = dirs["csv" if name.endswith("csv") else "parquet"]
                log(f"candidate {name} ...")
                res = _child([sys.executable, "-c", code + _OWN_RSS, str(d)])
                # RUSAGE_CHILDREN keeps the largest child so far: each reports its own.
                res["peak_rss_mb"] = round(int(res.pop("out")[0].split()[-1]) / 1024, 1)
                out["candidates"][name] = res
                log(f"  {res}")
            return out
        log(f"rtmsim analyze {dirs['parquet']} ...")
        res = _child([sys.executable, "-m", "sim.cli", "analyze", str(dirs["parquet"])])
        out.update(wall_s=res["wall_s"], peak_rss_mb=res["peak_rss_mb"], goals=GOALS)
        return out
