"""A run's report: `summary.json`, the charts and one self-contained `report.html`.

Every number comes from `sim.analysis` (through the summary it writes, or the
charts); this module arranges and prints them. The per-code tables take each code's
meaning and retry guidance from `server.codes`, the one code table. The HTML file has
no external assets (images are base64 PNGs, the CSS is inline), so it can be mailed
or attached to a ticket as it is.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from server.codes import CLOSE_CODES, ERROR_CODES

from . import analysis, charts, rundir
from .run import RunError

MISSING = "-"
CAPACITY_CHART = "capacity.png"  # shown in the capacity section, not among the charts


# -- entry points -------------------------------------------------------------------------

def build_all(run_dir: str | Path) -> dict[str, Any]:
    """summary.json, charts/*.png and report.html for a run directory; the summary."""
    run_dir = require_run_dir(run_dir)
    summary = analysis.write_summary(run_dir)
    run = analysis.load_run(run_dir)
    images = charts.render_all(run, run_dir / rundir.CHARTS)
    write_report(run, summary, run_dir / rundir.REPORT, images)
    return summary


def require_run_dir(path: str | Path) -> Path:
    """The path as a run directory, or a RunError naming what is wrong with it."""
    p = Path(path)
    if not p.exists():
        raise RunError(f"{p}: no such directory; pass a run directory written by "
                       "`rtmsim run` (results/<name>-<timestamp>)")
    if not p.is_dir():
        raise RunError(f"{p}: not a directory; pass a run directory written by `rtmsim run`")
    if not rundir.is_run_dir(p):
        raise RunError(f"{p}: not a run directory (no {rundir.RUN}); pass a directory "
                       "written by `rtmsim run`")
    try:
        meta = rundir.read_json(p, rundir.RUN)
    except ValueError as exc:  # json.JSONDecodeError
        raise RunError(f"{p / rundir.RUN}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise RunError(f"{p / rundir.RUN}: expected a JSON object")
    if not any(p.glob(rundir.CLIENT_EVENTS_GLOB)) and not (p / rundir.SERVER_EVENTS).exists():
        raise RunError(f"{p}: no client events ({rundir.CLIENT_EVENTS_GLOB}) and no "
                       f"{rundir.SERVER_EVENTS}: nothing to analyse (did the run start?)")
    return p


# -- the terminal summary -----------------------------------------------------------------

def print_summary(summary: dict[str, Any], run_dir: str | Path) -> None:
    """The headline numbers as plain-text tables, then where the report is."""
    for line in summary_lines(summary):
        print(line)
    print(f"report: {Path(run_dir) / rundir.REPORT}")


def summary_lines(summary: dict[str, Any]) -> list[str]:
    meta = summary.get("run") or {}
    out = [f"== {meta.get('name') or 'run'}: {meta.get('status') or '?'}, "
           f"{num(meta.get('duration_s'))} s, {num(meta.get('users'))} users, "
           f"{meta.get('backend') or '?'} backend, {num(meta.get('instances'))} instance(s)"]
    req = summary.get("requests") or {}
    out.append(f"requests: {num(req.get('total'))} ({num(req.get('ok'))} ok)")

    errors = summary.get("errors") or {}
    out.append("")
    if errors:
        out += text_table(
            ["error code", "client", "server", "diff", "client/s", "server/s", "per 1k req",
             "retry guidance"],
            [[code, num(e.get("client")), num(e.get("server")), signed(e.get("diff")),
              num(e.get("client_per_s"), 2), num(e.get("server_per_s"), 2),
              num(e.get("per_1000_requests"), 2), error_guidance(code, e)]
             for code, e in by_count(errors)])
    else:
        out.append("error codes: none")
    closes = summary.get("closes") or {}
    if closes:
        out.append("")
        out += text_table(
            ["close code", "client", "server", "diff", "server/s", "guidance"],
            [[f"{code} {close_name(code, c)}", num(c.get("client")), num(c.get("server")),
              signed(c.get("diff")), num(c.get("server_per_s"), 2), close_guidance(code, c)]
             for code, c in by_count(closes)])

    latency = summary.get("latency_ms") or {}
    rows = [[op, num(v.get("count")), num(v.get("p50"), 1), num(v.get("p90"), 1),
             num(v.get("p99"), 1), num(v.get("p99.9"), 1), num(v.get("max"), 1)]
            for op, v in latency.items()]
    d = summary.get("delivery_latency_ms") or {}
    if d.get("count"):
        rows.append(["delivery", num(d.get("count")), num(d.get("p50"), 1),
                     num(d.get("p90"), 1), num(d.get("p99"), 1), num(d.get("p99.9"), 1),
                     num(d.get("max"), 1)])
    if rows:
        out.append("")
        out += text_table(["latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"], rows)

    acct = summary.get("delivery") or {}
    if acct:
        out.append("")
        order = [k for k in DELIVERY_FIELDS if k in acct] + [k for k in acct
                                                             if k not in DELIVERY_FIELDS]
        out.append("delivery: " + ", ".join(f"{k.replace('_', ' ')} {num(acct[k])}"
                                            for k in order))
    tp = summary.get("throughput") or {}
    if tp.get("published_per_s_mean") is not None:
        out.append(f"throughput: published {num(tp.get('published_per_s_mean'), 1)}/s mean "
                   f"(peak {num(tp.get('published_per_s_peak'), 1)}), delivered "
                   f"{num(tp.get('delivered_per_s_mean'), 1)}/s mean "
                   f"(peak {num(tp.get('delivered_per_s_peak'), 1)})")
    for policy, a in (summary.get("retry_amplification") or {}).items():
        out.append(f"retry amplification: {policy} {num(a.get('amplification'), 3)}x "
                   f"({num(a.get('attempts'))} attempts / {num(a.get('operations'))} "
                   f"operations, {num(a.get('retried'))} retried)")
    for r in summary.get("recovery") or []:
        if r.get("recovered_s") is not None:
            out.append(f"recovery: {r.get('id')} {r.get('kind')} healthy again "
                       f"{num(r.get('recovered_s'), 1)} s after it ended")
    cap = summary.get("capacity")
    if cap:
        out.append(f"capacity: {cap.get('verdict')}")

    warnings = summary.get("warnings") or []
    out.append("")
    out.append(f"warnings ({len(warnings)}):" if warnings else "warnings: none")
    out += [f"  ! {w}" for w in warnings]
    return out


def text_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Columns padded to width; text left-aligned, numbers right-aligned."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(header)]
    numeric = [bool(rows) and all(is_numberish(r[i]) for r in rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if n else c.ljust(w)
                 for c, w, n in zip(cells, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return [line([str(h) for h in header]), *(line(r) for r in rows)]


def is_numberish(text: str) -> bool:
    return text == MISSING or text.replace(",", "").replace(".", "", 1).lstrip("+-").isdigit()


# -- formatting -----------------------------------------------------------------------------

def num(value: Any, digits: int = 0) -> str:
    """1234 -> "1,234"; floats to `digits` decimals; None/NaN -> "-"."""
    if value is None or isinstance(value, bool):
        return MISSING if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(f):
        return MISSING
    if digits == 0:
        return f"{round(f):,}"
    return f"{f:,.{digits}f}"


def signed(value: Any) -> str:
    if isinstance(value, int | float) and value and math.isfinite(value):
        return f"{value:+,}" if isinstance(value, int) else f"{value:+,.0f}"
    return num(value)


def error_guidance(code: str, entry: dict[str, Any]) -> str:
    known = ERROR_CODES.get(code)
    return known.guidance if known else str(entry.get("retry") or "unknown code: tolerate it")


def error_meaning(code: str, entry: dict[str, Any]) -> str:
    known = ERROR_CODES.get(code)
    return known.meaning if known else str(entry.get("meaning") or "not in the code table")


def close_name(code: str | int, entry: dict[str, Any]) -> str:
    known = CLOSE_CODES.get(int(code)) if str(code).lstrip("-").isdigit() else None
    return known.name if known else str(entry.get("name") or "unknown")


def close_guidance(code: str | int, entry: dict[str, Any]) -> str:
    known = CLOSE_CODES.get(int(code)) if str(code).lstrip("-").isdigit() else None
    return known.guidance if known else str(entry.get("guidance") or "")


def close_meaning(code: str | int, entry: dict[str, Any]) -> str:
    known = CLOSE_CODES.get(int(code)) if str(code).lstrip("-").isdigit() else None
    return known.meaning if known else str(entry.get("meaning") or "not in the code table")


def by_count(section: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Most frequent code first (the larger of the two sides), ties by code.

    summary.json is written with sorted keys; a reader scans a table from the top.
    """
    def most(item: tuple[str, dict[str, Any]]) -> tuple[float, str]:
        entry = item[1]
        return (-max(float(entry.get("client") or 0), float(entry.get("server") or 0)),
                str(item[0]))

    return sorted(section.items(), key=most)


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def when(unix: Any) -> str:
    if not isinstance(unix, int | float) or unix <= 0:
        return MISSING
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- HTML building blocks -------------------------------------------------------------------

def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *,
               numeric: Sequence[int] = (), row_class: Sequence[str] | None = None,
               cls: str = "") -> str:
    """A table; cells are escaped here, so callers pass plain text."""
    head = "".join(f"<th{' class=num' if i in numeric else ''}>{esc(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for r, cells in enumerate(rows):
        klass = f' class="{esc(row_class[r])}"' if row_class and row_class[r] else ""
        tds = "".join(f"<td{' class=num' if i in numeric else ''}>{esc(c)}</td>"
                      for i, c in enumerate(cells))
        body.append(f"<tr{klass}>{tds}</tr>")
    table_cls = f' class="{esc(cls)}"' if cls else ""
    return (f"<table{table_cls}><thead><tr>{head}</tr></thead><tbody>"
            f"{''.join(body)}</tbody></table>")


def section(anchor: str, title: str, how: str, body: str) -> str:
    return (f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>'
            f'<p class="how"><b>How to read this:</b> {esc(how)}</p>{body}</section>')


def para(text: str, cls: str = "") -> str:
    return f'<p{f" class={esc(cls)}" if cls else ""}>{esc(text)}</p>'


def embedded_png(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
  margin:0;background:#f6f6f4}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:34px 0 6px;
  border-bottom:2px solid #e4e4e0;padding-bottom:4px}h3{font-size:16px;margin:18px 0 6px}
p.how{color:#555;font-size:13.5px;margin:2px 0 12px;background:#f3f6fa;padding:6px 10px;
  border-left:3px solid #8fb3d9}
p.lede{color:#444;margin:2px 0 10px}p.muted{color:#777;font-size:13px}
nav{font-size:13.5px;margin:10px 0 4px}nav a{margin-right:12px;color:#2a5d9f}
table{border-collapse:collapse;margin:6px 0 14px;font-size:13.5px;min-width:40%}
table.wide{width:100%}
th,td{border-bottom:1px solid #e6e6e6;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#fafafa;font-weight:600}td.num,th.num{text-align:right;
  font-variant-numeric:tabular-nums;white-space:nowrap}
tr.bad td{background:#fdecea}tr.clientbug td:first-child{color:#8a3b00}
table.kv{width:auto}table.kv th{width:220px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:10px;
  margin:8px 0 10px}
.card{border:1px solid #e2e2de;border-radius:6px;padding:8px 12px;background:#fcfcfb}
.card .v{font-size:21px;font-weight:600}.card .k{font-size:12.5px;color:#666}
.card.bad{border-color:#e0a39a;background:#fdf3f1}
ul.warn{background:#fff7e0;border:1px solid #f0d48a;border-radius:6px;padding:8px 10px 8px 30px}
ul.warn li{margin:3px 0}.ok{color:#2e7d32;font-weight:600}
figure{margin:12px 0 22px}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:13px;color:#555;margin-top:4px}
pre{background:#f7f7f5;border:1px solid #e4e4e0;padding:10px;overflow:auto;font-size:12.5px;
  max-height:420px}
code{background:#f2f2ef;padding:0 3px;border-radius:3px}
"""


# -- the report -----------------------------------------------------------------------------

def write_report(run: analysis.Run, summary: dict[str, Any], path: str | Path,
                 images: Sequence[Path] | None = None) -> Path:
    """One self-contained HTML file for the run; renders the charts when not given."""
    path = Path(path)
    if images is None:
        images = charts.render_all(run, path.parent / rundir.CHARTS)
    parts = [
        ("scenario", "Scenario", scenario_section(run, summary)),
        ("headline", "Headline numbers", headline_section(summary)),
        ("warnings", "Warnings", warnings_section(summary)),
        ("errors", "Errors by code", errors_section(summary)),
        ("closes", "Closes by code", closes_section(summary)),
        ("charts", "Charts", charts_section([p for p in images
                                             if Path(p).name != CAPACITY_CHART])),
        ("latency", "Latency", latency_section(summary)),
        ("delivery", "Delivery", delivery_section(summary)),
        ("retries", "Retries", retries_section(summary)),
        ("faults", "Faults, recovery and reconnect storms", faults_section(summary)),
        ("quota", "Quota and billing", quota_section(summary)),
    ]
    if summary.get("capacity"):
        capacity_image = next((p for p in images if Path(p).name == CAPACITY_CHART), None)
        parts.insert(2, ("capacity", "Capacity", capacity_section(summary, capacity_image)))
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _ in parts)
    meta = summary.get("run") or {}
    name = meta.get("name") or run.meta.get("name") or run.dir.name
    doc = (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>rtmsim report: {esc(name)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>rtmsim report: {esc(name)}</h1>"
        f'<p class="lede">{esc(meta.get("description") or run.meta.get("description") or "")}'
        f"</p>{para(run_line(run, summary), 'muted')}<nav>{nav}</nav>"
        + "".join(body for _, _, body in parts)
        + para(f"Generated by rtmsim from {run.dir} (summary.json holds every number "
               "above; `rtmsim analyze RUN_DIR` regenerates this file).", "muted")
        + "</main></body></html>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc, encoding="utf-8")
    return path


def run_line(run: analysis.Run, summary: dict[str, Any]) -> str:
    meta = summary.get("run") or {}
    machine = run.meta.get("machine") or {}
    bits = [f"status {meta.get('status') or '?'}",
            f"started {when(run.meta.get('started'))}",
            f"{num(meta.get('duration_s'))} s", f"{num(meta.get('users'))} users",
            f"{meta.get('model') or '?'} model"]
    if meta.get("shape"):
        bits.append(f"shape {meta['shape']}")
    bits += [f"{meta.get('backend') or '?'} backend", f"{num(meta.get('instances'))} "
             "instance(s)", f"{num(meta.get('workers'))} Locust worker(s)",
             f"seed {meta.get('seed')}"]
    if machine:
        bits.append(f"{machine.get('cpus', '?')} CPUs, Python {machine.get('python', '?')}")
    return " · ".join(bits)


def scenario_section(run: analysis.Run, summary: dict[str, Any]) -> str:
    meta = summary.get("run") or {}
    toml_path = run.dir / rundir.SCENARIO
    toml = (toml_path.read_text(encoding="utf-8") if toml_path.exists()
            else f"({rundir.SCENARIO} is missing from the run directory)")
    faults = summary.get("faults") or []
    body = html_table(["name", "description"], [[meta.get("name") or MISSING,
                                                 meta.get("description") or MISSING]])
    if faults:
        body += "<h3>Faults injected</h3>" + html_table(
            ["id", "kind", "when"],
            [[f.get("id"), f.get("kind"), fault_when(f)] for f in faults])
    body += ("<details open><summary>The scenario file as run (overrides applied)</summary>"
             f"<pre>{esc(toml)}</pre></details>")
    return section("scenario", "Scenario",
                   "what was run: the server's config, the faults and the swarm of simulated "
                   "clients. Every chart below marks the faults' windows.", body)


def fault_when(f: dict[str, Any]) -> str:
    if f.get("open_ended"):
        return f"whole run, from {num(f.get('start_s'), 1)} s"
    if f.get("one_shot"):
        return f"once, at {num(f.get('start_s'), 1)} s"
    return f"{num(f.get('start_s'), 1)} s to {num(f.get('end_s'), 1)} s"


def card(value: str, label: str, *, bad: bool = False) -> str:
    return (f'<div class="card{" bad" if bad else ""}"><div class="v">{esc(value)}</div>'
            f'<div class="k">{esc(label)}</div></div>')


def headline_section(summary: dict[str, Any]) -> str:
    req = summary.get("requests") or {}
    errors = summary.get("errors") or {}
    closes = summary.get("closes") or {}
    lat = summary.get("latency_ms") or {}
    dl = summary.get("delivery_latency_ms") or {}
    acct = summary.get("delivery") or {}
    tp = summary.get("throughput") or {}
    rec = summary.get("reconciliation") or {}
    client_errors = sum(int(e.get("client") or 0) for e in errors.values())
    server_errors = sum(int(e.get("server") or 0) for e in errors.values())
    cards = [card(num(req.get("total")), f"client requests ({num(req.get('ok'))} ok)"),
             card(f"{num(client_errors)} / {num(server_errors)}",
                  "error frames: client saw / server sent", bad=client_errors != server_errors),
             card(num(sum(int(c.get("server") or 0) for c in closes.values())),
                  "connections closed by the server")]
    for op in ("publish", "send", "subscribe", "connect"):
        if op in lat:
            cards.append(card(f"{num(lat[op].get('p50'), 1)} / {num(lat[op].get('p99'), 1)}",
                              f"{op} latency p50 / p99 (ms)"))
    if dl.get("count"):
        cards.append(card(f"{num(dl.get('p50'), 1)} / {num(dl.get('p99'), 1)}",
                          "delivery latency p50 / p99 (ms)"))
    if tp.get("published_per_s_mean") is not None:
        for what in ("published", "delivered"):
            peak = num(tp.get(f"{what}_per_s_peak"), 1)
            cards.append(card(num(tp.get(f"{what}_per_s_mean"), 1),
                              f"{what} msgs/s, mean (peak {peak})"))
    if acct:
        cards.append(card(f"{num(acct.get('delivered'))} / {num(acct.get('expected'))}",
                          "owed deliveries received", bad=bool(acct.get("lost"))))
        cards.append(card(num(acct.get("lost")), "deliveries lost", bad=bool(acct.get("lost"))))
    for policy, a in (summary.get("retry_amplification") or {}).items():
        cards.append(card(f"{num(a.get('amplification'), 3)}x",
                          f"retry amplification, policy {policy}"))
    cards.append(card("yes" if rec.get("agree") else "no", "client and server counts agree",
                      bad=not rec.get("agree")))
    n_warn = len(summary.get("warnings") or [])
    cards.append(card(num(n_warn), "warnings", bad=bool(n_warn)))
    return section("headline", "Headline numbers",
                   "one card per number; a red card needs a look (see Warnings). Latencies "
                   "are of successful requests, in milliseconds, measured by the clients.",
                   f'<div class="cards">{"".join(cards)}</div>'
                   + para((summary.get("method") or {}).get("percentiles", ""), "muted"))


def warnings_section(summary: dict[str, Any]) -> str:
    warnings = summary.get("warnings") or []
    if warnings:
        body = '<ul class="warn">' + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>"
    else:
        body = ('<p class="ok">No warnings: client and server counts agree, nothing was lost '
                "and no client repeated a never-retry code.</p>")
    nrv = summary.get("never_retry_violations") or {}
    top = nrv.get("top_offenders") or []
    if top:
        body += ("<h3>Clients that retried a never-retry code (top offenders)</h3>"
                 + para(f"{num(nrv.get('connections'))} connections repeated an operation after "
                        f"a code whose guidance is 'never' ({num(nrv.get('repeats'))} repeats "
                        "in all). Retrying cannot succeed: these clients need fixing.")
                 + html_table(
                     ["user", "class", "connection", "code", "op", "repeats", "first (s)",
                      "last (s)"],
                     [[o.get("user") or o.get("peer"), o.get("user_class") or MISSING,
                       f"{o.get('instance')}/{o.get('conn')}", o.get("code"),
                       o.get("op") or "(unparsed frame)", num(o.get("repeats")),
                       num(o.get("first_ts"), 2), num(o.get("last_ts"), 2)] for o in top],
                     numeric=(5, 6, 7)))
    rec = summary.get("reconciliation") or {}
    diffs = rec.get("differences") or []
    if diffs:
        body += ("<h3>Unreconciled counts</h3>"
                 + para("Client and server disagree here; each line names the difference.")
                 + '<ul class="warn">' + "".join(f"<li>{esc(d)}</li>" for d in diffs) + "</ul>")
    msgs = [(k, rec[k]) for k in ("published", "sent", "delivered") if isinstance(rec.get(k), dict)]
    if msgs:
        body += "<h3>Message counts, client vs server</h3>" + html_table(
            ["messages", "client", "server", "diff"],
            [[k, num(v.get("client")), num(v.get("server")), signed(v.get("diff"))]
             for k, v in msgs], numeric=(1, 2, 3),
            row_class=["bad" if v.get("diff") else "" for _, v in msgs])
    return section("warnings", "Warnings",
                   "anything that deserves a look: partial runs, clients looping on a code "
                   "that can never succeed, counts the two sides disagree on, lost or "
                   "duplicated messages. An empty list means none of these happened.", body)


def errors_section(summary: dict[str, Any]) -> str:
    errors = summary.get("errors") or {}
    if not errors:
        body = para("No error frames in this run, on either side.", "ok")
    else:
        rows, classes = [], []
        for code, e in by_count(errors):
            known = ERROR_CODES.get(code)
            rows.append([code, num(e.get("client")), num(e.get("server")), signed(e.get("diff")),
                         num(e.get("client_per_s"), 2), num(e.get("per_1000_requests"), 2),
                         error_meaning(code, e), error_guidance(code, e),
                         ("client bug" if known.is_client_fault else "service / load")
                         if known else "unknown code"])
            classes.append("bad" if e.get("diff") else ("clientbug" if known and
                                                        known.is_client_fault else ""))
        body = html_table(["code", "client", "server", "diff", "client /s", "per 1000 req",
                           "meaning", "retry guidance", "whose problem"], rows,
                          numeric=(1, 2, 3, 4, 5), row_class=classes, cls="wide")
    unseen = [c for c in ERROR_CODES if c not in errors]
    if unseen:
        body += para("Codes the protocol defines that did not occur: " + ", ".join(unseen) + ".",
                     "muted")
    return section("errors", "Errors by code",
                   "an error frame answers one request; the connection stays open. 'client' "
                   "counts what the simulated clients received, 'server' what the server "
                   "sent; a non-zero diff (red row) means one side lost count. Meaning and "
                   "retry guidance come from the protocol's code table (server.codes). "
                   "'client bug' codes can only be fixed in the client; retrying them is "
                   "always wrong.", body)


def closes_section(summary: dict[str, Any]) -> str:
    closes = summary.get("closes") or {}
    if not closes:
        body = para("No connection was closed by the server or dropped.", "ok")
    else:
        body = html_table(
            ["code", "name", "client", "server", "diff", "server /s", "meaning", "guidance"],
            [[code, close_name(code, c), num(c.get("client")), num(c.get("server")),
              signed(c.get("diff")), num(c.get("server_per_s"), 2), close_meaning(code, c),
              close_guidance(code, c)] for code, c in by_count(closes)],
            numeric=(2, 3, 4, 5), row_class=["bad" if c.get("diff") else ""
                                             for _, c in by_count(closes)], cls="wide")
    return section("closes", "Closes by code",
                   "a close ends the connection. 'client' counts close frames (or dropped "
                   "sockets, 1006) the clients saw and connects refused with a close; "
                   "'server' the closes the server decided. Clients that close on their "
                   "own at the end of the run are not listed.", body)


def charts_section(images: Sequence[Path]) -> str:
    figures = []
    for image in images:
        caption = charts.CAPTIONS.get(Path(image).name, "")
        figures.append(f"<figure>{embedded_png(Path(image), caption or Path(image).stem)}"
                       f"<figcaption>{esc(caption)}</figcaption></figure>")
    return section("charts", "Charts",
                   "each chart's title is the question it answers. Shaded bands are fault "
                   "windows (labelled with the fault's id at the top), dashed vertical lines "
                   "one-shot faults (such as a deploy); faults "
                   "active for the whole run are listed in the legend but not shaded. Time "
                   "is scenario time: seconds since the run's origin.", "".join(figures))


def latency_section(summary: dict[str, Any]) -> str:
    lat = summary.get("latency_ms") or {}
    rows = [[op, num(v.get("count")), num(v.get("mean"), 1), num(v.get("p50"), 1),
             num(v.get("p90"), 1), num(v.get("p99"), 1), num(v.get("p99.9"), 1),
             num(v.get("max"), 1)] for op, v in lat.items()]
    d = summary.get("delivery_latency_ms") or {}
    if d.get("count"):
        rows.append(["delivery (publish to receive)", num(d.get("count")), num(d.get("mean"), 1),
                     num(d.get("p50"), 1), num(d.get("p90"), 1), num(d.get("p99"), 1),
                     num(d.get("p99.9"), 1), num(d.get("max"), 1)])
    body = (html_table(["operation", "count", "mean", "p50", "p90", "p99", "p99.9", "max"],
                       rows, numeric=(1, 2, 3, 4, 5, 6, 7)) if rows
            else para("No successful request carried a latency."))
    return section("latency", "Latency (ms)",
                   "p99 = 99 % of successful requests took at most this long. Request "
                   "latency runs from sending the frame to its ack; delivery latency from "
                   "the publisher's send to a subscriber's read. Failed requests are not "
                   "timed (a fast 'no' would flatter a failing run).", body)


DELIVERY_FIELDS = {
    "published": "acked publishes carrying a message id",
    "expected": "(message, subscriber) pairs owed a delivery",
    "delivered": "owed pairs delivered at least once",
    "lost": "owed pairs never delivered",
    "duplicates": "extra copies received",
    "reordered": "deliveries older than one already seen from the same publisher",
    "excluded": "subscribers whose subscription changed while the message was in flight "
                "(not owed it under at-most-once delivery)",
    "unexpected": "deliveries to a subscriber that was not owed the message",
    "reused_message_ids": "message ids a client used twice (its sequence restarted after a "
                          "reconnect): duplicates and reordered are inflated by these",
}
DELIVERY_PROBLEMS = ("lost", "duplicates", "unexpected")


def delivery_section(summary: dict[str, Any]) -> str:
    acct = summary.get("delivery") or {}
    how = ("every acknowledged publish is matched against the subscriptions that were "
           "open when it was sent, so loss is a count, not a guess. Lost, duplicate and "
           "unexpected deliveries should all be 0.")
    if not acct:
        return section("delivery", "Delivery", how, para("No delivery accounting."))
    order = [k for k in DELIVERY_FIELDS if k in acct] + [k for k in acct
                                                         if k not in DELIVERY_FIELDS]
    rows = [[k.replace("_", " "), num(acct[k]), DELIVERY_FIELDS.get(k, "")] for k in order]
    classes = ["bad" if k in DELIVERY_PROBLEMS and acct[k] else "" for k in order]
    return section("delivery", "Delivery", how,
                   html_table(["", "count", "what it counts"], rows, numeric=(1,),
                              row_class=classes))


def retries_section(summary: dict[str, Any]) -> str:
    amp = summary.get("retry_amplification") or {}
    if not amp:
        return section("retries", "Retries", "how much extra traffic retries added.",
                       para("No client requests recorded."))
    rows = [[policy, num(a.get("operations")), num(a.get("attempts")), num(a.get("retries")),
             num(a.get("retried")), f"{num(a.get('amplification'), 3)}x",
             ", ".join(a.get("user_classes") or [])] for policy, a in amp.items()]
    return section("retries", "Retries",
                   "an operation is a request's first try; attempts count every try. "
                   "Amplification = attempts / operations: 1.0x means no retries, 2.0x that "
                   "the policy doubled the load it was given - which during an outage is "
                   "the load that keeps the service down.",
                   html_table(["policy", "operations", "attempts", "retries",
                               "operations retried", "amplification", "user classes"], rows,
                              numeric=(1, 2, 3, 4, 5)))


def faults_section(summary: dict[str, Any]) -> str:
    recovery = summary.get("recovery") or []
    storms = summary.get("reconnect_storms") or []
    body = "<h3>Recovery after each fault</h3>"
    if recovery:
        body += html_table(
            ["fault", "kind", "start (s)", "end (s)", "healthy again after (s)",
             "baseline service errors /s", "baseline ok publishes /s", "note"],
            [[r.get("id"), r.get("kind"), num(r.get("start_s"), 1), num(r.get("end_s"), 1),
              num(r.get("recovered_s"), 1), num(r.get("baseline_errors_per_s"), 2),
              num(r.get("baseline_publish_per_s"), 1), r.get("note") or ""] for r in recovery],
            numeric=(2, 3, 4, 5, 6),
            row_class=["bad" if "not recovered" in str(r.get("note")) else ""
                       for r in recovery])
    else:
        body += para("No faults were injected.")
    body += "<h3>Reconnect storms</h3>"
    if storms:
        body += html_table(
            ["close code", "fault", "at (s)", "closed", "clients saw", "reconnected",
             "median delay (s)", "spread, IQR (s)", "peak reconnects /s"],
            [[f"{s.get('code')} {close_name(s.get('code'), {})}", s.get("fault_id") or MISSING,
              num(s.get("at_s"), 2), num(s.get("closed")), num(s.get("client_closed")),
              num(s.get("reconnected")), num(s.get("median_delay_s"), 2),
              num(s.get("spread_s"), 2), num(s.get("peak_reconnects_per_s"))]
             for s in storms], numeric=(2, 3, 4, 5, 6, 7, 8))
    else:
        body += para("No bursts of going-away, admin or dropped-socket closes.")
    return section("faults", "Faults, recovery and reconnect storms",
                   "recovery is measured from the end of a fault window until the server's "
                   "service-error rate and ok publishes are back at their level of the ten "
                   "seconds before it (two healthy seconds in a row; 1 s resolution). A "
                   "storm is a burst of closes; the spread of reconnect delays is what "
                   "jitter buys - a small spread with a high peak means clients came back "
                   "all at once.", body)


QUOTA_LABELS = (("messagesUsed", "messages used this period"),
                ("overageMessages", "messages billed as overage"),
                ("overageConnections", "connections billed as overage"),
                ("balance", "prepaid balance"),
                ("concurrentNow", "concurrent connections"))


def quota_section(summary: dict[str, Any]) -> str:
    quota = summary.get("quota") or {}
    if not quota:
        body = para("No usage samples (server timeline missing or ledger unreachable).")
    else:
        body = ""
        for app, fields in quota.items():
            rows = [[label, num(fields[f].get("final"), 2 if f == "balance" else 0),
                     num(fields[f].get("peak"), 2 if f == "balance" else 0)]
                    for f, label in QUOTA_LABELS if f in fields]
            body += f"<h3>app {esc(app)}</h3>" + html_table(["", "at the end", "peak"], rows,
                                                            numeric=(1, 2), cls="kv")
    return section("quota", "Quota and billing",
                   "what the service's ledger charged each app: messages count against the "
                   "plan's quota; past it, overages are billed from the balance when the plan "
                   "allows them, otherwise publishes get over_message_quota.", body)


def capacity_section(summary: dict[str, Any], image: Path | None = None) -> str:
    cap = summary.get("capacity") or {}
    knee = cap.get("knee") or {}
    body = para(str(cap.get("verdict") or ""))
    if image is not None:
        caption = charts.CAPTIONS.get(CAPACITY_CHART, "")
        body += (f"<figure>{embedded_png(Path(image), caption)}"
                 f"<figcaption>{esc(caption)}</figcaption></figure>")
    body += html_table(["", "value"], [
        ["sustainable connections", num(cap.get("sustainable_connections"))],
        ["sustainable messages/s", num(cap.get("sustainable_msgs_per_s"), 1)],
        ["knee (last step within limits)",
         f"step {knee.get('step')}, {num(knee.get('users'))} users" if knee else MISSING],
        ["limit crossed", cap.get("limit") or "none up to the last step"],
        ["limits", f"p99 publish <= {num(cap.get('p99_limit_ms'), 0)} ms, error rate <= "
                   f"{num(100 * (cap.get('error_rate_limit') or 0), 1)} %"]],
        cls="kv", numeric=())
    steps = cap.get("steps") or []
    if steps:
        knee_step = knee.get("step")
        body += "<h3>Load steps</h3>" + html_table(
            ["step", "users", "from (s)", "to (s)", "connections", "msgs/s", "p99 publish (ms)",
             "requests", "errors", "error rate %"],
            [[s.get("step"), num(s.get("users")), num(s.get("start_s"), 1),
              num(s.get("end_s"), 1), num(s.get("connections")), num(s.get("msgs_per_s"), 1),
              num(s.get("publish_p99_ms"), 1), num(s.get("requests")), num(s.get("errors")),
              num(100 * s["error_rate"], 2) if s.get("error_rate") is not None else MISSING]
             for s in steps], numeric=tuple(range(1, 10)),
            row_class=["bad" if knee_step is not None and s.get("step", 0) > knee_step else ""
                       for s in steps])
    return section("capacity", "Capacity",
                   "the load rose in steps; the knee is the last step where publish p99 and "
                   "the error rate (client-bug codes excluded) stayed within their limits. "
                   "Its connections and messages/s are what this setup sustains; red rows "
                   "are past the knee.", body)
