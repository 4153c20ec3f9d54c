"""`bench simulate --check`: the virtual-time models against the published results.

The models live in `sim.virtual`; the layers keep `bench` and `sim` independent, so
(as `bench analyze` does with `rtmsim analyze`) they run in a child process,
`python -m sim.virtual.published`, which prints one JSON object. Its progress lines
come through as ours. A figure outside its bound makes `python -m bench` exit 1.

`--clients N` is the scale mode: a deploy storm of N clients in the engine
(`python -m sim.virtual.scale`, in a child so its peak RSS is its own): wall time,
events/s, peak RSS, against the goals (1,000,000 clients in 60 s on one core, 4 GB).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from .procs import ROOT, BenchError, json_child

MODELS = "sim.virtual.published"
SCALE = "sim.virtual.scale"
GOAL_WALL_S = {1_000_000: 60.0}
GOAL_RSS_MB = 4096


def simulate_check(trials: int, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Run every reproduction at full size in a child; its result, plus our wall time."""
    args = [sys.executable, "-m", MODELS, "--trials", str(trials), "--seed", str(seed)]
    start = time.perf_counter()
    result = json_child(args, f"python -m {MODELS}", log)
    return {"benchmark": "simulate", "mode": "check",
            "wall_s": round(time.perf_counter() - start, 1), **result}


def simulate_scale(clients: int, duration_s: float, queue: str,
                   log: Callable[[str], None], simulate: int | None = None
                   ) -> dict[str, Any]:
    """One scale run in a child; its figures and the goals they are read against.
    `simulate`: that many of the instances in full, the others mirrored."""
    args = [sys.executable, "-m", SCALE, "--clients", str(clients), "--duration",
            str(duration_s), "--queue", queue]
    part = ""
    if simulate is not None:
        args += ["--simulate-instances", str(simulate)]
        part = f", {simulate} instance(s) in full, the others mirrored"
    log(f"simulating a deploy storm of {clients:,} clients ({queue} queue{part}) ...")
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"python -m {SCALE} exited {proc.returncode}: {tail}")
    result = json.loads(proc.stdout)
    return {"benchmark": "simulate", "mode": "scale", **result,
            "goal_wall_s": GOAL_WALL_S.get(clients), "goal_rss_mb": GOAL_RSS_MB}


def scale_summary(result: dict[str, Any]) -> str:
    goal = result["goal_wall_s"]
    wall = f"{result['wall_s']} s wall" + (f" (goal <= {goal:g} s)" if goal else "")
    part = ("" if result["simulated_instances"] == result["instances"] else
            f" of which {result['simulated_instances']} in full with "
            f"{result['simulated_clients']:,} clients, the others mirrored; the counts "
            "are the deployment's")
    return (f"simulate --clients {result['clients']:,} ({result['instances']} instances"
            f"{part}, {result['virtual_s']:g} virtual s, {result['queue']} queue): {wall}, "
            f"{result['events']:,} events ({result['events_per_s']:,}/s), peak RSS "
            f"{result['peak_rss_mb']:,} MB (goal <= {result['goal_rss_mb']:,}); "
            f"{result['connects']:,} connects, closes {result['closes']}, "
            f"{result['deliveries']:,} deliveries")


def check_summary(result: dict[str, Any]) -> str:
    """The table: figure, published, ours, difference, within bound; then the windows."""
    rows = [("figure", "published", "ours", "difference", "bound", "within")]
    rows += [(c["figure"], c["stated"] or _number(c["published"]), _number(c["ours"]),
              c["difference"],
              c["bound"], "yes" if c["within"] else "NO") for c in result["checks"]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(_standard_error(result["occ"]))
    lines.append("")
    lines += _windows(result["metastable"])
    missed = sum(not c["within"] for c in result["checks"])
    lines.append("")
    lines.append(f"simulate --check: {len(result['checks']) - missed} of "
                 f"{len(result['checks'])} figures within their bounds (Brooker: "
                 f"{result['occ_trials']} trials per strategy, seed {result['seed']}; "
                 f"{result['wall_s']} s wall)" + (f"; {missed} MISSED" if missed else ""))
    return "\n".join(lines)


def _standard_error(occ: list[dict[str, Any]]) -> str:
    """The statistical error of Brooker's means, against which the 5% bound is read."""
    errors = [(r[f"sem_{key}"] / r[f"mean_{key}"], r["strategy"], label)
              for r in occ for key, label in (("calls", "calls"),
                                              ("completion_s", "completion"))]
    worst, strategy, label = max(errors)
    return (f"Brooker means over {occ[0]['trials']} trials each; the largest standard "
            f"error is {100 * worst:.1f}% of its mean ({strategy} {label})")


def _windows(metastable: list[dict[str, Any]]) -> list[str]:
    lines = ["Bronson metastability, per second (outage "
             f"{metastable[0]['outage_s'][0]:g}-{metastable[0]['outage_s'][1]:g} s):",
             f"  {'offered':>8}  {'window':<18} {'offered/s':>9} {'attempts/s':>10} "
             f"{'goodput/s':>9}"]
    for run in metastable:
        for name, w in run["windows"].items():
            span = f"{name} {w['start_s']:g}-{w['end_s']:g} s"
            lines.append(f"  {run['offered_per_s']:>6g}/s  {span:<18} "
                         f"{w['offered_per_s']:>9.1f} {w['attempts_per_s']:>10.1f} "
                         f"{w['goodput_per_s']:>9.1f}")
        after = run["recovered_after_s"]
        lines.append(f"  {'':>8}  goodput back "
                     + ("never, within the run" if after is None
                        else f"{after:g} s after the outage"))
    return lines


def _number(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"
