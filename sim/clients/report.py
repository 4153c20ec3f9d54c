"""client-report.html: the grade of a `rtmsim clients` run, for people.

Reads the dict `sim.clients.grading.grade_run` returns (the same data as clients.json) and
the run's server events for the timeline; computes nothing the grading does not.
Self-contained: charts are embedded PNGs.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from server.codes import CloseCode

from .. import rundir
from ..analysis import fault_windows, load_run
from ..report.page import CLIENT_CSS
from .grading import RULES, client_events

GRADE_COLOURS = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "n/a": "#6e7781"}
CODE_COLOURS = {CloseCode.GOING_AWAY: "#0969da", CloseCode.TOKEN_EXPIRED: "#8250df",
                CloseCode.OVER_CONCURRENT_LIMIT: "#bf3989",
                CloseCode.OVER_MESSAGE_RATE: "#bc4c00", CloseCode.ADMIN_DISCONNECT: "#cf222e",
                CloseCode.ABNORMAL_CLOSURE: "#57606a", CloseCode.INTERNAL_ERROR: "#953800",
                CloseCode.POLICY_VIOLATION: "#6639ba"}


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def herd_chart(grades: dict[str, Any]) -> str | None:
    """Per mass close: each client's reconnect delay (one dot per client)."""
    groups = [g for g in grades["reconnect_groups"]
              if sum(m["delay_s"] is not None for m in g["members"]) >= 2]
    if not groups:
        return None
    groups = groups[:8]
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 1.2 + 1.1 * len(groups)),
                             squeeze=False)
    for ax, g in zip(axes[:, 0], groups, strict=True):
        back = [m for m in g["members"] if m["delay_s"] is not None]
        ys = list(range(len(back)))
        ax.scatter([m["delay_s"] * 1000 for m in back], ys, s=28,
                   color=CODE_COLOURS.get(g["code"], "#0969da"), zorder=3, label="reconnect")
        ax.set_yticks(ys, [m["client"] for m in back], fontsize=7)
        hint = next((r["hint_ms"] for r in grades["reconnects"]
                     if r["code"] == CloseCode.GOING_AWAY
                     and abs(r["close_ts"] - g["ts"]) < 1.0), None)
        if g["code"] == CloseCode.GOING_AWAY and hint:
            ax.axvline(hint, color="#cf222e", ls="--", lw=1, label=f"retryAfterMs {hint:.0f}")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
        never = len(g["members"]) - len(back)
        extra = f", {never} never came back" if never else ""
        herd = f", herd {g['herd']} within 50 ms" if "herd" in g else ""
        ax.set_title(f"{g['code']} {g['name']} at {g['ts']:.1f} s: {len(back)} reconnected"
                     f"{extra}{herd}", fontsize=9, loc="left")
        right = max([m["delay_s"] * 1000 for m in back] + [hint or 0])
        ax.set_xlim(0, right * 1.08 + 1)
        ax.set_ylim(-0.6, len(back) - 0.4)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("reconnect delay after the close (ms)")
    fig.suptitle("How long did each client wait before reconnecting after a mass close?",
                 fontsize=10)
    fig.tight_layout()
    return _png(fig)


def timeline_chart(run_dir: Path, grades: dict[str, Any]) -> str | None:
    """Every client's connects, closes and errors over scenario time, faults shaded."""
    run = load_run(run_dir)
    ev = client_events(run)
    if not len(ev):
        return None
    names = [c["client"] for c in grades["clients"]]
    srv = run.server
    unknown = srv[(srv.event == "reject") & srv.peer.isna()]
    if len(unknown):  # refused before the server knew the peer (e.g. an expired token)
        names = ["(unknown peer)", *names]
        ev = pd.concat([ev, unknown.assign(client="(unknown peer)")], ignore_index=True)
    row = {n: i for i, n in enumerate(names)}
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.35 * len(names)))
    for _, f in fault_windows(run).iterrows():
        if f.one_shot:
            ax.axvline(f.start_s, color="#bf8700", lw=1, alpha=0.8)
            ax.text(f.start_s, len(names) - 0.4, f" {f.kind}", fontsize=7, color="#9a6700")
        elif not f.open_ended:
            ax.axvspan(f.start_s, f.end_s, color="#bf8700", alpha=0.12)
            ax.text(f.start_s, len(names) - 0.4, f" {f.kind}", fontsize=7, color="#9a6700")
    y = ev.client.map(row)
    conn = ev.event == "connect"
    ax.scatter(ev.ts[conn], y[conn], marker="o", s=18, color="#1a7f37", label="connect",
               zorder=3)
    err = ev.event == "error"
    ax.scatter(ev.ts[err], y[err] + 0.18, marker="|", s=30, color="#953800",
               label="error answer", zorder=2)
    closing = ev[ev.event.isin(["close", "reject"])]
    for code, g in closing.groupby("code"):
        ax.scatter(g.ts, g.client.map(row) - 0.18, marker="x", s=26,
                   color=CODE_COLOURS.get(int(code), "#57606a"), label=f"close {int(code)}",
                   zorder=4)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(-0.7, len(names) - 0.1)
    ax.set_xlim(0, max(run.duration_s, float(ev.ts.max())) + 0.5)
    ax.set_xlabel("scenario time (s)")
    ax.set_title("When did each client connect, get closed, and get errors?", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=6, fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _badge(grade: str) -> str:
    return (f'<span class="badge" style="background:{GRADE_COLOURS.get(grade, "#6e7781")}">'
            f"{html.escape(grade)}</span>")


def _codes_cell(codes: dict[str, dict[str, Any]], key: str) -> str:
    parts = []
    for code, s in sorted(codes.items()):
        delay = s.get("median_delay_ms")
        tail = f", next after {delay:.0f} ms" if delay is not None else ""
        back = f", {s['came_back']} back" if "came_back" in s else ""
        parts.append(f"{html.escape(code)}: {s[key]}{back}{tail}")
    return "<br>".join(parts) or "-"


def rule_row(rid: str, r: dict[str, Any]) -> str:
    """A rule: its grade, what it checks, its incidents and the first few violations."""
    e = html.escape
    shown = r["violations"][:4] + r["warnings"][:2]
    items = "".join(f"<li>{e(x['client'])} at {x['ts']:.1f} s: {e(x['text'])}</li>"
                    for x in shown)
    more = len(r["violations"]) + len(r["warnings"]) - len(shown)
    if more > 0:
        items += f"<li>... {more} more in clients.json</li>"
    return (f"<tr><td>{_badge(r['grade'])}</td><td><b>{e(rid)}</b><br>{e(RULES[rid].title)}"
            f"</td><td>{e(r['what'])}</td><td class=n>{r['incidents']}</td>"
            f"<td><ul>{items}</ul></td></tr>")


def client_row(c: dict[str, Any]) -> str:
    """A client: its grade, process, connections, codes received and violations."""
    e = html.escape
    viol = "".join(f"<li>{e(t)}</li>" for t in c["violations"][:6])
    if len(c["violations"]) > 6:
        viol += f"<li>... {len(c['violations']) - 6} more</li>"
    viol += "".join(f"<li><i>{e(t)}</i></li>" for t in c["warnings"][:3])
    return (f"<tr><td>{_badge(c['grade'])}</td><td>{e(c['client'])}</td>"
            f"<td class=n>{c['pid'] or '-'}</td><td class=n>{c['exit_code']}</td>"
            f"<td class=n>{c['connections']}</td><td class=n>{c['rejected']}</td>"
            f"<td class=n>{c['token_fetches']}</td>"
            f"<td>{_codes_cell(c['errors'], 'received')}</td>"
            f"<td>{_codes_cell(c['closes'], 'received')}</td><td><ul>{viol}</ul></td></tr>")


def charts_html(run_dir: Path, grades: dict[str, Any]) -> str:
    charts = []
    for title, png in (("Reconnects after each mass close", herd_chart(grades)),
                       ("Client timeline", timeline_chart(run_dir, grades))):
        if png:
            charts.append(f"<h2>{html.escape(title)}</h2>"
                          f"<img src='data:image/png;base64,{png}'>")
    return "".join(charts)


def rejects_html(grades: dict[str, Any]) -> str:
    rejects = grades.get("unattributed_rejects") or {}
    if not rejects:
        return ""
    return ("<p>Connections refused before the server knew the peer (not attributed to a "
            "client): " + ", ".join(f"{html.escape(k)} x {v}" for k, v in rejects.items())
            + "</p>")


def render(run_dir: Path, grades: dict[str, Any]) -> str:
    e = html.escape
    rules_rows = [rule_row(rid, r) for rid, r in grades["rules"].items()]
    client_rows = [client_row(c) for c in grades["clients"]]
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>client grade: {e(str(grades.get('scenario')))}</title>
<style>{CLIENT_CSS}</style></head><body>
<h1>Client grade {_badge(grades['grade'])}</h1>
<p>{e(str(grades.get('count')))} x <code>{e(str(grades.get('command')))}</code> against
scenario <b>{e(str(grades.get('scenario')))}</b> ({e(str(run_dir))}). Rules come from the
protocol's code table (server.codes): each code's retry guidance picks the rule that
grades what a client did after it.</p>
<h2>Rules</h2>
<table><tr><th>grade</th><th>rule</th><th>what is checked</th><th>incidents</th>
<th>violations (first few)</th></tr>{''.join(rules_rows)}</table>
<h2>Clients</h2>
<table><tr><th>grade</th><th>client</th><th>pid</th><th>exit</th><th>connections</th>
<th>refused</th><th>token fetches</th><th>errors received</th><th>closes received</th>
<th>violations</th></tr>{''.join(client_rows)}</table>
{rejects_html(grades)}
{charts_html(run_dir, grades)}
</body></html>
"""


def write_client_report(run_dir: str | Path, grades: dict[str, Any]) -> Path:
    path = Path(run_dir) / rundir.CLIENT_REPORT
    path.write_text(render(Path(run_dir), grades), encoding="utf-8")
    return path
