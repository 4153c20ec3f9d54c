"""The run's charts: one function per question, each `(run, out_dir) -> Path` (a PNG).

Every number plotted comes from `sim.analysis`; this module only draws. Each chart has
a title that states the question it answers, axes with units, a legend, and the fault
windows shaded (one-shot faults, such as a deploy, as dashed vertical lines), so it
reads at a glance inside `report.html`. A chart without data is still written, as a
labelled "no data" figure, so the report's layout never depends on what a run did.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never open a window, work without a display

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from server.codes import CLOSE_CODES

from .. import analysis

FIGSIZE = (10.0, 4.5)
DPI = 110
TIME_LABEL = "scenario time (s)"
BIN_LATENCY_S = 5.0
SPAN_COLOURS = ("#9e9e9e", "#e6a06e", "#8fb3d9", "#b5d99c", "#d9a3c9")
ONE_SHOT_COLOUR = "#444444"
# Plot colours by name, so a code or a run keeps its colour from chart to chart.
PALETTE = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors


def colour(i: int) -> Any:
    return PALETTE[i % len(PALETTE)]


def close_label(code: Any) -> str:
    """`1001 going_away` for a known close code, the bare code otherwise."""
    try:
        known = CLOSE_CODES.get(int(code))
    except (TypeError, ValueError):
        known = None
    return f"{code} {known.name}" if known else str(code)


# -- figure plumbing ----------------------------------------------------------------------

def new_figure(nrows: int = 1, ncols: int = 1, *, height: float = FIGSIZE[1],
               sharex: bool = False) -> tuple[Figure, Any]:
    fig, axes = plt.subplots(nrows, ncols, figsize=(FIGSIZE[0], height), sharex=sharex,
                             layout="constrained", squeeze=False)
    return fig, axes


def save(fig: Figure, out_dir: Path, name: str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def no_data(out_dir: Path, name: str, title: str, why: str) -> Path:
    """A figure that says plainly that there was nothing to plot, and why."""
    fig, axes = new_figure(height=2.2)
    ax = axes[0][0]
    ax.set_title(title, loc="left", fontsize=11)
    ax.text(0.5, 0.5, f"no data: {why}", ha="center", va="center", fontsize=12,
            color="#666666", transform=ax.transAxes)
    ax.set_axis_off()
    return save(fig, out_dir, name)


def legend_outside(ax: Axes, extra: list[Any] | None = None, **kwargs: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    for handle in extra or []:
        handles.append(handle)
        labels.append(handle.get_label())
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize=8, frameon=False, **kwargs)


def run_duration(run: Any) -> float | None:
    value = (run.meta or {}).get("duration_s")
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def set_time_axis(ax: Axes, run: Any) -> None:
    ax.set_xlabel(TIME_LABEL)
    duration = run_duration(run)
    if duration:
        ax.set_xlim(0, duration)
    ax.grid(True, alpha=0.3)


def log_scale(ax: Axes, which: str) -> None:
    """A log axis labelled 1, 2, 5, 10, 20, 50 ... in plain numbers, not powers of ten."""
    if which == "x":
        ax.set_xscale("log")
        axis = ax.xaxis
    else:
        ax.set_yscale("log")
        axis = ax.yaxis
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.10g}"))
    axis.set_minor_formatter(NullFormatter())


def shade_faults(ax: Axes, windows: pd.DataFrame, *, prefix: str = "",
                 colour_of: Callable[[int], Any] | None = None) -> None:
    """Shade each fault window and draw one-shot faults as dashed lines, labelled.

    Open-ended faults (probabilistic faults active for the whole run) are listed in
    the legend but not shaded: shading the whole chart would hide the data and say
    nothing about when.
    """
    if windows is None or windows.empty:
        return
    for i, row in enumerate(windows.itertuples(index=False)):
        label = f"{prefix}{row.label}"
        if bool(row.open_ended):
            ax.plot([], [], " ", label=f"{label} (whole run, not shaded)")
            continue
        start, end = float(row.start_s), float(row.end_s)
        if bool(row.one_shot) or end <= start:
            ax.axvline(start, color=colour_of(i) if colour_of else ONE_SHOT_COLOUR,
                       linestyle="--", linewidth=1.2, label=label)
        else:
            ax.axvspan(start, end, alpha=0.22, linewidth=0, label=label,
                       color=colour_of(i) if colour_of else SPAN_COLOURS[i % len(SPAN_COLOURS)])
        ax.text(start, 1.0, f" {prefix}{row.id}", transform=ax.get_xaxis_transform(),
                fontsize=7, va="top", ha="left", color="#333333")


def faults_within(run: Any) -> pd.DataFrame:
    """The run's fault windows, less those scheduled after it ended (they never fired)."""
    windows = analysis.fault_windows(run)
    duration = run_duration(run)
    if duration is None or windows.empty:
        return windows
    return windows[windows["start_s"] < duration].reset_index(drop=True)


def _faults(run: Any) -> pd.DataFrame:
    return faults_within(run)


# -- the charts -----------------------------------------------------------------------------

def error_rate_chart(run: Any, out_dir: Path) -> Path:
    name, title = "error-rate.png", "Which errors did clients get, and when?"
    rates = analysis.error_rates(run, bin_s=1.0, side="client")
    if rates is None or rates.empty or not len(rates.columns) or not (rates.to_numpy() > 0).any():
        return no_data(out_dir, name, title, "clients received no error frames")
    fig, axes = new_figure()
    ax = axes[0][0]
    for i, code in enumerate(rates.columns):
        ax.plot(rates.index.to_numpy(dtype=float), rates[code].to_numpy(dtype=float),
                drawstyle="steps-post", color=colour(i), linewidth=1.4, label=str(code))
    shade_faults(ax, _faults(run))
    set_time_axis(ax, run)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("errors per second (1 s bins)")
    ax.set_title(title + " (error frames per second, by code, client side)", loc="left",
                 fontsize=11)
    legend_outside(ax, title="code / fault")
    return save(fig, out_dir, name)


def error_totals_chart(run: Any, out_dir: Path) -> Path:
    name = "error-totals.png"
    title = "How many errors of each code, and do client and server agree?"
    counts = analysis.error_counts(run)
    if counts is None or counts.empty or not (counts[["client", "server"]].to_numpy() > 0).any():
        return no_data(out_dir, name, title, "no error frames on either side")
    counts = counts.sort_values(["client", "server"], ascending=True)
    y = np.arange(len(counts))
    height = 0.38
    fig, axes = new_figure(height=max(2.8, 1.2 + 0.45 * len(counts)))
    ax = axes[0][0]
    client = counts["client"].to_numpy(dtype=float)
    server = counts["server"].to_numpy(dtype=float)
    ax.barh(y + height / 2, client, height, color=colour(0), label="client (error frames received)")
    ax.barh(y - height / 2, server, height, color=colour(1), label="server (error frames sent)")
    top = max(client.max(), server.max())
    for yy, value in [*zip(y + height / 2, client, strict=True),
                      *zip(y - height / 2, server, strict=True)]:
        ax.text(value + top * 0.01, yy, f"{int(value):,}", va="center", fontsize=8)
    labels = []
    for code, row in counts.iterrows():
        tag = " (client bug)" if bool(row.get("client_fault", False)) else ""
        labels.append(f"{code}{tag}")
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_xlim(0, top * 1.12 if top else 1)
    ax.set_xlabel("error frames (count over the whole run)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(title, loc="left", fontsize=11)
    legend_outside(ax)
    return save(fig, out_dir, name)


def latency_over_time_chart(run: Any, out_dir: Path) -> Path:
    name = "latency-over-time.png"
    title = "How long did each operation take over the run?"
    frame = analysis.latency_over_time(run, bin_s=BIN_LATENCY_S, percentiles=(50, 99))
    if frame is None or frame.empty or frame[["p50", "p99"]].dropna(how="all").empty:
        return no_data(out_dir, name, title, "no acknowledged operations with a latency")
    fig, axes = new_figure()
    ax = axes[0][0]
    # Every bin of the run, so a line breaks where an op had no samples instead of
    # drawing a straight segment across the gap; points sit at the bin's middle.
    grid = np.arange(float(frame["ts"].min()), float(frame["ts"].max()) + BIN_LATENCY_S / 2,
                     BIN_LATENCY_S)
    for i, (op, rows) in enumerate(frame.groupby("op", sort=True)):
        rows = rows.set_index("ts").reindex(grid)
        mid = grid + BIN_LATENCY_S / 2
        ax.plot(mid, rows["p50"].to_numpy(dtype=float), color=colour(i), linewidth=1.4,
                marker=".", label=f"{op} p50")
        ax.plot(mid, rows["p99"].to_numpy(dtype=float), color=colour(i), linewidth=1.2,
                linestyle="--", marker=".", label=f"{op} p99")
    positive = frame[["p50", "p99"]].to_numpy(dtype=float)
    positive = positive[np.isfinite(positive) & (positive > 0)]
    if positive.size and positive.max() / max(positive.min(), 1e-9) > 20:
        log_scale(ax, "y")
        ax.set_ylabel("latency (ms, log scale)")
    else:
        ax.set_ylim(bottom=0)
        ax.set_ylabel("latency (ms)")
    shade_faults(ax, _faults(run))
    set_time_axis(ax, run)
    ax.set_title(f"{title} (p50 solid, p99 dashed, {BIN_LATENCY_S:g} s bins)", loc="left",
                 fontsize=11)
    legend_outside(ax, title="operation / fault")
    return save(fig, out_dir, name)


def delivery_latency_chart(run: Any, out_dir: Path) -> Path:
    name = "delivery-latency.png"
    title = "How long did a published message take to reach its subscribers?"
    values = analysis.delivery_latency(run)
    values = (pd.Series(values, dtype=float).dropna() if values is not None
              else pd.Series(dtype=float))
    if values.empty:
        return no_data(out_dir, name, title, "no deliveries with a measurable latency")
    marks = delivery_marks(values)
    data = values.to_numpy(dtype=float)
    fig, axes = new_figure()
    ax = axes[0][0]
    positive = data[data > 0]
    is_wide = positive.size > 0 and positive.max() / max(positive.min(), 1e-6) > 100
    if is_wide:
        bins = np.geomspace(max(positive.min(), 1e-3), positive.max(), 60)
        ax.hist(positive, bins=bins, color=colour(0), alpha=0.85,
                label=f"deliveries ({data.size:,})")
        log_scale(ax, "x")
        ax.set_xlabel("delivery latency (ms, log scale): publish sent -> message received")
    else:
        ax.hist(data, bins=60, color=colour(0), alpha=0.85, label=f"deliveries ({data.size:,})")
        ax.set_xlabel("delivery latency (ms): publish sent -> message received")
    for (label, value), style in zip(marks.items(), ("-", "--", ":"), strict=False):
        if value is not None and np.isfinite(value):
            ax.axvline(value, color="#c0392b", linestyle=style, linewidth=1.5,
                       label=f"{label} = {value:,.1f} ms")
    ax.set_ylabel("deliveries (count per bin)")
    ax.grid(True, alpha=0.3)
    ax.set_title(title, loc="left", fontsize=11)
    legend_outside(ax)
    return save(fig, out_dir, name)


def delivery_marks(values: pd.Series) -> dict[str, float | None]:
    """p50 and p99 of delivery latency, as the analysis defines percentiles."""
    stats = analysis.percentiles_of(values.to_numpy(dtype=float), (50, 99))
    return {"p50": _num(stats.get("p50")), "p99": _num(stats.get("p99"))}


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def connections_chart(run: Any, out_dir: Path) -> Path:
    name = "connections.png"
    title = "How many clients were connected, and why were connections closed?"
    frame = analysis.connections_over_time(run, bin_s=1.0)
    if frame is None or frame.empty:
        return no_data(out_dir, name, title, "no connections recorded")
    close_cols = [c for c in frame.columns if str(c).startswith("close_")]
    has_closes = bool(close_cols) and (frame[close_cols].to_numpy() > 0).any()
    fig, axes = new_figure(2, 1, height=6.0 if has_closes else FIGSIZE[1], sharex=True) \
        if has_closes else new_figure()
    ax = axes[0][0]
    ts = frame["ts"].to_numpy(dtype=float)
    ax.plot(ts, frame["connections"].to_numpy(dtype=float), color=colour(0), linewidth=1.6,
            drawstyle="steps-post", label="open connections")
    ax.set_ylabel("open connections")
    ax.set_ylim(bottom=0)
    shade_faults(ax, _faults(run))
    set_time_axis(ax, run)
    ax.set_title(title, loc="left", fontsize=11)
    legend_outside(ax, title="connections / fault")
    if has_closes:
        ax.set_xlabel("")
        ax2 = axes[1][0]
        bottom = np.zeros(len(frame))
        width = float(np.median(np.diff(ts))) if len(ts) > 1 else 1.0
        for i, col in enumerate(close_cols):
            counts = frame[col].fillna(0).to_numpy(dtype=float)
            if not counts.any():
                continue
            ax2.bar(ts, counts, width=width, bottom=bottom, align="edge", color=colour(i + 1),
                    label=close_label(str(col).removeprefix("close_")))
            bottom += counts
        shade_faults(ax2, _faults(run))
        set_time_axis(ax2, run)
        ax2.set_ylabel("closes per second")
        legend_outside(ax2, title="close code / fault")
    return save(fig, out_dir, name)


def retry_amplification_chart(run: Any, out_dir: Path) -> Path:
    name = "retry-amplification.png"
    title = "How many attempts did each retry policy make per operation?"
    per_class = analysis.retry_amplification(run)
    totals = analysis.amplification_by_policy(run)
    rows: list[tuple[str, float, int, int, bool]] = []  # label, amp, attempts, ops, is_total
    for policy, total in sorted(totals.items()):
        if not total.get("operations"):
            continue
        rows.append((f"{policy} (all classes)", float(total["amplification"]),
                     int(total["attempts"]), int(total["operations"]), True))
        part = per_class.loc[[policy]] if policy in per_class.index else per_class.iloc[0:0]
        for r in part.itertuples():
            if r.operations > 0:
                rows.append((f"{policy}: {r.user_class}", float(r.amplification),
                             int(r.attempts), int(r.operations), False))
    if not rows:
        return no_data(out_dir, name, title, "no client requests recorded")
    rows.reverse()  # barh draws bottom-up: keep the first policy's total on top
    fig, axes = new_figure(height=max(2.8, 1.4 + 0.42 * len(rows)))
    ax = axes[0][0]
    y = np.arange(len(rows))
    policies = sorted(totals)
    for yy, (label, amp, attempts, ops, is_total) in zip(y, rows, strict=True):
        policy = label.split(" (all")[0].split(":")[0]
        ax.barh(yy, amp, 0.7 if is_total else 0.5, color=colour(policies.index(policy)),
                alpha=1.0 if is_total else 0.55, edgecolor="black" if is_total else "none")
        ax.text(amp, yy, f"  {amp:.3f}x  ({attempts:,} attempts / {ops:,} operations)",
                va="center", fontsize=8, fontweight="bold" if is_total else "normal")
    ax.axvline(1.0, color="#333333", linestyle=":", label="1.0x = no retries")
    ax.set_yticks(y, [r[0] for r in rows], fontsize=9)
    top = max(1.0, max(r[1] for r in rows))
    ax.set_xlim(0, top * 1.7)
    ax.set_xlabel("attempts per operation (x): every request sent / first tries")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(title, loc="left", fontsize=11)
    legend_outside(ax, extra=[
        Patch(facecolor="#777777", edgecolor="black", label="policy total"),
        Patch(facecolor="#777777", alpha=0.55, label="one user class")])
    return save(fig, out_dir, name)


def throughput_chart(run: Any, out_dir: Path) -> Path:
    name = "throughput.png"
    title = "How many messages went in and came out per second?"
    frame = analysis.throughput(run, bin_s=1.0)
    cols = ["published_per_s", "delivered_per_s"]
    if frame is None or frame.empty or not (frame[cols].to_numpy() > 0).any():
        return no_data(out_dir, name, title, "no messages published or delivered")
    fig, axes = new_figure()
    ax = axes[0][0]
    ts = frame["ts"].to_numpy(dtype=float)
    for i, (col, label) in enumerate(zip(cols, ("published (acknowledged publishes/s)",
                                                "delivered (messages received/s)"),
                                         strict=True)):
        ax.plot(ts, frame[col].to_numpy(dtype=float), color=colour(i), linewidth=1.4,
                drawstyle="steps-post", label=label)
    values = frame[cols].to_numpy(dtype=float)
    values = values[values > 0]
    if values.size and values.max() / values.min() > 50:
        log_scale(ax, "y")
        ax.set_ylabel("messages per second (log scale)")
    else:
        ax.set_ylim(bottom=0)
        ax.set_ylabel("messages per second")
    shade_faults(ax, _faults(run))
    set_time_axis(ax, run)
    ax.set_title(title, loc="left", fontsize=11)
    legend_outside(ax, title="series / fault")
    return save(fig, out_dir, name)


def capacity_chart(run: Any, out_dir: Path) -> Path:
    name = "capacity.png"
    title = "Where is the knee? Throughput, publish p99 and errors at each load step"
    cap = analysis.capacity(run)
    steps = pd.DataFrame(cap.get("steps") or [])
    if steps.empty:
        return no_data(out_dir, name, title, str(cap.get("verdict") or "no load steps"))
    fig, axes = new_figure(1, 3, height=4.2)
    users = steps["users"].to_numpy(dtype=float)
    knee = (cap.get("knee") or {}).get("users")
    past = steps["step"].to_numpy() > (cap.get("knee") or {}).get("step", -1) \
        if knee is not None else np.ones(len(steps), dtype=bool)
    if not cap.get("limit"):
        past = np.zeros(len(steps), dtype=bool)
    panels = (
        ("msgs_per_s", "accepted publishes per second", 1.0, None, ""),
        ("publish_p99_ms", "publish p99 latency (ms)", 1.0, cap.get("p99_limit_ms"), " ms"),
        ("error_rate", "error rate (% of requests)", 100.0, cap.get("error_rate_limit"), " %"),
    )
    pad = (users.max() - users.min()) / max(len(users) - 1, 1) / 2 if len(users) > 1 else 1.0
    for ax, (col, label, scale, limit, unit) in zip(axes[0], panels, strict=True):
        values = steps[col].to_numpy(dtype=float) * scale
        ax.plot(users, values, color=colour(0), marker="o", linewidth=1.4,
                label="load step (users)")
        if past.any():
            ax.plot(users[past], values[past], "o", color="#c0392b", label="past the knee")
        if limit is not None:
            ax.axhline(float(limit) * scale, color="#c0392b", linestyle=":",
                       label=f"limit ({label.split(' (')[0]}): {float(limit) * scale:g}{unit}")
        if knee is not None:
            ax.axvline(float(knee), color="#333333", linestyle="--",
                       label=f"knee: {int(knee)} users")
        ax.set_xlim(users.min() - pad, users.max() + pad)
        ax.set_xlabel("users (load step)")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(text, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center",
               ncols=min(len(handles), 5), fontsize=8, frameon=False)
    fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    return save(fig, out_dir, name)


# One line per chart for the report: how to read it.
CAPTIONS = {
    "error-rate.png": "Error frames per second that clients received, one line per code. "
                      "A spike inside a grey band is the fault at work; errors outside any "
                      "band are background faults or misbehaving clients.",
    "error-totals.png": "Each code's total, as the clients counted it next to the server's "
                        "count. The bars should be equal; '(client bug)' marks codes only a "
                        "client fix can remove.",
    "latency-over-time.png": "Latency of successful requests per operation over time (solid "
                             "p50, dashed p99, log scale). A gap means no successful request "
                             "of that kind in the bin.",
    "delivery-latency.png": "How long published messages took to reach each subscriber; the "
                            "red lines are the median and the 99th percentile.",
    "throughput.png": "Messages accepted (published) and handed to subscribers (delivered) "
                      "per second, from the server's counters. One publish fans out to many "
                      "deliveries.",
    "connections.png": "Open connections (top) and, below, connections the server closed "
                       "per second by close code. A deploy shows as a dip and a burst of "
                       "1001 closes.",
    "retry-amplification.png": "Attempts per operation for each retry policy, in total and "
                               "per user class: 1.0x means no retries.",
    "capacity.png": "Each load step's throughput, publish p99 and error rate against the "
                    "number of users. The knee (dashed) is the last step within both limits "
                    "(dotted); red points are past it.",
}

CHARTS: tuple[Callable[[Any, Path], Path], ...] = (
    error_rate_chart,
    error_totals_chart,
    latency_over_time_chart,
    delivery_latency_chart,
    throughput_chart,
    connections_chart,
    retry_amplification_chart,
)


def render_all(run: Any, out_dir: Path) -> list[Path]:
    """Every chart of the run into `out_dir`, in report order.

    The capacity chart only for step-ramp runs, the runs the summary has a capacity
    section for.
    """
    paths = [chart(run, Path(out_dir)) for chart in CHARTS]
    if (run.meta or {}).get("shape") == "step_ramp":
        paths.append(capacity_chart(run, Path(out_dir)))
    return paths
