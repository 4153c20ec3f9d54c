"""`rtmsim compare` of many runs: one row per run, charts drawn from summaries alone.

Past `MAX_OVERLAY_RUNS` a line per run over time is unreadable, and loading every
run's event logs costs minutes. The comparison then reads each run's summary.json only
(`sim.analysis.summary_row`, what `sim.analysis.runs` gives), shows a table with a row
per run, and charts each headline number against the runs in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import analysis
from . import charts, text
from .formatting import num

MAX_OVERLAY_RUNS = 8
# (column of summary_row, header, digits)
COLUMNS = (("requests.total", "requests", 0),
           ("errors.service.per_1000_requests", "service err/1k", 2),
           ("latency.publish.p99", "publish p99 ms", 1),
           ("delivery_latency.p99", "delivery p99 ms", 1),
           ("throughput.delivered_per_s_mean", "delivered/s", 0),
           ("reconciled", "reconciled", 0),
           ("thresholds.passed", "thresholds", 0))
CHARTED = COLUMNS[1:5]


def per_run(summaries: Sequence[dict[str, Any]], labels: Sequence[str]
            ) -> list[dict[str, Any]]:
    """compare.json's "per_run": each run's flat results (`sim.analysis.summary_row`)."""
    return [{"label": label, "name": (s.get("run") or {}).get("name"),
             "users": (s.get("run") or {}).get("users"), **analysis.summary_row(s)}
            for label, s in zip(labels, summaries, strict=True)]


def rows(per_run_rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """One row of cells per run: label, scenario, users, then `COLUMNS`."""
    return [[r["label"], str(r.get("name") or ""), num(r.get("users")),
             *(_cell(r.get(key), digits) for key, _, digits in COLUMNS)]
            for r in per_run_rows]


def header() -> list[str]:
    return ["run", "scenario", "users", *(h for _, h, _ in COLUMNS)]


def text_rows(per_run_rows: Sequence[dict[str, Any]]) -> list[str]:
    return text.text_table(header(), rows(per_run_rows))


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return num(value, digits)


def by_run_chart(flat: Sequence[dict[str, Any]], out: Path) -> Path:
    """The headline numbers against the runs in order, one panel each."""
    name = "compare-by-run.png"
    labels = [r["label"] for r in flat]
    title = f"How did errors, latency and throughput vary across {len(labels)} runs?"
    fig, axes = charts.new_figure(len(CHARTED), 1, height=1.4 + 1.9 * len(CHARTED),
                                  sharex=True)
    x = list(range(len(labels)))
    for row, (key, head, _) in enumerate(CHARTED):
        ax = axes[row][0]
        ys = [f.get(key) for f in flat]
        ax.plot(x, [float("nan") if y is None else y for y in ys], marker="o", markersize=3,
                linewidth=0.8, color=charts.colour(0))
        ax.set_ylabel(head, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    step = max(1, len(labels) // 20)  # at most about 20 tick labels
    axes[-1][0].set_xticks(x[::step], labels[::step], rotation=60, ha="right", fontsize=7)
    axes[-1][0].set_xlabel("run (in the order given)")
    axes[0][0].set_title(f"{title} (from each run's summary.json)", loc="left", fontsize=11)
    return charts.save(fig, out, name)


CAPTION = ("Each run's headline numbers, in the order the runs were given: a step or an "
           "outlier names the run where something changed.")
