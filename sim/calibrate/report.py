"""What `rtmsim calibrate` prints and writes above the model: the header of the model
file (how and where it was measured) and the table of costs a person reads."""

from __future__ import annotations

from typing import Any

from sim.virtual.model import OPERATIONS

from .steps import Scale

OTHERS_WARNING = 0.15  # of the server's core used by other processes (as bench's)


def header(model: dict[str, Any], scale: Scale) -> str:
    m = model["measured"]
    return (f"Measured by `rtmsim calibrate --seconds {scale.seconds:g}` on {m['date']}:\n"
            f"{m['host']}, {m['cpus']} vCPU {m['arch']} ({m['cpu_model']}), Python "
            f"{m['python']}, kernel {m['kernel']}.\n"
            "The server (rtmsim serve, memory backend, the benchmarks' config) pinned to "
            "one CPU,\nthe load on the other; CPU per operation fitted by least squares "
            "over every step\n([model.measured.steps]); other processes took "
            f"{m['server_core_used_by_others']:.0%} of the server's core meanwhile.")


def table(model: dict[str, Any]) -> str:
    """The human-readable result."""
    m = model["measured"]
    by_op: dict[str, list[str]] = {op: [] for op in OPERATIONS}
    for step in m["steps"]:
        for op in step["ops"]:
            if op in by_op:
                by_op[op].append(step["step"])
    turn = model.get("turn_us", {})
    lines = [f"{'operation':<14}{'us of a core':>13}{'+ turn':>8}  measured in (residual)"]
    residual = {s["step"]: s["residual"] for s in m["steps"]}
    for op, cost in model["costs_us"].items():
        where = ", ".join(f"{s} ({_pct(residual[s])})" for s in by_op[op])
        flag = "  (clamped: fit <= 0)" if op in m["clamped"] else ""
        share = f"{turn[op]:>8.2f}" if op in turn else " " * 8
        lines.append(f"{op:<14}{cost:>13.2f}{share}  {where}{flag}")
    if turn:
        lines.append(f"(+ turn: shared by the requests one loop turn serves; a lone request "
                     f"pays it all, calibrated at {m['sockets_per_step']} and "
                     f"{m['sockets_per_turn_step']} in flight)")
    net, red, pred = model["network"], model["redis"], m["predicted"]
    lines += [
        f"network       one way median {net['median_ms']} ms, sigma {net['sigma']} "
        f"({m['network']['round_trips']} round trips)",
        "wake-up       " + ", ".join(f"{us:g} us after {ms:g} ms idle"
                                     for ms, us in model["wake_curve"]),
        "wake-up CPU   " + (", ".join(f"{us:g} us after {ms:g} ms idle"
                                      for ms, us in model["wake_cpu_curve"])
                            or "not measured"),
        f"redis         send {red['send_us']} us, receive {red['receive_us']} us, "
        f"redis-server {red['server_us']} us, latency {red['latency_ms']} ms"
        + ("" if m["redis"]["measured"] else "  (defaults: not measured)"),
        f"predicted     fan-out 50 subscribers {pred['fanout_delivered_per_s']:,.0f} "
        f"delivered/s; reqack {pred['reqack_round_trips_per_s']:,.0f} round trips/s "
        "(one core, costs and turns alone)",
        f"batching      a publish costs {m['batching']['publish_us_1_in_flight']} us "
        f"with 1 in flight, {m['batching']['publish_us_8_in_flight']} with 8 "
        f"(calibrated at {m['sockets_per_step']})",
    ]
    lg = model.get("load_generator")
    if lg is not None:
        lines.append(f"load gen      a Locust process: send {lg['send_us']} us, receive "
                     f"{lg['receive_us']} us, delivery {lg['delivery_us']} us, a reader's "
                     f"wake {lg.get('wake_us', 0.0)} us of its core"
                     + (f"; an upgrade {lg['connect_us']} us more than a send"
                        if "connect_us" in lg else ""))
        if lg.get("timer_wake_curve"):
            lines.append(f"load timers   on whole {lg['timer_ms']:g} ms, then " + ", ".join(
                f"{us:g} us after {ms:g} ms idle" for ms, us in lg["timer_wake_curve"]))
    raw = model.get("raw_client")
    if raw is not None:
        lines.append(f"raw client    send {raw['send_us']} us, receive {raw['receive_us']} us, "
                     f"delivery {raw['delivery_us']} us of its core")
    else:
        lines.append(f"raw client    not measured: {m['raw_client']['reason']}")
    if m["server_core_used_by_others"] > OTHERS_WARNING:
        lines.append(f"warning: other processes and interrupts used "
                     f"{m['server_core_used_by_others']:.0%} of the server's core during "
                     "the steps; the costs are likely inflated: rerun on a quiet machine")
    return "\n".join(lines)


def _pct(r: Any) -> str:
    return f"{r:+.1%}" if isinstance(r, float) else str(r)
