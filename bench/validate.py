"""`bench validate`: a real run and a virtual run of one scenario and seed, held to the
bounds of issue 14's validation clause.

    every error and close code    |real - virtual| <= max(3 sqrt(real), 5 % of real)
    retry amplification           10 % of the real amplification, per policy
    recovery time per fault       20 % of the real time, at least RECOVERY_FLOOR_S
    reconnect-storm peaks         20 %
    the time the quota runs out   5 % (scenario time)
    publish and delivery p50/p99  20 %, at light load only

The real run is the reference: its count sets the Poisson sd, its value the relative
bound. Both runs are `rtmsim run` and `rtmsim simulate` children (bench may not import
`sim`, the layers keep the two independent), so everything here is read from the run
directories: summary.json for what the analysis already computed, the client event
log (`loadtests.eventload`) for the two figures it does not (connect attempts per
second in a storm, the first `over_message_quota`).

Why the count bound is the larger of the two and not a switch at some count: 3 sd of
a Poisson count is 15 % at 400 and 5 % at 3,600, so "5 % from 400 on" would make a
count of 400 three times stricter than a count of 399. Poisson is the floor of what
two runs can agree to; the 5 % is the allowance for what Poisson does not see once
counts are large (scheduling, the spawn order, a deploy catching a user mid-request).
The two meet at LARGE_COUNT, where the rule hands over, so the bound never shrinks as a
count grows.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtests.eventload import load_client_events

from .procs import ROOT, BenchError, checkout, machine

SCENARIOS = ("default", "deploy-storm", "quota-exhaustion", "retry-bakeoff", "redis-blip")
REPEAT = "real-repeat"  # --repeat's second real run, beside real/ and virtual/
SCENARIO_DIR = ROOT / "scenarios"
# sim.rundir's names; bench may not import it
SUMMARY, RUN, TIMELINE = "summary.json", "run.json", "server-timeline.jsonl"

COUNT_SDS = 3.0
COUNT_FRACTION = 0.05
LARGE_COUNT = (COUNT_SDS / COUNT_FRACTION) ** 2  # 3,600: where 3 sd == 5 %
AMPLIFICATION_FRACTION = 0.10
RECOVERY_FRACTION = 0.20
# recovery_times judges health per 1 s bin, so two runs that agree can differ by one
# bin; a floor below that would fail them on the quantisation, not on the model.
RECOVERY_FLOOR_S = 1.0
STORM_FRACTION = 0.20
STORM_HORIZON_S = 10.0  # connect attempts counted from a fault's start to its end + this
BURST_GAP_S = 1.0  # a pause this long ends a blip's burst of backend_error answers
QUOTA_FRACTION = 0.05
QUOTA_GAP_S = 3.0  # a pause this long without over_message_quota: the quota came back
LATENCY_FRACTION = 0.20
LATENCY_PERCENTILES = ("p50", "p99")
# Client rows that are not requests (sim.analysis.run.NOTE_OPS; bench may not import it).
NOTE_OPS = frozenset({"deliver", "close", "disconnect", "give_up", "burst"})
# Faults that add latency by design: a scenario with one is not at light load.
LATENCY_FAULT_KINDS = frozenset({"latency", "slow_consumer"})
# Shapes that drive the server into its knee on purpose.
OVERLOAD_SHAPES = frozenset({"step_ramp"})


@dataclass(frozen=True)
class Check:
    """One figure of both runs and the bound it is held to.

    `limit` is the largest |virtual - real| allowed (None: not a number, e.g. a figure
    one run lacks); `rule` says where it comes from ("3 sd", "5%", "20%, >= 1 s").
    `ok` is None for a check that was skipped, `note` says why (or what is odd).
    """

    name: str
    real: float | None
    virtual: float | None
    rule: str
    limit: float | None
    ok: bool | None
    note: str = ""
    # --repeat: the second real run's figure, and whether it is within the same bound
    repeat: float | None = None
    repeat_ok: bool | None = None

    @property
    def bound(self) -> str:
        return self.rule if self.limit is None else f"±{_number(self.limit)} ({self.rule})"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bound": self.bound}


# -- the bounds ---------------------------------------------------------------------------


def count_check(name: str, real: float, virtual: float) -> Check:
    """Counts: 3 Poisson sd of the real count, or 5 % of it from LARGE_COUNT on."""
    three_sd = COUNT_SDS * math.sqrt(max(real, 1.0))
    five_pct = COUNT_FRACTION * real
    rule, limit = ("5%", five_pct) if five_pct > three_sd else ("3 sd", three_sd)
    return Check(name, real, virtual, rule, limit, abs(virtual - real) <= limit + 1e-9)


def relative_check(name: str, real: float | None, virtual: float | None, fraction: float,
                   floor: float = 0.0, unit: str = "", note: str = "") -> Check:
    """|virtual - real| <= max(fraction x |real|, floor); a figure only one run has fails."""
    rule = f"{100 * fraction:g}%" + (f", >= {floor:g}{unit}" if floor else "")
    if real is None or virtual is None:
        missing = "the real run" if real is None else "the virtual run"
        return Check(name, real, virtual, rule, None, False,
                     note or f"no such figure in {missing}")
    limit = max(fraction * abs(real), floor)
    return Check(name, real, virtual, rule, limit, abs(virtual - real) <= limit + 1e-9, note)


# -- the checks, by section of summary.json ----------------------------------------------


def code_checks(real: dict[str, Any], virtual: dict[str, Any], section: str
                ) -> list[Check]:
    """`errors` or `closes`: per code seen in either run, the client's and the server's
    count. A code neither run saw is no check."""
    r, v = real.get(section) or {}, virtual.get(section) or {}
    out = []
    for code in sorted(set(r) | set(v), key=_code_order):
        for side in ("client", "server"):
            a = (r.get(code) or {}).get(side) or 0
            b = (v.get(code) or {}).get(side) or 0
            if a or b:
                out.append(count_check(f"{section}.{code}.{side}", a, b))
    return out


def amplification_checks(real: dict[str, Any], virtual: dict[str, Any]) -> list[Check]:
    """Attempts per operation, per retry policy (`retry_amplification`)."""
    r, v = real.get("retry_amplification") or {}, virtual.get("retry_amplification") or {}
    return [relative_check(f"retry_amplification.{policy}",
                           (r.get(policy) or {}).get("amplification"),
                           (v.get(policy) or {}).get("amplification"),
                           AMPLIFICATION_FRACTION)
            for policy in sorted(set(r) | set(v))]


def recovery_checks(real: dict[str, Any], virtual: dict[str, Any]) -> list[Check]:
    """Seconds from each fault's end to the service being healthy again (`recovery`).

    A fault neither run has a time for, for the same reason (open-ended, no baseline)
    is no check: nothing was measured. Different reasons are a failed check.
    """
    r = {row["id"]: row for row in real.get("recovery") or []}
    v = {row["id"]: row for row in virtual.get("recovery") or []}
    out = []
    for fid in sorted(set(r) | set(v), key=_fault_order):
        a, b = r.get(fid) or {}, v.get(fid) or {}
        ra, rb = a.get("recovered_s"), b.get("recovered_s")
        if ra is None and rb is None and a.get("note") == b.get("note"):
            continue
        note = "; ".join(f"{who}: {row['note']}" for who, row in (("real", a), ("virtual", b))
                         if row.get("note"))
        out.append(relative_check(f"recovery.{fid}", ra, rb, RECOVERY_FRACTION,
                                  RECOVERY_FLOOR_S, " s", note))
    return out


def storm_checks(real: dict[str, Any], virtual: dict[str, Any],
                 runs: tuple[RunFiles, RunFiles] | None) -> list[Check]:
    """Per fault that set off a reconnect storm in either run: the peak of connect
    attempts per second (client event log) and the peak of reconnects per second of the
    storm's closed clients, per close code (`reconnect_storms`)."""
    storms = [(s["fault_id"], s["code"]) for summary in (real, virtual)
              for s in summary.get("reconnect_storms") or [] if s.get("fault_id")]
    windows = {str(f["id"]): (float(f["start_s"]), float(f["end_s"]))
               for f in real.get("faults") or [] if f.get("end_s") is not None}
    out = []
    for fid in sorted({fid for fid, _ in storms}, key=_fault_order):
        if fid in windows and runs is not None:
            start, end = windows[fid]
            a, b = (connect_attempt_peak(run.rows, start, end + STORM_HORIZON_S)
                    for run in runs)
            out.append(relative_check(f"reconnect_peak.{fid}", a, b, STORM_FRACTION))
        for code in sorted({c for f, c in storms if f == fid}):
            a, b = (_storm_peak(summary, fid, code) for summary in (real, virtual))
            out.append(relative_check(f"reconnected_peak.{fid}.{code}", a, b,
                                      STORM_FRACTION))
    return out


def quota_checks(runs: tuple[RunFiles, RunFiles] | None) -> list[Check]:
    """When the message quota ran out, in two senses: the plan's messages were used up
    (overage begins; the server timeline), and clients were refused with
    `over_message_quota` (overage not allowed, or its balance gone; the client log).
    One check per such moment in either run, in order (one per billing period)."""
    if runs is None:
        return []
    out = []
    for name, figure in (("quota_used_up_at_s", lambda run: quota_used_up_at(run.dir)),
                         ("quota_exhausted_at_s", lambda run: quota_exhausted_at(run.rows))):
        a, b = (figure(run) for run in runs)
        for i in range(max(len(a), len(b))):
            out.append(relative_check(name + (f".{i + 1}" if i else ""),
                                      a[i] if i < len(a) else None,
                                      b[i] if i < len(b) else None, QUOTA_FRACTION))
    return out


def class_amplification_checks(real: dict[str, Any],
                               runs: tuple[RunFiles, RunFiles] | None) -> list[Check]:
    """Attempts per operation per user class, for the classes that share a policy name
    with others (retry-bakeoff's eight backoffs are all policy "default", so the
    summary's per-policy figure averages them) and retried in either run."""
    if runs is None:
        return []
    shared = {cls for entry in (real.get("retry_amplification") or {}).values()
              if len(entry.get("user_classes") or []) > 1 for cls in entry["user_classes"]}
    a, b = (amplification_by_class(run.rows) for run in runs)
    return [relative_check(f"retry_amplification.class.{cls}", a.get(cls), b.get(cls),
                           AMPLIFICATION_FRACTION)
            for cls in sorted(shared & (set(a) | set(b)))
            if max(a.get(cls) or 1.0, b.get(cls) or 1.0) > 1.0]


def blip_checks(runs: tuple[RunFiles, RunFiles] | None) -> list[Check]:
    """Per Redis blip (run.json `redis_blips`, which summary.json's recovery does not
    cover: a blip is no fault window): seconds from Redis being back to the last
    backend_error of the burst the blip caused."""
    if runs is None:
        return []
    blips = [run.meta.get("redis_blips") or [] for run in runs]
    unrecorded = [kind for kind, found in zip(("real", "virtual"), blips, strict=True)
                  if not found]
    note = " and ".join(unrecorded) + " run.json records no redis_blips" if unrecorded else ""
    out = []
    for i in range(max(len(b) for b in blips)):
        a, b = (error_tail_s(run.rows, *_blip(found, i)) if i < len(found) else None
                for run, found in zip(runs, blips, strict=True))
        out.append(relative_check(f"recovery.blip{i + 1}", a, b, RECOVERY_FRACTION,
                                  RECOVERY_FLOOR_S, " s", note))
    return out


def latency_checks(real: dict[str, Any], virtual: dict[str, Any]) -> list[Check]:
    """Publish and delivery p50/p99 (ms), skipped unless both runs were at light load."""
    why = not_light_load(real) or not_light_load(virtual)
    figures = (("publish", (real.get("latency_ms") or {}).get("publish"),
                (virtual.get("latency_ms") or {}).get("publish")),
               ("delivery", real.get("delivery_latency_ms"),
                virtual.get("delivery_latency_ms")))
    out = []
    for what, a, b in figures:
        if not _has_samples(a) and not _has_samples(b):
            continue  # neither run published (or delivered)
        for p in LATENCY_PERCENTILES:
            ra = (a or {}).get(p) if _has_samples(a) else None
            rb = (b or {}).get(p) if _has_samples(b) else None
            name = f"latency.{what}.{p}"
            if why:
                out.append(Check(name, ra, rb, f"{100 * LATENCY_FRACTION:g}%", None, None,
                                 f"not light load: {why}"))
            else:
                out.append(relative_check(name, ra, rb, LATENCY_FRACTION))
    return out


def not_light_load(summary: dict[str, Any]) -> str:
    """Why a run's latencies are not light-load figures ("" when they are): a fault
    that injects latency, or a shape that drives the server into its knee."""
    kinds = [f"{f['id']} {f['kind']}" for f in summary.get("faults") or []
             if f.get("kind") in LATENCY_FAULT_KINDS]
    if kinds:
        return f"fault {', '.join(kinds)} injects latency"
    shape = (summary.get("run") or {}).get("shape")
    if shape in OVERLOAD_SHAPES:
        return f"shape {shape} overloads on purpose"
    return ""


def compare(real_summary: dict[str, Any], virtual_summary: dict[str, Any],
            real_run_dir: str | Path | None = None,
            virtual_run_dir: str | Path | None = None) -> list[Check]:
    """Every check of one scenario's real run against its virtual run.

    The summaries are the two runs' summary.json; the run directories are read for the
    figures summary.json lacks (storm attempt peaks, quota onsets, per-class
    amplification, Redis blip recovery), which are left out when they are not given.
    """
    runs = None
    if real_run_dir is not None and virtual_run_dir is not None:
        runs = (RunFiles(Path(real_run_dir)), RunFiles(Path(virtual_run_dir)))
    return [*code_checks(real_summary, virtual_summary, "errors"),
            *code_checks(real_summary, virtual_summary, "closes"),
            *amplification_checks(real_summary, virtual_summary),
            *class_amplification_checks(real_summary, runs),
            *recovery_checks(real_summary, virtual_summary),
            *blip_checks(runs),
            *storm_checks(real_summary, virtual_summary, runs),
            *quota_checks(runs),
            *latency_checks(real_summary, virtual_summary)]


# -- figures from the run directory -------------------------------------------------------


@dataclass
class RunFiles:
    """A run directory, and what the checks read of it, read once."""

    dir: Path

    @cached_property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.dir / RUN).read_text())

    @cached_property
    def rows(self) -> pd.DataFrame:
        return client_rows(self.dir, self.meta)


def client_rows(run_dir: Path, meta: dict[str, Any] | None = None) -> pd.DataFrame:
    """The client log's request and note rows (no deliveries): ts (scenario s), op,
    outcome, user_class, attempt. Scenario time 0 is run.json's origin, the fault
    schedule's."""
    meta = json.loads((run_dir / RUN).read_text()) if meta is None else meta
    rows = load_client_events(run_dir, rows="no deliveries",
                              columns=("t", "op", "outcome", "user_class", "attempt"))
    return pd.DataFrame({"ts": rows.t.to_numpy(dtype=float) - _origin(meta),
                         "op": rows.op.astype(str), "outcome": rows.outcome.astype(str),
                         "user_class": rows.user_class.astype(str),
                         "attempt": rows.attempt.to_numpy()})


def _origin(meta: dict[str, Any]) -> float:
    return float(meta.get("origin") or meta.get("started") or 0.0)


def amplification_by_class(rows: pd.DataFrame) -> dict[str, float]:
    """Attempts / operations per user class, over request rows (an operation is a first
    attempt), as sim.analysis.latency.retry_amplification counts them per policy."""
    requests = rows[~rows.op.isin(NOTE_OPS)]
    g = requests.groupby("user_class", sort=True).attempt
    firsts = g.agg(lambda a: int((a == 1).sum()))
    return {str(cls): float(n / firsts[cls]) for cls, n in g.size().items() if firsts[cls]}


def error_tail_s(rows: pd.DataFrame, at_s: float, down_s: float,
                 code: str = "backend_error", gap_s: float = BURST_GAP_S) -> float | None:
    """Seconds from an outage's end (at_s + down_s) to the last `code` answer of the
    burst it caused: the answers from at_s on, until a pause of more than `gap_s`.
    None when there was none. A later, separate burst is not the outage's tail (the
    code's count covers it)."""
    end = at_s + down_s
    ts = np.sort(rows.ts[(rows.outcome == code) & (rows.ts >= at_s)].to_numpy(dtype=float))
    if not len(ts):
        return None
    gaps = np.flatnonzero(np.diff(ts) > gap_s)
    return float(ts[gaps[0]] if len(gaps) else ts[-1]) - end


def _blip(blips: list[dict[str, Any]], i: int) -> tuple[float, float]:
    return float(blips[i]["at_s"]), float(blips[i]["down_s"])


def connect_attempt_peak(rows: pd.DataFrame, start_s: float, end_s: float) -> int:
    """The most connect attempts (any outcome) in a sliding 1 s window within
    [start_s, end_s]: a storm's load on admission, refused attempts included."""
    ts = rows.ts[(rows.op == "connect") & (rows.ts >= start_s) & (rows.ts <= end_s)]
    x = np.sort(ts.to_numpy(dtype=float))
    if not len(x):
        return 0
    return int((np.searchsorted(x, x + 1.0, side="left") - np.arange(len(x))).max())


def quota_exhausted_at(rows: pd.DataFrame, gap_s: float = QUOTA_GAP_S) -> list[float]:
    """Scenario times at which the message quota ran out: the first `over_message_quota`
    answer, and the first after each pause of more than `gap_s` without one (a new
    billing period ran out too)."""
    ts = np.sort(rows.ts[rows.outcome == "over_message_quota"].to_numpy(dtype=float))
    if not len(ts):
        return []
    onsets = np.concatenate([[True], np.diff(ts) > gap_s])
    return [float(t) for t in ts[onsets]]


def quota_used_up_at(run_dir: Path) -> list[float]:
    """Scenario times at which an app's `messagesUsed` reached its plan's
    `maxMessagesPerPeriod`, once per billing period at most, from the server timeline's
    per-second usage, interpolated linearly between samples (a period's first sample is
    measured from the period's start at 0 used). Every app's, in time order."""
    origin = _origin(json.loads((run_dir / RUN).read_text()))
    samples: dict[str, list[tuple[float, float, float, float]]] = {}
    path = run_dir / TIMELINE
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        for app, usage in ((record.get("stats") or {}).get("usage") or {}).items():
            most = ((usage or {}).get("plan") or {}).get("maxMessagesPerPeriod")
            if most and usage.get("messagesUsed") is not None:
                samples.setdefault(app, []).append(
                    (float(record["t"]), float(usage["periodStartUnix"]),
                     float(usage["messagesUsed"]), float(most)))
    out = []
    for rows in samples.values():
        rows.sort()
        done: set[float] = set()
        prev = None
        for t, period, used, most in rows:
            if prev is None or prev[1] != period:
                prev = (period, period, 0.0, most)
            t0, _, used0, _ = prev
            if period not in done and used0 < most <= used and t > t0:
                out.append(t0 + (most - used0) / (used - used0) * (t - t0) - origin)
                done.add(period)
            prev = (t, period, used, most)
    return sorted(out)


def _storm_peak(summary: dict[str, Any], fid: str, code: int) -> float | None:
    peaks = [s["peak_reconnects_per_s"] for s in summary.get("reconnect_storms") or []
             if s.get("fault_id") == fid and s.get("code") == code]
    return max(peaks) if peaks else None


def _has_samples(figures: dict[str, Any] | None) -> bool:
    return bool(figures) and bool(figures.get("count"))


def _code_order(code: str) -> tuple[int, str]:
    return (int(code), "") if code.isdigit() else (0, code)


def _fault_order(fid: str) -> tuple[int, str]:
    digits = fid.lstrip("f")
    return (int(digits), fid) if digits.isdigit() else (1 << 30, fid)


# -- the driver ---------------------------------------------------------------------------


def scenario_path(name: str) -> Path:
    """scenarios/NAME.toml, or NAME itself when it is a file; BenchError otherwise."""
    path = Path(name)
    if path.suffix == ".toml" and path.is_file():
        return path.resolve()
    path = SCENARIO_DIR / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.toml")))
        raise BenchError(f"--scenarios: no scenario {name!r}; give one of {known} "
                         "or a .toml file")
    return path


def same_lead(real_dir: Path) -> list[str]:
    """`--server-lead` of the real run (its servers' start to its swarm's, where its
    billing periods fall in scenario time), for the virtual run to open them as it did;
    nothing for a run directory of before it was recorded."""
    lead = json.loads((real_dir / RUN).read_text()).get("server_lead_s")
    return ["--server-lead", f"{lead}"] if isinstance(lead, int | float) and lead >= 0 else []


def run_child(verb: str, scenario: Path, out: Path, *, users: int | None, seed: int | None,
              log: Callable[[str], None], extra: Sequence[str] = ()) -> float:
    """`rtmsim VERB SCENARIO --out OUT` in a child; its wall seconds. Its output goes to
    OUT.log beside the run directory. Exit 1 is a failed threshold of a complete run
    (the scenario's own gate), not a failure to run."""
    cmd = [sys.executable, "-m", "sim.cli", verb, str(scenario), "--out", str(out),
           "--no-progress"]
    cmd += ["--users", str(users)] if users is not None else []
    cmd += ["--seed", str(seed)] if seed is not None else []
    cmd += list(extra)
    out.parent.mkdir(parents=True, exist_ok=True)
    output = out.with_name(out.name + ".log")
    log(f"  rtmsim {verb} {scenario.stem} -> {out}")
    start = time.perf_counter()
    with output.open("w") as sink:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - start
    if rc not in (0, 1) or not (out / SUMMARY).is_file():
        lines = output.read_text(errors="replace").strip().splitlines()
        last = lines[-1] if lines else "(no output)"
        raise BenchError(f"rtmsim {verb} {scenario.stem} exited {rc}: {last} "
                         f"(its output: {output})")
    log(f"  rtmsim {verb} {scenario.stem}: {wall:.0f} s wall")
    return wall


def validate(scenarios: Sequence[str], *, users: int | None, seed: int | None,
             keep: Path | None, existing: Path | None,
             log: Callable[[str], None], load_generator: bool = True,
             model: Path | None = None, repeat: bool = False) -> dict[str, Any]:
    """Run (or, with `existing`, re-read) each scenario real and virtual, and compare.

    The virtual run models the real run's Locust processes (`--load-generator`): what
    the real run's clients measure includes them. `repeat`: a second real run of each,
    held to the same bounds against the first (how far the real harness agrees with
    itself; the bounds do not change)."""
    paths = [scenario_path(name) for name in scenarios]
    base = existing or keep
    if existing is None and keep is not None:
        for path in paths:
            for kind in ("real", "virtual", *((REPEAT,) if repeat else ())):
                d = keep / path.stem / kind
                if d.exists() and any(d.iterdir()):
                    raise BenchError(f"--keep {keep}: {d} exists and is not empty; choose "
                                     f"another directory, or --from {keep} to compare "
                                     "what is there")
    tmp = None
    if base is None:
        tmp = tempfile.mkdtemp(prefix="rtmsim-validate-")
        base = Path(tmp)
    try:
        results = [_scenario(path, base / path.stem, users=users, seed=seed,
                             run=existing is None, log=log,
                             simulate=virtual_flags(load_generator, model), repeat=repeat)
                   for path in paths]
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if tmp is not None:
        for r in results:
            r["real_dir"] = r["virtual_dir"] = None  # deleted: --keep DIR keeps them
    checks = [c for r in results for c in r["checks"]]
    failed = sum(c["ok"] is False for c in checks)
    out = {"benchmark": "validate", "machine": machine(), "checkout": checkout(ROOT),
           "load_generator": load_generator, "model": str(model) if model else None,
           "bounds": bounds(), "scenarios": results, "checks": len(checks),
           "failed": failed, "skipped": sum(c["ok"] is None for c in checks),
           "passed": failed == 0}
    if repeat:
        judged = [c for c in checks if c.get("repeat_ok") is not None]
        out["repeat"] = {"checks": len(judged),
                         "failed": sum(c["repeat_ok"] is False for c in judged)}
    return out


def _scenario(path: Path, base: Path, *, users: int | None, seed: int | None, run: bool,
              log: Callable[[str], None], simulate: Sequence[str] = (),
              repeat: bool = False) -> dict[str, Any]:
    real_dir, virtual_dir = base / "real", base / "virtual"
    wall: dict[str, float | None] = {"real": None, "virtual": None}
    log(f"{path.stem}: " + ("real and virtual runs" if run else f"comparing {base}"))
    load: dict[str, float] | None = None
    if run:
        # Latencies and closed-loop rates of a real run move with whatever else the
        # machine runs: say how busy it was, so a miss can be read against it.
        before = os.getloadavg()[0]
        wall["real"] = run_child("run", path, real_dir, users=users, seed=seed, log=log)
        load = {"before": round(before, 2), "after": round(os.getloadavg()[0], 2)}
        log(f"  load average (1 min) {load['before']:.2f} before the real run, "
            f"{load['after']:.2f} after")
        wall["virtual"] = run_child("simulate", path, virtual_dir, users=users, seed=seed,
                                    log=log, extra=[*simulate, *same_lead(real_dir)])
        if repeat:
            wall[REPEAT] = run_child("run", path, base / REPEAT, users=users, seed=seed,
                                     log=log)
    dirs = (real_dir, virtual_dir, *((base / REPEAT,) if repeat else ()))
    summaries = []
    for d in dirs:
        if not (d / SUMMARY).is_file():
            made = " (a second real run: --repeat makes it)" if d.name == REPEAT else ""
            raise BenchError(f"--from {base.parent}: no {SUMMARY} in {d}{made}")
        summaries.append(json.loads((d / SUMMARY).read_text()))
    real, virtual = summaries[:2]
    checks = compare(real, virtual, real_dir, virtual_dir)
    if repeat:
        again = {c.name: c for c in compare(real, summaries[2], real_dir, base / REPEAT)}
        checks = [c if c.name not in again else
                  replace(c, repeat=again[c.name].virtual, repeat_ok=again[c.name].ok)
                  for c in checks]
    missed = [c.name for c in checks if c.ok is False]
    skipped = sum(c.ok is None for c in checks)
    log(f"{path.stem}: {len(checks) - len(missed) - skipped} of {len(checks)} checks "
        f"within bounds, {skipped} skipped"
        + (f"; missed {', '.join(missed)}" if missed else ""))
    info = real.get("run") or {}
    return {"scenario": path.stem, "users": info.get("users"), "seed": info.get("seed"),
            "status": {"real": info.get("status"),
                       "virtual": (virtual.get("run") or {}).get("status")},
            "real_dir": str(real_dir), "virtual_dir": str(virtual_dir), "wall_s": wall,
            "load_average": load,
            "checks": [c.as_dict() for c in checks]}


def virtual_flags(load_generator: bool, model: Path | None) -> list[str]:
    """The `rtmsim simulate` flags of the virtual runs."""
    flags = ["--load-generator"] if load_generator else []
    return flags + (["--model", str(model.resolve())] if model is not None else [])


def bounds() -> dict[str, str]:
    """The bounds in words, for the JSON result (a reader should not need this file)."""
    return {
        "counts": f"|virtual - real| <= max({COUNT_SDS:g} sqrt(max(real, 1)), "
                  f"{100 * COUNT_FRACTION:g}% of real): 3 sd below {LARGE_COUNT:,.0f}, "
                  "5% from there",
        "retry_amplification": f"{100 * AMPLIFICATION_FRACTION:g}% of real, per policy; per "
                               "user class (client log) where classes share a policy",
        "recovery": f"{100 * RECOVERY_FRACTION:g}% of real, at least "
                    f"{RECOVERY_FLOOR_S:g} s (recovery is judged per 1 s bin)",
        "recovery.blip": f"{100 * RECOVERY_FRACTION:g}% of real, at least "
                         f"{RECOVERY_FLOOR_S:g} s: from Redis back to the last backend_error "
                         f"of the blip's burst (ended by a {BURST_GAP_S:g} s pause)",
        "reconnect_peak": f"{100 * STORM_FRACTION:g}% of real: connect attempts in any 1 s "
                          f"from the fault's start to its end + {STORM_HORIZON_S:g} s",
        "reconnected_peak": f"{100 * STORM_FRACTION:g}% of real: summary.json "
                            "reconnect_storms peak_reconnects_per_s",
        "quota_used_up_at_s": f"{100 * QUOTA_FRACTION:g}% of real: scenario time at which "
                              "messagesUsed reached the plan's maxMessagesPerPeriod (server "
                              "timeline, interpolated), per billing period",
        "quota_exhausted_at_s": f"{100 * QUOTA_FRACTION:g}% of real: scenario time of the "
                                "first over_message_quota, and of the first after each "
                                f"pause of more than {QUOTA_GAP_S:g} s",
        "latency": f"{100 * LATENCY_FRACTION:g}% of real, publish and delivery "
                   f"{'/'.join(LATENCY_PERCENTILES)}; skipped unless at light load (no "
                   f"{'/'.join(sorted(LATENCY_FAULT_KINDS))} fault, no "
                   f"{'/'.join(sorted(OVERLOAD_SHAPES))} shape)"}


# -- printing -----------------------------------------------------------------------------


def validate_summary(result: dict[str, Any]) -> str:
    """The table: scenario, check, real, virtual, bound, ok (with --repeat: the second
    real run and whether it is within the same bound); then the totals."""
    again = result.get("repeat")
    rows = [("scenario", "check", "real", "virtual", "bound",
             *(("real again", "within") if again else ()), "ok")]
    for r in result["scenarios"]:
        rows += [(r["scenario"], c["name"], _number(c["real"]), _number(c["virtual"]),
                  c["bound"], *((_number(c.get("repeat")), _yes(c.get("repeat_ok")))
                                if again else ()), _verdict(c)) for c in r["checks"]]
    lines = _table(rows)
    failed, skipped = result["failed"], result["skipped"]
    lines.append("")
    lines.append(f"validate: {result['checks'] - failed - skipped} of {result['checks']} "
                 f"checks within their bounds, {skipped} skipped"
                 + (f", {failed} MISSED" if failed else "")
                 + f" ({result['machine']['cpus']} cpus)")
    if again:
        done = again["checks"] - again["failed"]
        lines.append(f"the real runs again, against the first: {done}"
                     f" of {again['checks']} within the same bounds (how far the real "
                     "harness agrees with itself)")
    kept = [r["real_dir"] for r in result["scenarios"] if r["real_dir"]]
    if kept:
        lines.append(f"run directories: {Path(kept[0]).parent.parent}")
    return "\n".join(lines)


def _yes(ok: bool | None) -> str:
    return "-" if ok is None else "yes" if ok else "NO"


def _verdict(check: dict[str, Any]) -> str:
    if check["ok"] is None:
        return f"skip: {check['note']}"
    verdict = "yes" if check["ok"] else "NO"
    return f"{verdict} ({check['note']})" if check["note"] and not check["ok"] else verdict


def _table(rows: Iterable[tuple[str, ...]]) -> list[str]:
    rows = list(rows)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(cell.ljust(w) if i < 2 else cell.rjust(w)
                          for i, (cell, w) in enumerate(zip(row, widths, strict=False))),
                        row[-1]]).rstrip()
             for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return lines


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if float(value).is_integer():
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
