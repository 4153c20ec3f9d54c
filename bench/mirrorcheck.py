"""`bench simulate --clients N --simulate-instances M --compare`: a mirrored run
against the same deployment run in full.

`rtmsim simulate --simulate-instances M` runs M of a deployment's alike instances and
takes the others to do what these do (`sim.virtual.mirror`). That is a model of the
full run, and earns trust only by agreeing with it: this runs both (the deploy storm
of `bench simulate --clients N`, same seed) and reads the deployment's figures side by
side, each against a bound. The bounds are the issue's for real against virtual where
it gives one (reconnect peaks and recovery 20%, latency 20%), and tighter for counts
that the mirroring multiplies (2%) and for the instances' CPU (10%).

The delivery p99 is shown, not bounded: through a deploy storm about 1% of deliveries
wait out a wave's strike or its reconnects, so the 99th percentile sits on the edge of
that tail and jumps between bins 1.8x apart when the share past it moves by a tenth.
The shares of deliveries over 100 ms and over 1 s are bounded instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .simulate import simulate_scale

# (figure, how to read it from a scale run, bound as a share of the full run's figure;
# None: shown, not judged)
FIGURES: tuple[tuple[str, Callable[[dict[str, Any]], float | None], float | None], ...] = (
    ("connects", lambda r: r["connects"], 0.02),
    ("closes 1001", lambda r: r["closes"].get("1001", 0), 0.02),
    ("deliveries", lambda r: r["deliveries"], 0.02),
    ("4010s", lambda r: r["connects_over_cap_4010"], 0.2),
    ("reconnect peak /s", lambda r: r["reconnect_peak_per_s"], 0.2),
    ("recovered after last wave, s", lambda r: r["recovered_s_after_last_wave"], 0.2),
    ("delivery p50, ms", lambda r: r["delivery_ms"]["p50"], 0.2),
    ("delivery p99, ms", lambda r: r["delivery_ms"]["p99"], None),
    ("deliveries over 100 ms, %", lambda r: 100 * r["delivery_share_over_ms"]["100"], 0.2),
    ("deliveries over 1 s, %", lambda r: 100 * r["delivery_share_over_ms"]["1000"], 0.2),
    ("instance CPU, mean s", lambda r: r["instance_cpu_s_mean"], 0.1),
    ("instance CPU, busiest s", lambda r: r["busiest_instance_cpu_s"], 0.1),
)


def mirror_compare(clients: int, simulate: int, duration_s: float, queue: str,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """Both runs, each in its own child; the figures and whether each is within bound."""
    mirrored = simulate_scale(clients, duration_s, queue, log, simulate)
    full = simulate_scale(clients, duration_s, queue, log)
    checks = [_check(name, read(full), read(mirrored), bound)
              for name, read, bound in FIGURES]
    return {"benchmark": "simulate", "mode": "mirror", "clients": clients,
            "simulated_instances": simulate, "instances": full["instances"],
            "mirrored": mirrored, "full": full, "checks": checks,
            "speedup": round(full["wall_s"] / max(mirrored["wall_s"], 1e-9), 1),
            "passed": all(c["within"] for c in checks)}


def _check(name: str, full: float | None, mirrored: float | None,
           bound: float | None) -> dict[str, Any]:
    if full is None or mirrored is None:  # e.g. never recovered: both must say so
        return {"figure": name, "full": full, "mirrored": mirrored, "difference": None,
                "bound": bound, "within": full is None and mirrored is None}
    diff = 0.0 if full == mirrored else (mirrored - full) / full if full else float("inf")
    return {"figure": name, "full": full, "mirrored": mirrored,
            "difference": round(diff, 4), "bound": bound,
            "within": bound is None or abs(diff) <= bound}


def mirror_summary(result: dict[str, Any]) -> str:
    m, f = result["mirrored"], result["full"]
    rows = [("figure", "full", "mirrored", "difference", "bound", "within")]
    rows += [(c["figure"], _num(c["full"]), _num(c["mirrored"]),
              "-" if c["difference"] is None else f"{100 * c['difference']:+.1f}%",
              "shown" if c["bound"] is None else f"{100 * c['bound']:g}%",
              "-" if c["bound"] is None else "yes" if c["within"] else "NO")
             for c in result["checks"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    judged = [c for c in result["checks"] if c["bound"] is not None]
    missed = sum(not c["within"] for c in judged)
    lines.append(
        f"simulate --clients {result['clients']:,}: {result['simulated_instances']} of "
        f"{result['instances']} instances ({m['simulated_clients']:,} clients) in "
        f"{m['wall_s']} s wall, {m['peak_rss_mb']:,} MB; in full {f['wall_s']} s, "
        f"{f['peak_rss_mb']:,} MB ({result['speedup']}x); "
        f"{len(judged) - missed} of {len(judged)} figures within "
        "their bounds" + (f"; {missed} MISSED" if missed else ""))
    return "\n".join(lines)


def _num(value: float | None) -> str:
    if value is None:
        return "never"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
