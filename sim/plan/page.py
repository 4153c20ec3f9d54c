"""plan.html: the answer, the curves of every simulated deployment, every point.

Three charts, each answering one question against the load (as multiples of the
target and as offered publishes a second): how slow publishes get (p99, steady and
through the storms), whether the server keeps up (accepted against offered), and
which error codes appear first. The chosen deployment at the target is marked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from ..report.charts import colour, legend_outside, new_figure, no_data, save
from ..report.formatting import esc
from ..report.page import document, figure, html_table, para, section
from .result import verdict_lines

WINDOWS = (("steady", "-", "steady state"), ("storm", "--", "through the storms"))


def _curves(result: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """Deployment -> its points by load (only deployments with more than one load)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for p in result["points"]:
        out.setdefault(p["instances"], []).append(p)
    return {k: sorted(v, key=lambda p: p["load"]) for k, v in sorted(out.items())}


def _offered(result: dict[str, Any], load: float) -> float:
    return result["targets"]["msgs_per_s"] * load


def p99_chart(result: dict[str, Any], out_dir: Path) -> Path:
    curves = _curves(result)
    if not curves:
        return no_data(out_dir, "plan_p99.png", "Publish p99 against load", "no points")
    shown = [w for w in WINDOWS if any(p.get(w[0]) for p in result["points"])]
    fig, axes = new_figure(1, len(shown), height=4.2)
    chosen = result["answer"]["instances"]
    for ax, (name, _, label) in zip(axes[0], shown, strict=True):
        for i, (k, points) in enumerate(curves.items()):
            xs = [_offered(result, p["load"]) for p in points if p.get(name)]
            ys = [p[name]["publish_p99_ms"] for p in points if p.get(name)]
            if xs:
                ax.plot(xs, ys, marker="o", color=colour(i), label=f"{k} instance(s)")
            at = [p for p in points if p["load"] == 1.0 and p.get(name)]
            if k == chosen and at:
                ax.plot([_offered(result, 1.0)], [at[0][name]["publish_p99_ms"]],
                        marker="*", markersize=16, color="#d62728", zorder=5,
                        linestyle="none", label="the answer, at the target")
        ax.axhline(result["limits"]["p99_ms"], color="#444444", linestyle=":",
                   label=f"limit {result['limits']['p99_ms']:g} ms")
        ax.set_yscale("log")
        ax.set_title(f"How slow do publishes get? p99, {label}", loc="left", fontsize=11)
        ax.set_xlabel("offered publishes/s")
        ax.set_ylabel("publish p99 (ms, log)")
    legend_outside(axes[0][-1])
    return save(fig, out_dir, "plan_p99.png")


def deployments_chart(result: dict[str, Any], out_dir: Path) -> Path:
    """Publish p99 at the target load against the instance count: the search's view."""
    at = sorted((p for p in result["points"] if p["load"] == 1.0),
                key=lambda p: p["instances"])
    if not at:
        return no_data(out_dir, "plan_deployments.png", "Publish p99 against instances",
                       "no point at the target load")
    fig, axes = new_figure(height=4.0)
    ax = axes[0][0]
    for i, (name, style, label) in enumerate(WINDOWS):
        pts = [p for p in at if p.get(name)]
        if pts:
            ax.plot([p["instances"] for p in pts], [p[name]["publish_p99_ms"] for p in pts],
                    linestyle=style, marker="o", color=colour(i), label=f"p99, {label}")
    chosen = result["answer"]["instances"]
    if chosen is not None:
        ax.axvline(chosen, color="#d62728", linestyle="-", alpha=0.5,
                   label=f"the answer: {chosen}")
    ax.axhline(result["limits"]["p99_ms"], color="#444444", linestyle=":",
               label=f"limit {result['limits']['p99_ms']:g} ms")
    ax.set_yscale("log")
    ax.set_title("How many instances keep publishes fast? p99 at the target load",
                 loc="left", fontsize=11)
    ax.set_xlabel("instances")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("publish p99 (ms, log)")
    legend_outside(ax)
    return save(fig, out_dir, "plan_deployments.png")


def throughput_chart(result: dict[str, Any], out_dir: Path) -> Path:
    curves = _curves(result)
    if not curves:
        return no_data(out_dir, "plan_throughput.png", "Accepted against offered", "no points")
    fig, axes = new_figure(height=4.2)
    ax = axes[0][0]
    top = 0.0
    for i, (k, points) in enumerate(curves.items()):
        xs = [_offered(result, p["load"]) for p in points]
        ys = [p["steady"]["msgs_per_s"] for p in points]
        top = max(top, *xs, *ys)
        ax.plot(xs, ys, marker="o", color=colour(i), label=f"{k} instance(s)")
    ax.plot([0, top], [0, top], color="#888888", linestyle=":", label="accepted = offered")
    ax.set_title("Does the deployment keep up? Accepted publishes against offered "
                 "(steady state)", loc="left", fontsize=11)
    ax.set_xlabel("offered publishes/s")
    ax.set_ylabel("accepted publishes/s")
    legend_outside(ax)
    return save(fig, out_dir, "plan_throughput.png")


def errors_chart(result: dict[str, Any], out_dir: Path) -> Path:
    curves = {k: v for k, v in _curves(result).items() if len(v) > 1}
    codes = sorted({c for p in result["points"] for n, _, _ in WINDOWS if p.get(n)
                    for c in p[n]["errors_by_code"]})
    if not curves or not codes:
        return no_data(out_dir, "plan_errors.png", "Which errors come first as load grows",
                       "no service errors at any simulated point")
    fig, axes = new_figure(len(curves), 1, height=2.6 * len(curves) + 0.6, sharex=True)
    for row, (k, points) in zip(axes, curves.items(), strict=True):
        ax = row[0]
        for i, code in enumerate(codes):
            for name, style, label in WINDOWS:
                xs = [_offered(result, p["load"]) for p in points if p.get(name)]
                ys = [1000 * p[name]["errors_by_code"].get(code, 0) / max(1, p[name]["requests"])
                      for p in points if p.get(name)]
                if any(ys):
                    ax.plot(xs, ys, linestyle=style, marker="o", color=colour(i),
                            label=f"{code}, {label}")
        ax.set_title(f"{k} instance(s): errors per 1,000 requests by code", loc="left",
                     fontsize=10)
        ax.set_ylabel("per 1,000 requests")
        legend_outside(ax)
    axes[-1][0].set_xlabel("offered publishes/s")
    return save(fig, out_dir, "plan_errors.png")


def _num(value: float | None, digits: int, scale: float = 1.0, unit: str = "") -> str:
    """A figure for the table ("-" for none: plan.json writes NaN as null)."""
    if value is None or value != value:
        return "-"
    return f"{scale * value:,.{digits}f}{unit}"


def _rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for p in result["points"]:
        cells = [str(p["instances"]), f"{p['load']:g}x"]
        for name, _, _ in WINDOWS:
            w = p.get(name)
            cells += ([_num(w["publish_p99_ms"], 1), _num(w["error_rate"], 2, 100, "%"),
                       _num(w["resource"].get("share"), 0, 100, "%")] if w
                      else ["-", "-", "-"])
        cells += ["yes" if p["passed"] else "; ".join(p["crossed"]) or p["status"],
                  p["run_dir"]]
        rows.append(cells)
    return rows


def write_page(result: dict[str, Any], out_dir: Path) -> Path:
    """plan.html beside plan.json, with its charts (PNGs, embedded)."""
    charts = [(deployments_chart(result, out_dir), "Publish p99 at the target load for "
               "each deployment simulated (steady solid, storms dashed)"),
              (p99_chart(result, out_dir), "Publish p99 against the offered load, per "
               "deployment; the star is the answer at the target"),
              (throughput_chart(result, out_dir), "Accepted publishes against offered, in "
               "steady state: a curve that falls below the diagonal has run out"),
              (errors_chart(result, out_dir), "Service errors per 1,000 requests by code, "
               "steady (solid) and through the storms (dashed)")]
    answer = "".join(para(line) for line in verdict_lines(result))
    body = (f"<h1>rtmsim plan: {result['scenario']}</h1>"
            + section("answer", "The answer", "the fewest instances whose simulated "
                      "steady state and storms kept the limits, what runs out first, "
                      "and how much more load it carried", answer)
            + section("curves", "Curves against load", "each line is one deployment; "
                      "loads are multiples of the target",
                      "".join(figure(p, cap, cap) for p, cap in charts))
            + section("points", "Every simulated point", "each is a run directory "
                      "(rtmsim report opens it)",
                      html_table(["instances", "load", "steady p99 ms", "steady errors",
                                  "steady peak core", "storm p99 ms", "storm errors",
                                  "storm peak core", "passed", "run directory"],
                                 _rows(result), numeric=(0, 2, 3, 4, 5, 6, 7)))
            + section("assumptions", "Assumptions", "what the answer rests on",
                      "<ul>" + "".join(f"<li>{esc(a)}</li>" for a in result["assumptions"])
                      + "</ul>"))
    path = out_dir / "plan.html"
    path.write_text(document(f"rtmsim plan: {result['scenario']}", body), encoding="utf-8")
    return path
