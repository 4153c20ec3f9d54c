"""The raw load client's costs (`[model.raw_client]`): what `loadtests.rawws` (the
load of calibrate's own steps, and of bench/planload.py) spends on the frames its
sockets exchange, fitted from the publish steps the calibration runs anyway.

The load of every step runs in the calibrate process, so that process's CPU over a
step (`Meter`: all its threads) is the raw client's for that step. In `publish_to_K`
each publish is a round trip of a `Requester` (a request written, its ack read and
checked) and each of its K deliveries a frame walked by a counting `Subscriber` (its
payload skipped unread). Over those steps, the least squares of

    load CPU = round trips x round_trip_us + deliveries x delivery_us

(each step weighted by 1 / its load CPU, as the server's fit; neither cost below zero)
gives the two figures, and the round trip is split as the Locust process's is
(`loadgen.SPLIT`): only the sum is measured.

Where it does not hold: a delivery costs the client less the more frames one wake-up
finds (as the server's batching), so the straight line misses the steps by 10-20%
(on the 2-vCPU VM, 2026-12: a publish with 10 deliveries took 81-87 us of load CPU in
publish_to_10, the fit says 66-67; publish_to_50 is over-predicted by ~11%). The
residuals are in the record.

The process's other threads are in that CPU too: uvloop's libuv workers and the
jemalloc thread pyarrow brings; neither is meant to run during a step, and each step
records what they did (`load_other_threads_cpu_s`: 0 in every step of the
calibrations tried but the first REST one, rest_get, 0.1-0.2 ms). Like
bench/planload.py's figure (the same clock), it counts the process's own CPU, not
interrupt time the kernel accounts apart from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .fit import FitError, Row, fit_nonnegative, used_rows
from .loadgen import SPLIT, client_table

PUBLISH_STEP = "publish_to_"  # the fan-out steps (steps.fanout)
UNKNOWNS = ("round_trip", "delivery")
FIT = ("least squares of load_cpu_s = round_trips x round_trip_us + deliveries x "
       "delivery_us over the publish steps, each weighted by 1 / load_cpu_s, both costs "
       ">= 0 (held_at_zero names one the data put below zero)")
CLOCK = ("time.process_time() of the calibrate process (all threads), over each step's "
         "window; the load runs in it")


def load_rows(rows: Sequence[Row]) -> list[Row]:
    """The publish steps as rows of the raw client's work: its round trips and the
    deliveries it read, and the load process's CPU."""
    return [Row(r.step, {"round_trip": r.ops.get("publish", 0),
                         "delivery": r.ops.get("delivery", 0)},
                r.extra.get("load_cpu_s", 0.0), r.wall_s, r.extra)
            for r in rows if r.step.startswith(PUBLISH_STEP)]


def raw_client_costs(rows: Sequence[Row]) -> tuple[dict[str, float] | None, dict[str, Any]]:
    """(`[model.raw_client]`, or None when the steps do not determine it; the record
    of how it was derived, or of why it was left out) from the calibration's rows."""
    load = load_rows(rows)
    used = [r.step for r in used_rows(load)]
    unused = [r.step for r in load if r.step not in used]
    try:
        fit = fit_nonnegative(load, UNKNOWNS)
    except FitError as exc:
        no_cpu = f"; no load CPU measured in {', '.join(unused)}" if unused else ""
        return None, {"measured": False,
                      "reason": f"the publish steps ({', '.join(r.step for r in load) or 'none'}"
                                f") do not determine the raw client's costs: {exc}{no_cpu}; "
                                "[model.raw_client] left out",
                      "fit": FIT}
    residual = dict(zip(used, fit.residuals, strict=True))
    round_trip_us, delivery_us = fit.costs_us["round_trip"], fit.costs_us["delivery"]
    record: dict[str, Any] = {
        "measured": True, "round_trip_us": round(round_trip_us, 2),
        "delivery_us": round(delivery_us, 2), "held_at_zero": fit.clamped,
        "max_abs_residual": round(max(abs(x) for x in fit.residuals), 4),
        "fit": FIT, "clock": CLOCK, "split": SPLIT,
        "steps": [{"step": r.step, "round_trips": int(r.ops["round_trip"]),
                   "deliveries": int(r.ops["delivery"]), "load_cpu_s": round(r.cpu_s, 6),
                   "wall_s": round(r.wall_s, 3),
                   "other_threads_cpu_s": r.extra.get("load_other_threads_cpu_s", 0.0),
                   "fitted_cpu_s": round(fit.predicted_cpu_s(r), 6),
                   "residual": round(residual[r.step], 4) if r.step in residual else "unused"}
                  for r in load],
    }
    return client_table(round_trip_us, delivery_us), record
