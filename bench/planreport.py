"""What `bench plancheck`'s result says: what shared the real instances' cores, the
prediction scaled to the cores they got, and the result in a few lines.

Pure functions of the steps both ladders recorded (`bench.plancheck`), so a result can
be read again without running anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

QUIET_CPU = 0.15  # cores other processes may take while the machine still counts as quiet

def at_instance_cores(predicted: float | None, measured: float | None,
                      shared: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The prediction scaled to the cores the real instances could get: at the first
    step over the limits they are as busy as they can be, and the model's capacity is
    that of two whole cores. What is left between this and the measured capacity is
    the costs (CPU per publish), not the sharing."""
    over = shared.get("over")
    if predicted is None or measured is None or over is None:
        return None
    cores = over["instance_cores"]
    scaled = predicted * cores / len(over["instances"])
    return {"instance_cores": cores, "predicted": round(scaled),
            "error": round(scaled / measured - 1, 4)}


def shared_cores(measured: dict[str, Any], predicted: dict[str, Any]
                 ) -> dict[str, dict[str, Any]]:
    """What the real instances' cores did at the measured capacity ("knee") and at the
    first step over it ("over", where they are busiest): the cores each instance used,
    what the load process, redis-server, interrupts and other processes took (the model
    gives the instances their cores to themselves), and the instances' CPU per acked
    publish against the engine's at the same rate (the model's costs)."""
    twins = {s["rate"]: s for s in predicted["steps"]}
    out = {}
    for name, rate in (("knee", measured["capacity_per_s"]),
                       ("over", measured["first_over_per_s"])):
        step = next((s for s in measured["steps"] if s["rate"] == rate), None)
        if step is None:
            continue
        cpu = step["cpu"]
        names = sorted(k for k in cpu if k.startswith("i"))
        busy = sum(step["busy_by_cpu"].values())
        # Interrupts the kernel charged to the task they interrupted are inside the
        # processes' CPU already (this kernel: the processes' CPU adds up to the
        # cores' busy time, interrupts included); only what busy time has beyond the
        # processes can be interrupts of their own.
        irq_outside = max(0.0, min(step["irq_cpu"], busy - sum(cpu.values())))
        taken = {"load": cpu.get("load", 0.0), "redis": cpu.get("redis", 0.0),
                 "irq": round(irq_outside, 3), "other": step["other_cpu"]}
        twin = twins.get(rate)
        out[name] = {
            "rate": rate, "instances": {n: cpu[n] for n in names},
            "instance_cores": round(sum(cpu[n] for n in names), 3), "taken": taken,
            "taken_cores": round(sum(taken.values()), 3), "busy_by_cpu": step["busy_by_cpu"],
            "instance_us_per_publish": {"real": _us_per_publish(step, names),
                                        "engine": _us_per_publish(twin, names)},
            "redis_us_per_publish": _us_per_publish(step, ["redis"]),
            "load_us_per_publish": _us_per_publish(step, ["load"]),
            "irq_us_per_publish": _us_per_publish({**step, "cpu": {"irq": irq_outside}},
                                                  ["irq"]),
            "irq_inside_us_per_publish": _us_per_publish(
                {**step, "cpu": {"irq": step["irq_cpu"] - irq_outside}}, ["irq"])}
        ours = [out[name][k] for k in ("redis_us_per_publish", "load_us_per_publish",
                                       "irq_us_per_publish")]
        ours.append(out[name]["instance_us_per_publish"]["real"])
        if None not in ours:
            # Everything this deployment and its load cost the machine per publish, and
            # the most two cores would carry at that price with nothing else running.
            out[name]["ours_us_per_publish"] = round(sum(ours), 1)
            out[name]["machine_alone_per_s"] = round(len(names) * 1e6 / sum(ours))
    return out


def model_us_per_publish(calibration: dict[str, Any] | None, fanout: float
                         ) -> dict[str, float] | None:
    """The calibrated model's CPU a publish of the workload, to hold against the
    measured figures: both instances together, redis-server, the raw load process."""
    if not calibration or not calibration.get("redis"):
        return None
    c, r = calibration["costs_us"], calibration["redis"]
    out = {"instances": c["publish"] + r["send_us"] + r["receive_us"]
           + fanout * c["delivery"], "redis-server": r["server_us"]}
    raw = calibration.get("raw_client")
    if raw:
        out["load process"] = raw["send_us"] + raw["receive_us"] + fanout * raw["delivery_us"]
    return out


def _us_per_publish(step: dict[str, Any] | None, names: Sequence[str]) -> float | None:
    if step is None or not step["acked_per_s"]:
        return None
    return round(sum(step["cpu"].get(n, 0.0) for n in names) / step["acked_per_s"] * 1e6, 1)


def plancheck_summary(result: dict[str, Any]) -> str:
    """The result in a few lines: both capacities, the verdict, what shared the cores."""
    w, p, m = result["workload"], result["predicted"], result["measured"]

    def capacity(side: dict[str, Any]) -> str:
        cap = side["capacity_per_s"]
        text = "none (over a limit at the first step)" if cap is None else f"{cap:,.0f}/s"
        if side["lower_bound"]:
            return text + " (no step crossed a limit: at least this)"
        return text + f"; {side['first_over_per_s']:,.0f}/s crossed: {side['limit']}"
    lines = [f"plancheck: {m['instances']} instances behind Redis, {w['subscribers']} "
             f"subscribers on {w['channels']} channels (fan-out {w['fanout']:g}), "
             f"{w['publishers']} publishers; publish p99 <= {result['limits']['p99_ms']:g} "
             f"ms, errors <= {100 * result['limits']['error_rate']:g}%",
             f"  predicted capacity {capacity(p)}",
             f"  measured capacity  {capacity(m)}"]
    if result["error"] is None:
        lines.append("  no ratio: a side has no capacity")
    else:
        lines.append(f"  measured/predicted {result['ratio']:.3f}: the prediction is "
                     f"{result['error']:+.1%} of the measured capacity, "
                     f"{'within' if result['passed'] else 'OUTSIDE'} "
                     f"{result['tolerance']:.0%}")
    for name, what in (("knee", "at the measured capacity"),
                       ("over", "at the first step over it")):
        s = result["shared"].get(name)
        if s is None:
            continue
        per = s["instance_us_per_publish"]
        lines.append(f"  {what} ({s['rate']:,.0f}/s) the instances used "
                     + ", ".join(f"{k} {v:.2f}" for k, v in s["instances"].items())
                     + " core; beside them: "
                     + ", ".join(f"{k} {v:.2f}" for k, v in s["taken"].items())
                     + f" core; instance CPU per publish {per['real']} us (engine "
                     f"{per['engine']} us), redis-server {s['redis_us_per_publish']} us, "
                     f"load process {s['load_us_per_publish']} us, interrupts "
                     f"{s['irq_us_per_publish']} us beside them (and "
                     f"{s['irq_inside_us_per_publish']} us inside them)")
    over = result["shared"].get("over") or result["shared"].get("knee")
    if over and over.get("ours_us_per_publish"):
        lines.append(f"  all of it {over['ours_us_per_publish']} us of CPU a publish: two "
                     f"cores with nothing else on them carry at most "
                     f"{over['machine_alone_per_s']:,.0f}/s")
    model = model_us_per_publish(result.get("calibration"), w["fanout"])
    if model:
        lines.append("  the model (this machine's calibration): " + ", ".join(
            f"{k} {v:.0f} us" for k, v in model.items()) + " a publish")
    scaled = result["at_instance_cores"]
    if scaled:
        lines.append(f"  the prediction at the {scaled['instance_cores']:.2f} cores the "
                     f"instances got: {scaled['predicted']:,.0f}/s, {scaled['error']:+.1%} "
                     "of the measured capacity")
    other = max((s["taken"]["other"] for s in result["shared"].values()), default=0.0)
    if other > QUIET_CPU:
        lines.append(f"  ! other processes took up to {other:.2f} core of the instances' "
                     "two: the machine was not quiet, and the ratio reads that too")
    la = result["load_average"]
    lines.append(f"  load average {la['before_real']:.2f} before, {la['after_real']:.2f} "
                 f"after the real ladder; {m['wall_s']:g} s real, {p['wall_s']:g} s predicted")
    return "\n".join(lines)
