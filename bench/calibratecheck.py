"""`python -m bench calibrate-check`: do the calibrated costs predict the benchmarks'
saturation throughput?

The calibration is `sim`'s, and the layers keep `bench` and `sim` independent, so (as
`bench simulate` does) `rtmsim calibrate --json` runs in a child process and its model
comes back as JSON: the costs and their prediction for one core (`fanout`: 50
deliveries per `publish + 50 x delivery`; `reqack`: one round trip per `publish`;
each with its share of a loop turn, `turn_us / requests in flight`).
Then `fanout` (50 subscribers, 4 publishers) and `reqack` (8 connections) run exactly
as `python -m bench` runs them: the server pinned to CPU 0, the load client on CPU 1,
alternating with the bare baseline in short turns. A prediction more than
`TOLERANCE` from ours exits 1; beside each figure are the ones that say why it missed:
the share of its core the server got, and its CPU per publish at saturation against
the calibrated one (an operation found queued with others is cheaper: batching).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import benchmarks
from .procs import BenchError, json_child

TOLERANCE = 0.15
SATURATED = 0.9  # of a core: below it a benchmark did not measure a saturated server
FANOUT = {"subscribers": 50, "publishers": 4}
REQACK = {"connections": 8}
PAYLOAD_BYTES = 64  # what the calibration publishes too


def calibrate(seconds: float, log: Callable[[str], None]) -> dict[str, Any]:
    """`rtmsim calibrate --json` in a child (its progress through `log`); its model."""
    with tempfile.TemporaryDirectory(prefix="rtmsim-calcheck-") as tmp:
        args = [sys.executable, "-m", "sim.cli", "calibrate", "--seconds", str(seconds),
                "--no-redis", "--json", "--out", str(Path(tmp) / "model.toml")]
        result = json_child(args, "rtmsim calibrate", log)
    if not isinstance(result, dict) or "model" not in result:
        raise BenchError("rtmsim calibrate printed no model")
    return result["model"]


def compare(name: str, predicted: float, model_us: float, result: dict[str, Any],
            server_core: int | None) -> dict[str, Any]:
    """One benchmark's real figure against the prediction, and what explains a miss."""
    ours = result["servers"]["ours"]
    real = result["ours"]
    core = ours["server_cpu"]  # the share of a core the server used in the window
    real_us = ours["server_cpu_us_per_ack"]
    error = predicted / real - 1 if real else float("inf")
    busy = result["busy_by_cpu"].get(str(server_core)) if server_core is not None else None
    reasons = []
    if busy is not None and busy < SATURATED:
        reasons.append(f"the server's core was {busy:.0%} busy: the server was not "
                       f"saturated, the load was the limit (its client used "
                       f"{result['client_cpu']} core; other processes "
                       f"{result['other_cpu']} core of the machine)")
    elif core is not None and core < SATURATED:
        reasons.append(f"the server got {core:.0%} of its core: other processes "
                       f"({result['other_cpu']} core of the machine) took the rest")
    if real_us and model_us / real_us > 1 + TOLERANCE / 2:
        reasons.append(f"batching: a publish cost {real_us:.1f} us of CPU at saturation "
                       f"against {model_us:.1f} calibrated ({model_us / real_us - 1:.0%} "
                       "more)")
    elif real_us and real_us / model_us > 1 + TOLERANCE / 2:
        reasons.append(f"a publish cost {real_us:.1f} us of CPU at saturation, "
                       f"{real_us / model_us - 1:.0%} more than the {model_us:.1f} "
                       "calibrated (the machine slowed between the two, or interrupts)")
    return {
        "benchmark": name, "unit": result["unit"], "real": real,
        "predicted": round(predicted, 1), "error": round(error, 4),
        "within": abs(error) <= TOLERANCE,
        "server_core_share": core,
        # the costs alone at the core share the server actually got
        "predicted_at_that_share": round(predicted * core, 1) if core else None,
        "cpu_us_per_publish": {"saturated": real_us, "calibrated": round(model_us, 2)},
        "bare": result["bare"], "other_cpu": result["other_cpu"],
        "busy_by_cpu": result["busy_by_cpu"], "explanations": reasons,
    }


def calibrate_check(*, seconds: float, warmup: float, calibrate_seconds: float,
                    placement: benchmarks.Placement, log: Callable[[str], None]
                    ) -> dict[str, Any]:
    log(f"calibrate-check: rtmsim calibrate --seconds {calibrate_seconds:g}")
    model = calibrate(calibrate_seconds, log)
    costs, predicted = model["costs_us"], model["measured"]["predicted"]
    # a publish's CPU with as many in flight as each benchmark keeps: its cost and
    # that share of its loop turn (calibrations before 2026-12-07 22:00 have none)
    turn = model.get("turn_us", {}).get("publish", 0.0)
    log("calibrate-check: the benchmarks at saturation")
    fanout = benchmarks.fanout(seconds=seconds, warmup=warmup, slice_s=0.25,
                               payload_bytes=PAYLOAD_BYTES, placement=placement, log=log,
                               **FANOUT)
    reqack = benchmarks.reqack(seconds=seconds, warmup=warmup, slice_s=0.25,
                               payload_bytes=PAYLOAD_BYTES, placement=placement, log=log,
                               **REQACK)
    n = FANOUT["subscribers"]
    core = min(placement.server_cpus) if placement.server_cpus else None
    checks = [
        compare("fanout", predicted["fanout_delivered_per_s"],
                costs["publish"] + turn / FANOUT["publishers"] + n * costs["delivery"],
                fanout, core),
        compare("reqack", predicted["reqack_round_trips_per_s"],
                costs["publish"] + turn / REQACK["connections"], reqack, core),
    ]
    return {"benchmark": "calibrate-check", "tolerance": TOLERANCE,
            "passed": all(c["within"] for c in checks), "checks": checks,
            "model": {"name": model["name"], "costs_us": costs,
                      "turn_us": model.get("turn_us", {}),
                      "batching": model["measured"].get("batching"),
                      "server_core_used_by_others":
                          model["measured"].get("server_core_used_by_others")},
            "seconds": seconds, **placement.describe()}


def check_summary(result: dict[str, Any]) -> str:
    lines = []
    for c in result["checks"]:
        lines.append(f"{c['benchmark']}: real {c['real']:,.0f} {c['unit']}, predicted "
                     f"{c['predicted']:,.0f} ({c['error']:+.1%}, "
                     f"{'within' if c['within'] else 'OUTSIDE'} "
                     f"{result['tolerance']:.0%})")
        lines += [f"    {why}" for why in c["explanations"]]
    return "\n".join(lines)
