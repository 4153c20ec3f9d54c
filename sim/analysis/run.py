"""Loading a run directory into one `Run`: the data every analysis function reads.

Everything is put on one clock, scenario time `ts` (seconds since the origin the
server's fault schedule uses), so client rows, server events, timeline samples and
fault windows line up without each caller converting. Older run directories are
accepted too: their timeline and stats are keyed by admin URL (mapped here to the
instance names `i0`, `i1`, ... that newer runs use) and their faults lack ids and
windows (given here the ids `f1`, `f2`, ... the server assigns in the same order).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtests.eventload import count_events, delivery_extent, load_client_events

from .. import rundir

# Client rows that are not requests: notes and deliveries (loadtests.reporting).
NOTE_OPS = frozenset({"deliver", "close", "disconnect", "give_up", "burst"})
# Client outcomes that are not protocol codes: the request got no answer at all.
NO_ANSWER = frozenset({"timeout", "refused", "transport_error"})
SERVER_EVENT_COLUMNS = ("t", "event", "instance", "conn", "peer", "app", "op", "code",
                        "requestId", "reason")
# Above this many client events a run's deliveries stay on disk (`load_run`); at 10 M
# the whole frame is about 0.5 GB and the analysis peaks under 2 GB.
IN_MEMORY_EVENTS = 12_000_000
USAGE_FIELDS = ("messagesUsed", "overageMessages", "overageConnections", "balance",
                "concurrentNow", "peakConcurrent")


@dataclass
class Run:
    """One run directory, loaded.

    `timeline` has one row per (sample, instance): `t`, `ts`, `instance`,
    `connections_now`, `connections_total`, `published`, `sent`, `delivered`,
    `errors_<code>` and `closes_<code>` (cumulative server counters), and per app the
    usage fields as `<app>.<field>` (e.g. `app_demo.messagesUsed`; NaN while the
    ledger was unreachable).
    """

    dir: Path
    meta: dict[str, Any]
    client: pd.DataFrame
    server: pd.DataFrame
    stats: dict[str, Any]
    timeline: pd.DataFrame
    origin: float
    faults: list[dict[str, Any]]
    # A run too large to hold its deliveries: `client` holds every other row, and the
    # deliveries are read from disk when asked for (`deliveries_extent`: their count and
    # scenario-time span).
    deliveries_on_disk: bool = False
    deliveries_extent: tuple[int, float, float] = (0, math.nan, math.nan)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def duration_s(self) -> float:
        """The scenario's planned length; the data's span when run.json lacks it."""
        planned = self.meta.get("duration_s")
        if isinstance(planned, int | float) and planned > 0:
            return float(planned)
        spans = [float(df.ts.max()) for df in (self.client, self.server) if len(df)]
        if self.deliveries_extent[0]:
            spans.append(self.deliveries_extent[2])
        return max(spans) if spans else 0.0

    def requests(self) -> pd.DataFrame:
        """Client rows that are requests (connect, subscribe, publish, send, bad input)."""
        if "requests" not in self._cache:
            c = self.client
            self._cache["requests"] = c[~c.op.isin(NOTE_OPS)]
        return self._cache["requests"]

    @property
    def delivery_histogram(self) -> dict[str, Any] | None:
        """A virtual run's deliveries by latency when it logged no row each
        (`rtmsim simulate --no-deliveries`): {bounds_ms, counts}; None when it did."""
        engine = self.meta.get("engine") or {}
        if engine.get("deliveries_logged", True):
            return None
        return engine.get("delivery_histogram") or {"bounds_ms": [], "counts": []}

    def delivery_count(self) -> int:
        """Delivery rows of the client log (in `client`, or counted on disk); without
        rows, the deliveries the virtual run's histogram holds."""
        hist = self.delivery_histogram
        if hist is not None:
            return int(sum(hist["counts"]))
        if self.deliveries_on_disk:
            return self.deliveries_extent[0]
        return int((self.client.op == "deliver").sum())

    def client_errors(self) -> pd.DataFrame:
        """Client request rows whose outcome is an error code (not ok/close/no answer)."""
        if "client_errors" not in self._cache:
            r = self.requests()
            out = r.outcome
            self._cache["client_errors"] = r[(out != "ok") & ~out.str.startswith("close ")
                                             & ~out.isin(NO_ANSWER)]
        return self._cache["client_errors"]


def load_run(run_dir: str | Path, in_memory_events: int | None = None) -> Run:
    """Read every file of a run directory (missing ones become empty frames).

    A run of more than `in_memory_events` (default `IN_MEMORY_EVENTS`) client events
    keeps its deliveries on disk:
    they are nearly all of its rows, and what the analysis asks of them (the delivery
    accounting, latency, count) is read from the log when asked for."""
    d = Path(run_dir)
    if not rundir.is_run_dir(d):
        raise FileNotFoundError(f"{d}: not a run directory (no {rundir.RUN})")
    meta = rundir.read_json(d, rundir.RUN, {}) or {}
    names = _instance_names(meta)
    raw_stats = rundir.read_json(d, rundir.SERVER_STATS, {}) or {}
    stats = {names.get(k, k): v for k, v in sorted(raw_stats.items())}
    origin = _origin(meta, stats)
    limit = IN_MEMORY_EVENTS if in_memory_events is None else in_memory_events
    on_disk = count_events(d) > limit
    client = load_client_events(d, rows="no deliveries" if on_disk else "all")
    client["ts"] = client.t.astype(float) - origin
    extent = (0, math.nan, math.nan)
    if on_disk:
        n, lo, hi = delivery_extent(d)
        extent = (n, lo - origin, hi - origin)
    server = _server_events(d, origin)
    timeline = _timeline(d, origin, names)
    faults = normalize_faults(meta.get("faults") or [])
    return Run(dir=d, meta=meta, client=client, server=server, stats=stats,
               timeline=timeline, origin=origin, faults=faults,
               deliveries_on_disk=on_disk, deliveries_extent=extent)


def _instance_names(meta: dict[str, Any]) -> dict[str, str]:
    """Admin URL -> `i<index>`: old runs keyed instances by URL."""
    return {url: f"i{i}" for i, url in enumerate(meta.get("admin_urls") or [])}


def _origin(meta: dict[str, Any], stats: dict[str, Any]) -> float:
    for value in (meta.get("origin"),
                  *((s.get("faults") or {}).get("origin") for s in stats.values()),
                  meta.get("started")):
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return 0.0


def _server_events(d: Path, origin: float) -> pd.DataFrame:
    df = pd.DataFrame(_columns(rundir.iter_jsonl(d, rundir.SERVER_EVENTS)))
    for col in SERVER_EVENT_COLUMNS:
        if col not in df.columns:
            df[col] = pd.Series(dtype=float if col == "t" else object)
    df["instance"] = df.instance.fillna("i0") if len(df) else df.instance
    df = df.sort_values("t", kind="stable").reset_index(drop=True)
    df["ts"] = df.t.astype(float) - origin
    return df


def _columns(records: Iterable[dict[str, Any]]) -> dict[str, list[Any]]:
    """Records as columns (None where a record lacks a key), built as they are read:
    a long server event log held as dicts would take several times the frame."""
    columns: dict[str, list[Any]] = {}
    for n, record in enumerate(records, 1):
        for key, value in record.items():
            column = columns.get(key)
            if column is None:
                column = columns[key] = [None] * (n - 1)
            column.append(value)
        if len(record) < len(columns):
            for column in columns.values():
                if len(column) < n:
                    column.append(None)
    return columns


def _timeline(d: Path, origin: float, names: dict[str, str]) -> pd.DataFrame:
    records = []
    for line in rundir.read_jsonl(d, rundir.SERVER_TIMELINE):
        stats = line.get("stats") or {}
        totals = stats.get("totals") or {}
        conns = totals.get("connections") or {}
        msgs = totals.get("messages") or {}
        name = line.get("instance") or stats.get("instance") or "i0"
        rec: dict[str, Any] = {
            "t": float(line["t"]), "instance": names.get(name, name),
            "connections_now": conns.get("now", 0), "connections_total": conns.get("total", 0),
            "published": msgs.get("published", 0), "sent": msgs.get("sent", 0),
            "delivered": msgs.get("delivered", 0),
            "cpu_s": (stats.get("process") or {}).get("cpu_s", math.nan)}
        for code, n in (totals.get("errors") or {}).items():
            rec[f"errors_{code}"] = n
        for code, n in (totals.get("closes") or {}).items():
            rec[f"closes_{code}"] = n
        for app, usage in (stats.get("usage") or {}).items():
            for f in USAGE_FIELDS:
                rec[f"{app}.{f}"] = (usage or {}).get(f, math.nan)
        records.append(rec)
    df = pd.DataFrame(records)
    if not len(df):
        return pd.DataFrame(columns=["t", "ts", "instance", "connections_now",
                                     "connections_total", "published", "sent", "delivered"])
    counters = [c for c in df.columns if c.startswith(("errors_", "closes_"))]
    df[counters] = df[counters].fillna(0).astype(np.int64)  # a code not seen yet is 0
    df = df.sort_values(["t", "instance"], kind="stable").reset_index(drop=True)
    df.insert(1, "ts", df.t - origin)
    return df


def normalize_faults(faults: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every fault with `id`, `kind`, `start_s`, `end_s` (None: until the run ends).

    One-shot kinds (`at_s`) get `start_s == end_s == at_s`.
    """
    out = []
    for i, spec in enumerate(faults):
        f = dict(spec)
        f.setdefault("id", f"f{i + 1}")
        if "start_s" not in f or f.get("start_s") is None:
            f["start_s"] = float(f["at_s"]) if "at_s" in f else 0.0
            if "at_s" in f:
                f["end_s"] = float(f["at_s"])
        f.setdefault("end_s", None)
        out.append(f)
    return out


def fault_windows(run: Run) -> pd.DataFrame:
    """id, kind, start_s, end_s, open_ended, one_shot, label, close_code (of `close`
    faults, else None): for shading and recovery.

    A fault without an end lasts the whole run: its end_s is the run's duration and
    `open_ended` says so (a chart may prefer not to shade it).
    """
    duration = run.duration_s
    rows = []
    for f in run.faults:
        start = float(f["start_s"])
        open_ended = f.get("end_s") is None
        end = max(duration, start) if open_ended else float(f["end_s"])
        one_shot = not open_ended and end == start
        when = f"at {start:g} s" if one_shot else (
            f"from {start:g} s" if open_ended else f"{start:g}-{end:g} s")
        rows.append({"id": str(f["id"]), "kind": str(f.get("kind", "?")), "start_s": start,
                     "end_s": end, "open_ended": open_ended, "one_shot": one_shot,
                     "label": f"{f['id']} {f.get('kind', '?')} {when}",
                     "close_code": f.get("close_code")})
    return pd.DataFrame(rows, columns=["id", "kind", "start_s", "end_s", "open_ended",
                                       "one_shot", "label", "close_code"])


def observed_counts(values: pd.Series) -> pd.Series:
    """How often each value occurs, for the values that do: the client log's string
    columns are categoricals, whose `value_counts` also lists every unused category
    (with 0), e.g. "ok" among the counts of error rows."""
    counts = values.value_counts()
    return counts[counts > 0]


def time_bins(ts: pd.Series, bin_s: float) -> pd.Series:
    """The start of the `bin_s`-wide bin each time falls in (bins aligned to ts 0)."""
    return np.floor(ts.astype(float) / bin_s) * bin_s


def bin_range(run: Run, bin_s: float, *frames: pd.DataFrame) -> np.ndarray:
    """Every bin start from the earliest to the latest event, so empty bins show as 0."""
    lo, hi = 0.0, max(0.0, run.duration_s - 1e-9)  # a run of 50 s ends in bin [49, 50)
    for df in frames:
        if len(df):
            lo = min(lo, float(df.ts.min()))
            hi = max(hi, float(df.ts.max()))
    if run.deliveries_on_disk and run.deliveries_extent[0] and any(
            df is run.client for df in frames):
        lo, hi = min(lo, run.deliveries_extent[1]), max(hi, run.deliveries_extent[2])
    first = math.floor(lo / bin_s)
    last = math.floor(hi / bin_s)
    return np.arange(first, last + 1) * bin_s


def run_dirs_or_newest(run_dirs: str | Path | list[str | Path] | None,
                       results: str | Path = "results", name: str = "") -> list[Path]:
    """The run directories asked for, or else the newest one under `results`.

    For notebooks and tools with a "run directory" parameter: given paths are checked
    (each must hold run.json) and returned in order; none given, the newest run
    directory under `results` (by run.json's `started`) is used, preferring runs of
    scenario `name` when there are any. FileNotFoundError with a one-line message
    saying what to do when there is nothing to analyse.
    """
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs] if str(run_dirs) else []
    asked = [Path(p) for p in run_dirs or []]
    for path in asked:
        if not rundir.is_run_dir(path):
            raise FileNotFoundError(f"{path}: not a run directory (no {rundir.RUN}); "
                                    "point the parameter at a directory `rtmsim run` wrote")
    if asked:
        return asked
    root = Path(results)
    found = [p for p in sorted(root.iterdir()) if rundir.is_run_dir(p)] if root.is_dir() else []
    if not found:
        what = f"scenarios/{name}.toml" if name else "scenarios/default.toml"
        raise FileNotFoundError(f"no run directory under {root.resolve()}: run `rtmsim run "
                                f"{what}` first, or set the run directory parameter")

    def started(p: Path) -> float:
        value = (rundir.read_json(p, rundir.RUN, {}) or {}).get("started")
        return float(value) if isinstance(value, int | float) else p.stat().st_mtime

    named = [p for p in found
             if (rundir.read_json(p, rundir.RUN, {}) or {}).get("name") == name]
    return [max(named or found, key=started)]
