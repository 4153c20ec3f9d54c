"""What a plan answers, in one dict (`plan.json`) and a few lines for the terminal."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from .search import Planner


def _binding(planner: Planner, chosen: int) -> dict[str, Any]:
    """What runs out first on the chosen deployment as the load grows: the resource of
    the first load of its curve that crossed a limit, else the nearest at the highest
    load it carried."""
    loads = sorted(x for k, x in planner.points if k == chosen)
    for load in loads:
        point = planner.points[(chosen, load)]
        if not point["passed"]:
            window = next(w for w in (point["steady"], point["storm"])
                          if w and w["crossed"])
            return {"at_load": load, **window["resource"],
                    "crossed": point["crossed"]}
    point = planner.points[(chosen, loads[-1])]
    windows = [w for w in (point["steady"], point["storm"]) if w]
    nearest = max(windows, key=lambda w: _share(w["resource"]))
    return {"at_load": None, **nearest["resource"], "crossed": []}


def _share(resource: dict[str, Any]) -> float:
    share = resource.get("share", math.nan)
    return -1.0 if share is None or math.isnan(share) else share


def _busiest(point: dict[str, Any], window: str) -> float | None:
    w = point.get(window)
    if not w or not w["cpu"]:
        return None
    return max(w["cpu"].values())


def assumptions(planner: Planner) -> list[str]:
    r = planner.request
    t = r.timing
    mix = planner.mix
    return [
        f"the model: {planner.model.name} ({planner.model.cores} core(s) an instance; "
        "per-operation CPU costs, the Redis hop's CPU on every receiving instance)",
        f"the workload: the scenario's classes, {mix.counts[mix.publisher]:,} publishers at "
        f"{mix.publish_rate:g}/s (open model: the offered rate does not slow down with the "
        f"server) and {mix.counts[mix.subscriber]:,} subscribers, {mix.fanout:g} to a "
        "channel (exact channels, no wildcards); a load of 2x doubles clients, messages "
        "and channels",
        f"each point: the clients connect, {t.settle_s:g} s settle, a {t.steady_s:g} s "
        "steady window, then the scenario's storms in their own spacing and "
        f"{t.recover_s:g} s to recover (the storm window)",
        f"a deployment passes when both windows keep publish p99 <= {r.limits.p99_ms:g} ms "
        f"and errors <= {100 * r.limits.error_rate:g}% of requests (client-fault codes and "
        "the closes the storms send on purpose left out)",
        "passing is taken to be monotone in the instance count; the first guess comes "
        "from the model's arithmetic, the answer only from simulated points",
        "the load generator is not modelled: clients are on their own devices",
    ]


def plan_result(planner: Planner, chosen: int | None) -> dict[str, Any]:
    """plan.json: the request, the answer, every point, the assumptions."""
    r = planner.request
    mix = planner.mix
    at_target = {k: p["passed"] for (k, x), p in planner.points.items() if x == 1.0}
    answer: dict[str, Any] = {
        "instances": chosen, "stopped": planner.stopped,
        "passed_at_target": sorted(k for k, ok in at_target.items() if ok),
        "failed_at_target": sorted(k for k, ok in at_target.items() if not ok)}
    if chosen is not None:
        point = planner.points[(chosen, 1.0)]
        headroom = planner.headroom(chosen)
        answer.update(
            backend="redis" if chosen > 1 else planner.scenario.config.server.backend,
            binding=_binding(planner, chosen), headroom_load=headroom,
            busiest_core_steady=_busiest(point, "steady"),
            busiest_core_storm=_busiest(point, "storm"))
    return {
        "scenario": planner.scenario.name,
        "targets": asdict(r.targets), "limits": asdict(r.limits), "timing": asdict(r.timing),
        "max_instances": r.max_instances, "loads": list(r.loads),
        "model": planner.model.name,
        "mix": {"counts": mix.counts, "publish_rate": mix.publish_rate,
                "fanout": mix.fanout, "channels": mix.channels},
        "answer": answer,
        "points": [planner.points[key] for key in sorted(planner.points)],
        "assumptions": assumptions(planner),
    }


def verdict_lines(result: dict[str, Any]) -> list[str]:
    """The answer in a few lines: the deployment, what binds, the headroom."""
    t = result["targets"]
    a = result["answer"]
    limits = result["limits"]
    what = (f"{t['connections']:,} connections, {t['msgs_per_s']:,.0f} msgs/s, fan-out "
            f"{result['mix']['fanout']:g}, publish p99 <= {limits['p99_ms']:g} ms, errors "
            f"<= {100 * limits['error_rate']:g}%")
    if a["instances"] is None:
        why = a["stopped"] or (f"none of up to {result['max_instances']} instances kept "
                               "the limits (raise --max-instances?)")
        lines = [f"no deployment found for {what}: {why}"]
        passed, failed = a.get("passed_at_target"), a.get("failed_at_target")
        if a["stopped"] == "interrupted" and (passed or failed):
            lines.append(f"so far: {min(passed) if passed else 'none'} the fewest that kept "
                         f"the limits, {max(failed) if failed else 'none'} the most that did "
                         "not (--resume to go on)")
        return lines
    b = a["binding"]
    lines = [f"answer: {a['instances']} instance(s) ({a['backend']} backend) for {what}, "
             "through the scenario's storms" if any(p.get("storm") for p in result["points"])
             else f"answer: {a['instances']} instance(s) ({a['backend']} backend) for {what}"]
    if b["at_load"] is not None:
        lines.append(f"binding: at {b['at_load']:g}x the target, {b['text']}")
    else:
        lines.append(f"binding: nothing ran out up to {a['headroom_load']:g}x; nearest "
                     f"there: {b['text']}")
    steady = a["busiest_core_steady"]
    storm = a["busiest_core_storm"]
    cores = (f"busiest core {100 * steady:.0f}% in steady state" if steady is not None
             else "")
    if storm is not None:
        cores += f", {100 * storm:.0f}% through the storms"
    head = a["headroom_load"]
    lines.append(f"headroom: keeps the limits up to {head:g}x the target"
                 if head is not None else "headroom: none measured")
    if cores:
        lines[-1] += f"; {cores}"
    return lines
