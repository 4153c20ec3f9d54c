"""The sweep: the smallest deployment that keeps the limits, found by simulation.

The model's costs give a first guess (the instances whose busiest core would sit near
`GUESS_SHARE` in steady state); from there on only simulated points decide. A
deployment passes when its steady window and its storm window both keep the limits,
and passing is taken to be monotone in the instance count, so the search keeps the
largest failing and the smallest passing count and probes between them, `jobs`
points at a time (each in its own process: a point is one core's work). When a point
fails for a reason more instances cannot fix (the app's plan, a Redis outage), the
search stops and says so rather than trying every count up to the maximum.

Then each load of the curve (`loads`, as multiples of the target) runs on the chosen
deployment and its neighbours, which is where the answer's margin shows, and the
chosen one's load keeps rising until a limit is crossed: its headroom is measured.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..scenario import Scenario
from ..virtual.model import Model
from .point import Limits, PointJob, run_point
from .workload import Mix, Targets, Timing, plan_mix, point_scenario

GUESS_SHARE = 0.7  # the first guess aims the busiest core at this share in steady state
GUESS_WAVE_S = 2.0  # ... and a wave's reconnects at this much CPU (retryAfterMs + jitter)
UNFIXABLE = ("plan_quota", "redis_outage", "redis_server")
MAX_LOAD = 16.0  # the curve of the answer goes this far (x the target) to find its limit


@dataclass(frozen=True)
class PlanRequest:
    targets: Targets
    limits: Limits = field(default_factory=Limits)
    timing: Timing = field(default_factory=Timing)
    max_instances: int = 32
    loads: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    max_load: float = MAX_LOAD  # the answer's load rises this far to find its headroom
    jobs: int = 1


def steady_cpu_share(mix: Mix, model: Model, instances: int, load: float) -> float:
    """The model's steady-state share of one core on each instance (arithmetic, for the
    first guess only): its share of the publishes and their deliveries, and, behind
    Redis, the hop of every publish (sent by one instance, received by the others)."""
    msgs = mix.counts[mix.publisher] * mix.publish_rate * load
    cost = model.costs_us
    per_msg = cost["publish"] + mix.fanout * cost["delivery"]
    if instances > 1:
        per_msg += model.redis.send_us + (instances - 1) * model.redis.receive_us
    return msgs * per_msg / instances / 1e6 / model.cores


def client_s(mix: Mix, model: Model) -> float:
    """What one client's arrival costs its instance: the connect and the subscribes."""
    return model.cost_s("connect_key") + mix.subscriptions * model.cost_s("subscribe")


def wave_cpu_s(mix: Mix, model: Model, instances: int, fraction: float) -> float:
    """CPU seconds each instance spends when `fraction` of the clients reconnect at once
    (a deploy wave): a connect and a disconnect each (arithmetic, for the first guess)."""
    clients = sum(mix.counts.values())
    cost = model.costs_us
    return fraction * clients * (cost["connect_key"] + cost["disconnect"]) / 1e6 / instances


def first_guess(mix: Mix, model: Model, max_instances: int,
                waves: tuple[float, ...] = ()) -> int:
    """The fewest instances the model's arithmetic puts under `GUESS_SHARE` in steady
    state and under `GUESS_WAVE_S` of CPU for the largest wave of `waves` (fractions of
    the clients a storm sends away at once)."""
    largest = max(waves, default=0.0)
    for k in range(1, max_instances + 1):
        if (steady_cpu_share(mix, model, k, 1.0) <= GUESS_SHARE
                and wave_cpu_s(mix, model, k, largest) <= GUESS_WAVE_S):
            return k
    return max_instances


def _probes(lo: int, hi: int | None, top: int, jobs: int) -> list[int]:
    """The next counts to try: between the largest failing `lo` and the smallest
    passing `hi`, or upwards from `lo` when nothing has passed yet."""
    if hi is None:
        step = max(1, math.ceil(lo * 0.5))
        return sorted({min(top, lo + step * i) for i in range(1, jobs + 1)} - {lo})
    inner = list(range(lo + 1, hi))
    if len(inner) <= jobs:
        return inner
    step = len(inner) / (jobs + 1)
    return sorted({inner[int(step * (i + 1))] for i in range(jobs)})


class Planner:
    """One plan: its points, simulated as asked, kept by (instances, load)."""

    def __init__(self, scenario: Scenario, request: PlanRequest, model: Model,
                 out_dir: Path, log: Callable[[str], None] = print) -> None:
        self.scenario = scenario
        self.request = request
        self.model = model
        self.out_dir = out_dir
        self.log = log
        self.mix = plan_mix(scenario, request.targets)
        self.points: dict[tuple[int, float], dict[str, Any]] = {}
        self.stopped: str | None = None  # why the search gave up early

    def resume(self, points: Iterable[dict[str, Any]]) -> int:
        """Take points simulated by an earlier run of the same plan (its plan.json):
        they are not simulated again. How many were taken."""
        n = 0
        for point in points:
            self.points[(int(point["instances"]), float(point["load"]))] = revived(point)
            n += 1
        return n

    # -- points -------------------------------------------------------------------------

    def _job(self, instances: int, load: float) -> PointJob:
        sc, windows = point_scenario(self.scenario, self.mix, instances=instances,
                                     load=load, timing=self.request.timing,
                                     client_s=client_s(self.mix, self.model),
                                     busy_share=steady_cpu_share(self.mix, self.model,
                                                                 instances, load))
        return PointJob(instances=instances, load=load, scenario_text=sc.source,
                        scenario_path=str(self.scenario.path) if self.scenario.path else None,
                        windows=windows, model=self.model, limits=self.request.limits,
                        run_dir=str(self.out_dir / "points" / f"k{instances}-x{load:g}"))

    def evaluate(self, pairs: Iterable[tuple[int, float]]) -> None:
        """Simulate the points not simulated yet, `jobs` at a time."""
        todo = [p for p in dict.fromkeys(pairs) if p not in self.points]
        if not todo:
            return
        jobs = [self._job(k, x) for k, x in todo]
        if self.request.jobs <= 1 or len(jobs) == 1:
            results = map(run_point, jobs)
            for result in results:
                self._keep(result)
            return
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=min(self.request.jobs, len(jobs)),
                                 mp_context=context) as pool:
            for result in pool.map(run_point, jobs):
                self._keep(result)

    def _keep(self, result: dict[str, Any]) -> None:
        self.points[(result["instances"], result["load"])] = result
        self.log(point_line(result))

    def passed(self, instances: int, load: float = 1.0) -> bool:
        return bool(self.points[(instances, load)]["passed"])

    # -- the search -------------------------------------------------------------------------

    def search(self) -> int | None:
        """The fewest instances that keep the limits at the target load (None: none up
        to `max_instances`, or a limit instances cannot fix)."""
        top = self.request.max_instances
        jobs = max(1, self.request.jobs)
        waves = tuple(float(getattr(f, "fraction", 0.0)) for f in self.scenario.config.faults
                      if getattr(f, "code", None) is not None)
        guess = first_guess(self.mix, self.model, top, waves)
        probes = [guess] + ([guess - 1] if jobs > 1 and guess > 1 else [])
        lo, hi = 0, None
        while probes:
            self.evaluate((k, 1.0) for k in probes)
            for k in probes:
                if self.passed(k):
                    hi = k if hi is None else min(hi, k)
                else:
                    lo = max(lo, k)
                    why = self._unfixable(k)
                    if why:
                        self.stopped = why
                        return None
            if hi is not None and hi - lo <= 1:
                return hi
            if hi is None and lo >= top:
                return None
            probes = _probes(lo, hi, top, jobs)
        return hi

    def _unfixable(self, instances: int) -> str | None:
        point = self.points[(instances, 1.0)]
        for name in ("steady", "storm"):
            window = point.get(name)
            if window and window["crossed"] and window["resource"]["kind"] in UNFIXABLE:
                return f"{name} window: {window['resource']['text']}"
        return None

    def curves(self, chosen: int | None) -> None:
        """Every load of the curve on the chosen deployment and its neighbours."""
        top = self.request.max_instances
        centre = chosen if chosen is not None else max((k for k, _ in self.points),
                                                       default=1)
        deployments = [k for k in (centre - 1, centre, centre + 1) if 1 <= k <= top]
        if self.stopped or self.request.loads == (1.0,):
            # More instances cannot help, or no curve was asked for: the neighbours'
            # points at the target would add nothing the search did not already find.
            deployments = [centre]
        self.evaluate((k, x) for k in deployments for x in self.request.loads)
        if chosen is not None:
            self._beyond(chosen)

    def _beyond(self, chosen: int) -> None:
        """Raise the load on the chosen deployment until it crosses a limit (up to
        `max_load`), so that its headroom and what binds are measured, not bounded."""
        top = self.request.max_load
        load = max(x for k, x in self.points if k == chosen)
        while self.headroom(chosen) == load and load < top:
            load = min(top, round(load * 1.5, 2))
            self.evaluate([(chosen, load)])

    def headroom(self, instances: int) -> float | None:
        """The largest load (x the target) that this deployment carried within the
        limits, with every lower load of the curve also within them."""
        best = None
        for load in sorted(x for k, x in self.points if k == instances):
            if not self.points[(instances, load)]["passed"]:
                break
            best = load
        return best


def revived(point: dict[str, Any]) -> dict[str, Any]:
    """A point read back from plan.json: the NaNs it wrote as null are NaN again (a
    window that is null, the storm of a scenario without storms, stays None)."""
    def nan(value: Any) -> Any:
        if value is None:
            return math.nan
        if isinstance(value, dict):
            return {k: nan(v) for k, v in value.items()}
        return value
    out = dict(point)
    for name in ("steady", "storm"):
        window = point.get(name)
        if window is not None:
            out[name] = {k: (v if k in ("busiest_second", "crossed", "errors_by_code")
                             else nan(v)) for k, v in window.items()}
    return out


def point_line(p: dict[str, Any]) -> str:
    """One progress line for a simulated point."""
    parts = []
    for name in ("steady", "storm"):
        w = p.get(name)
        if w:
            peak = w["resource"].get("share", math.nan)
            parts.append(f"{name} p99 {w['publish_p99_ms']:.1f} ms, errors "
                         f"{100 * w['error_rate']:.2f}%, busiest core "
                         f"{100 * max(w['cpu'].values(), default=math.nan):.0f}% "
                         f"(peak second {100 * peak:.0f}%)")
    verdict = "keeps the limits" if p["passed"] else "; ".join(p["crossed"]) or p["status"]
    return (f"  {p['instances']:>3} instance(s) at {p['load']:g}x: {' | '.join(parts)}"
            f" -> {verdict} ({p['wall_s']:.1f} s)")
