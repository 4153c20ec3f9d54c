"""The terminal summary of a run: what `rtmsim run` and `rtmsim analyze` print.

One function per section, in the order and under the names of report.html's sections
(`errors_lines` ~ `errors_section`), each from summary.json's data alone; numbers come
formatted by `sim.report.formatting`, so the terminal and the HTML agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .. import rundir
from .formatting import (
    DELIVERY_FIELDS,
    MISSING,
    by_count,
    close_guidance,
    close_name,
    error_guidance,
    num,
    signed,
    threshold_value,
)


def print_summary(summary: dict[str, Any], run_dir: str | Path) -> None:
    """The headline numbers as plain-text tables, then where the report is."""
    for line in summary_lines(summary):
        print(line)
    print(f"report: {Path(run_dir) / rundir.REPORT}")


def summary_lines(summary: dict[str, Any]) -> list[str]:
    return [line for lines_of in SECTIONS for line in lines_of(summary)]


def headline_lines(summary: dict[str, Any]) -> list[str]:
    meta = summary.get("run") or {}
    req = summary.get("requests") or {}
    return [f"== {meta.get('name') or 'run'}: {meta.get('status') or '?'}, "
            f"{num(meta.get('duration_s'))} s, {num(meta.get('users'))} users, "
            f"{meta.get('backend') or '?'} backend, {num(meta.get('instances'))} instance(s)",
            f"requests: {num(req.get('total'))} ({num(req.get('ok'))} ok)",
            *mirror_lines(meta.get("mirror"))]


def mirror_lines(mirror: dict[str, Any] | None) -> list[str]:
    """A run of some instances standing for more (`rtmsim simulate
    --simulate-instances`): every count here is theirs."""
    if not mirror:
        return []
    return [f"mirrored: {mirror['simulated']} of {mirror['instances']} instances simulated, "
            f"each standing for {mirror['factor']}: the counts here are theirs, "
            f"x{mirror['factor']} the deployment's"]


def errors_lines(summary: dict[str, Any]) -> list[str]:
    errors = summary.get("errors") or {}
    if not errors:
        return ["", "error codes: none"]
    return ["", *text_table(
        ["error code", "client", "server", "diff", "client/s", "server/s", "per 1k req",
         "retry guidance"],
        [[code, num(e.get("client")), num(e.get("server")), signed(e.get("diff")),
          num(e.get("client_per_s"), 2), num(e.get("server_per_s"), 2),
          num(e.get("per_1000_requests"), 2), error_guidance(code, e)]
         for code, e in by_count(errors)])]


def closes_lines(summary: dict[str, Any]) -> list[str]:
    closes = summary.get("closes") or {}
    if not closes:
        return []
    return ["", *text_table(
        ["close code", "client", "server", "diff", "server/s", "guidance"],
        [[f"{code} {close_name(code, c)}", num(c.get("client")), num(c.get("server")),
          signed(c.get("diff")), num(c.get("server_per_s"), 2), close_guidance(code, c)]
         for code, c in by_count(closes)])]


def latency_lines(summary: dict[str, Any]) -> list[str]:
    latency = summary.get("latency_ms") or {}
    rows = [[op, num(v.get("count")), num(v.get("p50"), 1), num(v.get("p90"), 1),
             num(v.get("p99"), 1), num(v.get("p99.9"), 1), num(v.get("max"), 1)]
            for op, v in latency.items()]
    d = summary.get("delivery_latency_ms") or {}
    if d.get("count"):
        rows.append(["delivery", num(d.get("count")), num(d.get("p50"), 1),
                     num(d.get("p90"), 1), num(d.get("p99"), 1), num(d.get("p99.9"), 1),
                     num(d.get("max"), 1)])
    if not rows:
        return []
    return ["", *text_table(["latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"],
                            rows)]


def delivery_lines(summary: dict[str, Any]) -> list[str]:
    acct = summary.get("delivery") or {}
    if not acct:
        return []
    order = [k for k in DELIVERY_FIELDS if k in acct] + [k for k in acct
                                                         if k not in DELIVERY_FIELDS]
    return ["", "delivery: " + ", ".join(f"{k.replace('_', ' ')} {num(acct[k])}"
                                         for k in order)]


def throughput_lines(summary: dict[str, Any]) -> list[str]:
    """In report.html these are headline cards; here they follow delivery."""
    tp = summary.get("throughput") or {}
    if tp.get("published_per_s_mean") is None:
        return []
    return [f"throughput: published {num(tp.get('published_per_s_mean'), 1)}/s mean "
            f"(peak {num(tp.get('published_per_s_peak'), 1)}), delivered "
            f"{num(tp.get('delivered_per_s_mean'), 1)}/s mean "
            f"(peak {num(tp.get('delivered_per_s_peak'), 1)})"]


def retries_lines(summary: dict[str, Any]) -> list[str]:
    return [f"retry amplification: {policy} {num(a.get('amplification'), 3)}x "
            f"({num(a.get('attempts'))} attempts / {num(a.get('operations'))} "
            f"operations, {num(a.get('retried'))} retried)"
            for policy, a in (summary.get("retry_amplification") or {}).items()]


def faults_lines(summary: dict[str, Any]) -> list[str]:
    return [f"recovery: {r.get('id')} {r.get('kind')} healthy again "
            f"{num(r.get('recovered_s'), 1)} s after it ended"
            for r in summary.get("recovery") or [] if r.get("recovered_s") is not None]


def capacity_lines(summary: dict[str, Any]) -> list[str]:
    cap = summary.get("capacity")
    return [f"capacity: {cap.get('verdict')}"] if cap else []


def thresholds_lines(summary: dict[str, Any]) -> list[str]:
    checks = (summary.get("thresholds") or {}).get("checks") or []
    if not checks:
        return []
    failed = sum(not c["ok"] for c in checks)
    return ["", f"thresholds: {len(checks) - failed} of {len(checks)} passed", *text_table(
        ["", "metric", "condition", "value", "why"],
        [["ok" if c["ok"] else "FAIL", c["metric"], c["condition"], threshold_value(c),
          c.get("reason") or ""] for c in checks])]


def warnings_lines(summary: dict[str, Any]) -> list[str]:
    warnings = summary.get("warnings") or []
    return ["", f"warnings ({len(warnings)}):" if warnings else "warnings: none",
            *(f"  ! {w}" for w in warnings)]


SECTIONS: tuple[Callable[[dict[str, Any]], list[str]], ...] = (
    headline_lines, errors_lines, closes_lines, latency_lines, delivery_lines,
    throughput_lines, retries_lines, faults_lines, capacity_lines, warnings_lines,
    thresholds_lines)


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

