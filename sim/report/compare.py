"""`rtmsim analyze RUN_DIR` and `rtmsim compare RUN_DIR... [--out DIR]`.

analyze regenerates a run directory's summary.json, charts and report.html (after an
analysis change, or for a run that was interrupted before its report). compare puts
runs side by side: a table of headline numbers per run and overlay charts (errors
per code, latency p99, throughput over time per run; attempts per operation by run
and policy), written as compare.html (self-contained), the PNGs and compare.json.

Numbers come from each run's summary (summary.json, or computed in memory when a
run has none, leaving the run directory untouched) and from `sim.analysis`; nothing
here computes a rate or a percentile.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import analysis, rundir
from ..run import ROOT, RunError, timestamped_dir
from . import charts, compare_many, junit, page, run_report, text
from .formatting import close_name, esc, num

COMPARE_HTML = "compare.html"
COMPARE_JSON = "compare.json"
MAX_CODES = 8  # error-rate facets: the most frequent codes; the rest are named in the title
LATENCY_OPS = ("publish", "send", "subscribe", "connect")


# -- analyze ------------------------------------------------------------------------------

def cmd_analyze(args: argparse.Namespace) -> int:
    run_dir = run_report.require_run_dir(args.run_dir)
    print(f"rtmsim: analysing {run_dir} ...", flush=True)
    summary = run_report.build_all(run_dir)
    text.print_summary(summary, run_dir)
    n_charts = len(list((run_dir / rundir.CHARTS).glob("*.png")))
    print(f"rtmsim: regenerated {run_dir / rundir.SUMMARY}, {n_charts} charts in "
          f"{run_dir / rundir.CHARTS}/ and {run_dir / rundir.REPORT}")
    return junit.gate_thresholds(summary, run_dir, args.junit)


# -- compare ------------------------------------------------------------------------------

def cmd_compare(args: argparse.Namespace) -> int:
    """Compare runs; with --baseline, exit 1 when any run regressed beyond --tolerance."""
    out = Path(args.out) if args.out else default_compare_dir()
    dirs = [args.baseline, *args.run_dirs] if args.baseline else args.run_dirs
    tolerance = args.tolerance if args.baseline else None
    result = compare(dirs, out, log=lambda msg: print(msg, flush=True), tolerance=tolerance)
    for row in text_rows(result):
        print(row)
    print(f"rtmsim: wrote {out / COMPARE_HTML}, {out / COMPARE_JSON} and "
          f"{len(result['charts'])} charts in {out}/")
    gate = result.get("gate")
    if gate is None:
        return 0
    return print_gate(gate, args.junit)


def print_gate(gate: dict[str, Any], junit_path: str | None) -> int:
    """The regressions, one line each (and as JUnit); 1 if there are any."""
    cases, worst = [], 0
    for label, found in gate["regressions"].items():
        for r in found:
            change = "new" if r["change"] is None else f"{100 * r['change']:+.1f}%"
            print(f"rtmsim: regression in {label}: {r['metric']} {num(r['baseline'], 3)} -> "
                  f"{num(r['value'], 3)} ({change}; worse when {r['worse']})")
        cases.append(junit.Case(label, f"{len(found)} headline metrics regressed beyond "
                                f"{100 * gate['tolerance']:g}%: "
                                + ", ".join(r["metric"] for r in found) if found else None))
        worst = max(worst, len(found))
    if junit_path:
        junit.write_junit(junit_path, f"rtmsim.compare.{gate['baseline']}", cases)
    if not worst:
        print(f"rtmsim: no regression beyond {100 * gate['tolerance']:g}% of "
              f"{gate['baseline']}")
    return 1 if worst else 0


def default_compare_dir(results: Path = ROOT / "results") -> Path:
    return timestamped_dir(results, "compare")


def compare(run_dirs: Sequence[str | Path], out_dir: str | Path,
            log: Callable[[str], Any] = lambda _msg: None,
            tolerance: float | None = None) -> dict[str, Any]:
    """Write compare.html, compare.json and the overlay PNGs; returns compare.json's data.

    With a `tolerance`, the first run is the baseline and compare.json's "gate" lists
    each other run's regressions (`sim.analysis.regressions`).
    """
    if len(run_dirs) < 2:
        raise RunError(f"compare needs at least two run directories, got {len(run_dirs)}")
    dirs = [run_report.require_run_dir(d) for d in run_dirs]
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: exists and is not a directory")
    labels = run_labels(dirs)
    log(f"rtmsim: comparing {len(dirs)} runs into {out} ...")
    many = len(dirs) > compare_many.MAX_OVERLAY_RUNS  # summaries only, a row per run
    runs, summaries, sources = [], [], []
    for d, label in zip(dirs, labels, strict=True):
        summary, source = summary_json(d)
        if summary is None or not many:
            run = analysis.load_run(d)
            runs.append(run)
            if summary is None:
                summary, source = analysis.summary(run), "computed (no summary.json)"
        if not many:
            log(f"  {label}: {d} (summary {source})")
        summaries.append(summary)
        sources.append(source)
    out.mkdir(parents=True, exist_ok=True)
    flat = compare_many.per_run(summaries, labels) if many else None
    if flat is not None:
        images = [compare_many.by_run_chart(flat, out)]
    else:
        images = [chart(runs, summaries, labels, out) for chart in COMPARE_CHARTS]
    rows = headline_rows(summaries)
    result = {
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "runs": [{"label": lab, "dir": str(d), "summary": src,
                  "name": (s.get("run") or {}).get("name")}
                 for lab, d, src, s in zip(labels, dirs, sources, summaries, strict=True)],
        "headline": [{"metric": metric, "values": dict(zip(labels, values, strict=True))}
                     for metric, values in rows],
        "charts": [p.name for p in images],
    }
    if flat is not None:
        result["per_run"] = flat
    if tolerance is not None:
        result["gate"] = {"baseline": labels[0], "tolerance": tolerance, "regressions": {
            lab: analysis.regressions(summaries[0], s, tolerance)
            for lab, s in zip(labels[1:], summaries[1:], strict=True)}}
    (out / COMPARE_JSON).write_text(json.dumps(result, indent=2, sort_keys=False,
                                               allow_nan=False) + "\n", encoding="utf-8")
    write_compare_html(result, summaries, images, out / COMPARE_HTML)
    return result


def run_labels(dirs: Sequence[Path]) -> list[str]:
    """Each run's directory name, made unique with #2, #3 ... when two are alike."""
    labels: list[str] = []
    for d in dirs:
        label, n = d.resolve().name or str(d), 1
        while label in labels:
            n += 1
            label = f"{d.resolve().name}#{n}"
        labels.append(label)
    return labels


def summary_json(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """A run's summary.json and where it came from; None when it has none (or a
    corrupt one: the caller computes it rather than fail)."""
    try:
        existing = rundir.read_json(run_dir, rundir.SUMMARY)
    except ValueError:
        existing = None
    if isinstance(existing, dict) and existing:
        return existing, rundir.SUMMARY
    return None, ""


def run_summary(run: analysis.Run) -> tuple[dict[str, Any], str]:
    """summary.json when the run has one, else the analysis's summary (not written)."""
    summary, source = summary_json(run.dir)
    if summary is not None:
        return summary, source
    return analysis.summary(run), "computed (no summary.json)"


# -- the headline table -----------------------------------------------------------------------

def headline_rows(summaries: Sequence[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """(metric, one value per run): plain JSON values, None where a run has no such number."""
    rows: list[tuple[str, list[Any]]] = []

    def add(metric: str, get: Callable[[dict[str, Any]], Any]) -> None:
        values = []
        for s in summaries:
            try:
                values.append(get(s))
            except (KeyError, TypeError, AttributeError, StopIteration):
                values.append(None)
        if any(v is not None for v in values):
            rows.append((metric, values))

    add("scenario", lambda s: s["run"]["name"])
    add("status", lambda s: s["run"]["status"])
    add("duration (s)", lambda s: s["run"]["duration_s"])
    add("users", lambda s: s["run"]["users"])
    add("backend / instances", lambda s: f"{s['run']['backend']} / {s['run']['instances']}")
    add("requests", lambda s: s["requests"]["total"])
    add("requests ok", lambda s: s["requests"]["ok"])
    add("error frames, client", lambda s: sum(e["client"] for e in s["errors"].values()))
    add("error frames, server", lambda s: sum(e["server"] for e in s["errors"].values()))
    codes = sorted({c for s in summaries for c in (s.get("errors") or {})})
    for code in codes:
        add(f"{code} (client, per s)",
            lambda s, code=code: (s["errors"][code]["client_per_s"]
                                  if code in s["errors"] else 0.0))
    closes = sorted({c for s in summaries for c in (s.get("closes") or {})}, key=str)
    for code in closes:
        add(f"close {code} {close_name(code, {})} (server)",
            lambda s, code=code: s["closes"][code]["server"] if code in s["closes"] else 0)
    ops = [op for op in LATENCY_OPS if any(op in (s.get("latency_ms") or {}) for s in summaries)]
    for op in ops:
        add(f"{op} p50 (ms)", lambda s, op=op: s["latency_ms"][op]["p50"])
        add(f"{op} p99 (ms)", lambda s, op=op: s["latency_ms"][op]["p99"])
    add("delivery p50 (ms)", lambda s: s["delivery_latency_ms"]["p50"])
    add("delivery p99 (ms)", lambda s: s["delivery_latency_ms"]["p99"])
    add("published msgs/s (mean)", lambda s: s["throughput"]["published_per_s_mean"])
    add("delivered msgs/s (mean)", lambda s: s["throughput"]["delivered_per_s_mean"])
    for key in ("lost", "duplicates"):
        add(f"deliveries {key}", lambda s, key=key: s["delivery"][key])
    policies = sorted({p for s in summaries for p in (s.get("retry_amplification") or {})})
    for policy in policies:
        add(f"retry amplification, {policy} (x)",
            lambda s, policy=policy: s["retry_amplification"][policy]["amplification"])
    faults = sorted({(r["id"], r["kind"]) for s in summaries for r in (s.get("recovery") or [])
                     if r.get("recovered_s") is not None})
    for fid, kind in faults:
        add(f"recovery after {fid} {kind} (s)",
            lambda s, fid=fid, kind=kind: next((r["recovered_s"] for r in s["recovery"]
                                                if (r["id"], r["kind"]) == (fid, kind)), None))
    add("never-retry repeats", lambda s: s["never_retry_violations"]["repeats"])
    add("client and server agree", lambda s: s["reconciliation"]["agree"])
    add("sustainable connections", lambda s: s["capacity"]["sustainable_connections"])
    add("sustainable msgs/s", lambda s: s["capacity"]["sustainable_msgs_per_s"])
    add("warnings", lambda s: len(s["warnings"]))
    return rows


def row_cells(values: Sequence[Any]) -> list[str]:
    """One row's values formatted alike: the decimals the row's smallest number needs."""
    floats = [abs(v) for v in values if isinstance(v, float) and not isinstance(v, bool)
              and v == v and v != 0 and not v.is_integer()]
    digits = 0 if not floats else 3 if min(floats) < 1 else 2 if min(floats) < 10 else 1
    out = []
    for v in values:
        if isinstance(v, bool):
            out.append("yes" if v else "no")
        elif isinstance(v, float):
            out.append(num(v, digits))
        else:
            out.append(num(v))
    return out


def text_rows(result: dict[str, Any]) -> list[str]:
    """The headline table: a column per run, or (many runs) a row per run."""
    labels = [r["label"] for r in result["runs"]]
    if "per_run" in result:
        return compare_many.text_rows(result["per_run"])
    return text.text_table(["metric", *labels],
                           [[row["metric"], *row_cells([row["values"][lab] for lab in labels])]
                            for row in result["headline"]])


# -- overlay charts ---------------------------------------------------------------------------

def shade_runs(ax: Any, runs: Sequence[analysis.Run], labels: Sequence[str]) -> None:
    """The runs' fault windows, each distinct window once, labelled with its runs.

    A window all runs share is grey; one only some runs had takes the first such run's
    colour. Faults scheduled after a run ended never happened in it and are left out.
    """
    shared: dict[tuple[Any, ...], list[int]] = {}
    rows: dict[tuple[Any, ...], Any] = {}
    for i, run in enumerate(runs):
        for w in charts.faults_within(run).itertuples(index=False):
            end = None if w.open_ended else float(w.end_s)  # open-ended: to each run's end
            key = (w.id, w.kind, float(w.start_s), end, bool(w.one_shot))
            shared.setdefault(key, []).append(i)
            rows.setdefault(key, w)
    if not rows:
        return
    records, owners = [], []
    for key, w in rows.items():
        who = shared[key]
        names = "all runs" if len(who) == len(runs) else ", ".join(labels[i] for i in who)
        records.append({**w._asdict(), "label": f"{w.label} ({names})"})
        owners.append(None if len(who) == len(runs) else who[0])
    frame = pd.DataFrame(records)

    def colour_of(j: int) -> Any:
        owner = owners[j]
        if owner is None:
            return charts.ONE_SHOT_COLOUR if frame.one_shot.iloc[j] else charts.SPAN_COLOURS[0]
        return charts.colour(owner)

    charts.shade_faults(ax, frame, colour_of=colour_of)


def longest(runs: Sequence[analysis.Run]) -> float:
    return max((r.duration_s for r in runs), default=0.0)


def error_rate_overlay(runs: Sequence[analysis.Run], summaries: Sequence[dict[str, Any]],
                       labels: Sequence[str], out: Path) -> Path:
    name, title = "compare-error-rate.png", "Which run got more errors of each code, and when?"
    rates = [analysis.error_rates(run, bin_s=1.0, side="client") for run in runs]
    totals: dict[str, float] = {}
    for frame in rates:
        for code in frame.columns:
            totals[str(code)] = totals.get(str(code), 0.0) + float(frame[code].sum())
    codes = [c for c, t in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])) if t > 0]
    if not codes:
        return charts.no_data(out, name, title, "no run's clients received an error frame")
    shown, rest = codes[:MAX_CODES], codes[MAX_CODES:]
    fig, axes = charts.new_figure(len(shown), 1, height=1.4 + 1.9 * len(shown), sharex=True)
    for row, code in enumerate(shown):
        ax = axes[row][0]
        for i, (frame, label) in enumerate(zip(rates, labels, strict=True)):
            if code in frame.columns:
                ax.plot(frame.index.to_numpy(dtype=float), frame[code].to_numpy(dtype=float),
                        drawstyle="steps-post", color=charts.colour(i), linewidth=1.3,
                        label=label)
        shade_runs(ax, runs, labels)  # every panel; the legend is the top one's
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"{code}\nerrors/s", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.set_xlim(0, longest(runs) or None)
    axes[-1][0].set_xlabel(charts.TIME_LABEL)
    more = f"; not shown: {', '.join(rest)}" if rest else ""
    axes[0][0].set_title(f"{title} (client side, 1 s bins, one panel per code{more})",
                         loc="left", fontsize=11)
    charts.legend_outside(axes[0][0], title="run / fault")
    return charts.save(fig, out, name)


def attempts_chart(runs: Sequence[analysis.Run], summaries: Sequence[dict[str, Any]],
                   labels: Sequence[str], out: Path) -> Path:
    name = "compare-attempts.png"
    title = "How many attempts per operation did each run's retry policies make?"
    bars = []
    for i, (summary, label) in enumerate(zip(summaries, labels, strict=True)):
        for policy, a in sorted((summary.get("retry_amplification") or {}).items()):
            if a.get("amplification") is not None:
                bars.append((f"{label} · {policy}", float(a["amplification"]),
                             int(a.get("attempts") or 0), int(a.get("operations") or 0), i))
    if not bars:
        return charts.no_data(out, name, title, "no run recorded client requests")
    bars.reverse()
    fig, axes = charts.new_figure(height=max(2.8, 1.4 + 0.45 * len(bars)))
    ax = axes[0][0]
    y = np.arange(len(bars))
    for yy, (_lab, amp, attempts, ops, i) in zip(y, bars, strict=True):
        ax.barh(yy, amp, 0.6, color=charts.colour(i))
        ax.text(amp, yy, f"  {amp:.3f}x  ({attempts:,} attempts / {ops:,} operations)",
                va="center", fontsize=8)
    ax.axvline(1.0, color="#333333", linestyle=":", label="1.0x = no retries")
    ax.set_yticks(y, [b[0] for b in bars], fontsize=9)
    ax.set_xlim(0, max(1.0, max(b[1] for b in bars)) * 1.7)
    ax.set_xlabel("attempts per operation (x): every request sent / first tries")
    ax.set_ylabel("run · retry policy")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(title, loc="left", fontsize=11)
    charts.legend_outside(ax)
    return charts.save(fig, out, name)


def latency_overlay(runs: Sequence[analysis.Run], summaries: Sequence[dict[str, Any]],
                    labels: Sequence[str], out: Path) -> Path:
    name = "compare-latency-p99.png"
    title = "Which run was slower, and when? (p99 latency of successful requests)"
    frames = [analysis.latency_over_time(run, bin_s=charts.BIN_LATENCY_S, percentiles=(50, 99))
              for run in runs]
    ops = [op for op in LATENCY_OPS
           if any(len(f) and (f["op"] == op).any() and f.loc[f["op"] == op, "p99"].notna().any()
                  for f in frames)]
    if not ops:
        return charts.no_data(out, name, title, "no run has successful requests with a latency")
    fig, axes = charts.new_figure(len(ops), 1, height=1.4 + 2.0 * len(ops), sharex=True)
    for row, op in enumerate(ops):
        ax = axes[row][0]
        for i, (frame, label) in enumerate(zip(frames, labels, strict=True)):
            part = frame[frame["op"] == op] if len(frame) else frame
            if not len(part):
                continue
            grid = np.arange(0.0, float(part["ts"].max()) + charts.BIN_LATENCY_S / 2,
                             charts.BIN_LATENCY_S)
            p99 = part.set_index("ts")["p99"].reindex(grid).to_numpy(dtype=float)
            ax.plot(grid + charts.BIN_LATENCY_S / 2, p99, color=charts.colour(i), marker=".",
                    linewidth=1.3, label=label)
        shade_runs(ax, runs, labels)  # every panel; the legend is the top one's
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"{op} p99\n(ms)", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.set_xlim(0, longest(runs) or None)
    axes[-1][0].set_xlabel(charts.TIME_LABEL)
    axes[0][0].set_title(f"{title}, {charts.BIN_LATENCY_S:g} s bins", loc="left", fontsize=11)
    charts.legend_outside(axes[0][0], title="run / fault")
    return charts.save(fig, out, name)


def throughput_overlay(runs: Sequence[analysis.Run], summaries: Sequence[dict[str, Any]],
                       labels: Sequence[str], out: Path) -> Path:
    name = "compare-throughput.png"
    title = "Which run got more messages through, and when?"
    frames = [analysis.throughput(run, bin_s=1.0) for run in runs]
    if not any(len(f) and (f["published_per_s"] > 0).any() for f in frames):
        return charts.no_data(out, name, title, "no run published a message")
    fig, axes = charts.new_figure()
    ax = axes[0][0]
    for i, (frame, label) in enumerate(zip(frames, labels, strict=True)):
        if len(frame):
            ax.plot(frame["ts"].to_numpy(dtype=float),
                    frame["published_per_s"].to_numpy(dtype=float), color=charts.colour(i),
                    drawstyle="steps-post", linewidth=1.3, label=label)
    shade_runs(ax, runs, labels)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("accepted publishes per second")
    ax.set_xlabel(charts.TIME_LABEL)
    ax.set_xlim(0, longest(runs) or None)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{title} (accepted publishes/s, server counters, 1 s bins)", loc="left",
                 fontsize=11)
    charts.legend_outside(ax, title="run / fault")
    return charts.save(fig, out, name)


COMPARE_CHARTS = (error_rate_overlay, latency_overlay, throughput_overlay, attempts_chart)
COMPARE_CAPTIONS = {
    "compare-error-rate.png": "Error frames per second the clients received, one panel per "
                              "code, one line per run. Fault windows are shaded in the run's "
                              "colour.",
    "compare-latency-p99.png": "p99 latency of successful requests per operation over time, "
                               "one line per run; a gap means no successful request there.",
    "compare-throughput.png": "Publishes the server accepted per second: what got through.",
    "compare-by-run.png": compare_many.CAPTION,
    "compare-attempts.png": "Attempts per operation for each run and retry policy; 1.0x means "
                            "no retries. More attempts for the same work is extra load.",
}


# -- compare.html ---------------------------------------------------------------------------

def write_compare_html(result: dict[str, Any], summaries: Sequence[dict[str, Any]],
                       images: Sequence[Path], path: Path) -> Path:
    labels = [r["label"] for r in result["runs"]]
    runs_table = page.html_table(
        ["run", "scenario", "description", "directory", "numbers from"],
        [[r["label"], r.get("name") or "", (s.get("run") or {}).get("description") or "",
          r["dir"], r["summary"]] for r, s in zip(result["runs"], summaries, strict=True)])
    if "per_run" in result:
        headline = page.html_table(compare_many.header(),
                                   compare_many.rows(result["per_run"]),
                                   numeric=tuple(range(2, len(compare_many.header()))))
    else:
        headline = page.html_table(
            ["metric", *labels],
            [[row["metric"], *row_cells([row["values"][lab] for lab in labels])]
             for row in result["headline"]], numeric=tuple(range(1, len(labels) + 1)))
    figures = "".join(page.figure(p, COMPARE_CAPTIONS.get(p.name, ""),
                                COMPARE_CAPTIONS.get(p.name, p.stem)) for p in images)
    warnings = ""
    for label, s in zip(labels, summaries, strict=True):
        items = s.get("warnings") or []
        if items:
            warnings += f"<h3>{esc(label)}</h3>" + page.warn_list(items)
    doc = page.document(
        f"rtmsim comparison: {', '.join(labels[:compare_many.MAX_OVERLAY_RUNS])}"
        + (f" and {len(labels) - compare_many.MAX_OVERLAY_RUNS} more"
           if len(labels) > compare_many.MAX_OVERLAY_RUNS else ""),
        f"<h1>rtmsim comparison of {len(labels)} runs</h1>"
        + page.para(f"created {result['created']}", "muted")
        + page.section("runs", "Runs", "the runs compared; each run's own report.html has "
                       "the details.", runs_table)
        + page.section("headline", "Headline numbers side by side",
                       ("one row per run (many runs)" if "per_run" in result
                        else "one row per number, one column per run")
                       + "; '-' means the run has no such number. Rates are per second "
                       "of scenario time, latencies in milliseconds of successful requests.",
                       headline)
        + page.section("charts", "Charts",
                       "each chart's title is the question it answers; every line's colour "
                       "is one run, the same in every chart.", figures)
        + page.section("warnings", "Warnings per run",
                       "what each run's analysis flagged; see its report for details.",
                       warnings or page.para("No run has warnings.", "ok")))
    path.write_text(doc, encoding="utf-8")
    return path
