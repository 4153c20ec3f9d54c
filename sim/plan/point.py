"""One point of a plan: a deployment at a load, simulated, measured and judged.

A point is a run directory like any other (`rtmsim report` opens it); what the
planner keeps of it is two windows (`sim.analysis.window_stats`), whether each stayed
under the limits, and which resource was nearest to running out. The resource comes
from the server's own counters over the window times the model's costs (what each
instance spent on connects, on publishes and deliveries, on the Redis hop), so it
names the work that filled the busiest core rather than guessing from symptoms.
"""

from __future__ import annotations

import gc
import io
import json
import math
import shutil
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..analysis.run import load_run
from ..analysis.window import window_stats
from ..scenario import Scenario, parse_scenario
from ..virtual.model import Model
from ..virtual.run import VirtualRun
from .workload import Windows

CONNECTED = 0.99  # of the clients, connected throughout a steady window
SATURATED = 0.85  # a core this busy over a window has run out
QUOTA_CODES = frozenset({"close 4010", "over_message_quota"})
REDIS_CODES = frozenset({"backend_error"})


@dataclass(frozen=True)
class Limits:
    """What a deployment must keep to, in steady state and through the storms."""

    p99_ms: float = 100.0
    error_rate: float = 0.01


@dataclass(frozen=True)
class PointJob:
    """Everything a worker process needs to run one point (picklable)."""

    instances: int
    load: float
    scenario_text: str
    scenario_path: str | None
    windows: Windows
    model: Model
    limits: Limits
    run_dir: str


def planned_closes(scenario: Scenario) -> frozenset[str]:
    """The close codes the scenario's own faults send on purpose (the storm itself)."""
    codes = set()
    for spec in scenario.config.faults:
        code = getattr(spec, "code", None)  # the strikes: deploy 1001, disconnect, close
        if code is not None:
            codes.add(f"close {int(code)}")
    return frozenset(codes)


def work_shares(per: dict[str, dict[str, float]], seconds: float, model: Model,
                clustered: bool) -> dict[str, dict[str, float]]:
    """Per instance, the share of one core each kind of work took over `seconds`:
    the model's costs times the instance's counters (`per`: their growth), each
    connection's disconnect when it ended. Behind
    Redis (`clustered`) an instance pays the sender's side of the hop for each publish
    it sends and the receiver's for each one every other instance sends."""
    published = sum(d.get("published", 0.0) for d in per.values())
    cost = model.costs_us
    send, receive = (model.redis.send_us, model.redis.receive_us) if clustered else (0, 0)
    def admission(d: dict[str, float]) -> float:
        # Connections that ended are those opened less the growth of those open: a
        # deploy's second closes thousands and opens none (they come back later).
        opened = d.get("connections_total", 0.0)
        now = d.get("connections_now", math.nan)
        ended = opened if math.isnan(now) else max(0.0, opened - now)
        return opened * cost["connect_key"] + ended * cost["disconnect"]
    return {name: {
        "connects": admission(d) / 1e6 / seconds,
        "messages": (d.get("published", 0.0) * cost["publish"]
                     + d.get("sent", 0.0) * cost["send"]
                     + d.get("delivered", 0.0) * cost["delivery"]) / 1e6 / seconds,
        "redis_hop": (d.get("published", 0.0) * send
                      + (published - d.get("published", 0.0)) * receive) / 1e6 / seconds,
    } for name, d in per.items()}


def redis_share(per: dict[str, dict[str, float]], seconds: float, model: Model) -> float:
    """The share of redis-server's core the publishes of `per` took over `seconds`
    (none when it shares the instances' cores: their CPU shows it then)."""
    if model.colocated:
        return 0.0
    published = sum(d.get("published", 0.0) for d in per.values())
    return published * model.redis.server_us / 1e6 / seconds


RESOURCE_NAMES = {"connects": "connection admission (connects and their disconnects)",
                  "messages": "publishes and their deliveries",
                  "redis_hop": "the Redis hop (sending its publishes, receiving the others')"}


def resource(window: dict[str, Any], model: Model, clustered: bool) -> dict[str, Any]:
    """The resource nearest to running out in a window, and how near: the busiest
    second of any instance's core, and the work that filled it."""
    errors = window["errors_by_code"]
    total = sum(errors.values())
    if total and sum(errors.get(c, 0) for c in QUOTA_CODES) * 2 >= total:
        return {"kind": "plan_quota", "share": math.nan,
                "text": "the app's plan (4010 / over_message_quota): more instances "
                        "cannot help; raise the plan's caps"}
    if total and sum(errors.get(c, 0) for c in REDIS_CODES) * 2 >= total:
        return {"kind": "redis_outage", "share": math.nan,
                "text": "Redis unavailable (backend_error): more instances cannot help"}
    peak = window.get("busiest_second")
    if not peak:
        return {"kind": "none", "share": math.nan, "text": "no server samples"}
    name, share = peak["instance"], peak["cpu"]
    seconds = peak["to_s"] - peak["from_s"]
    parts = work_shares(peak["instances"], seconds, model, clustered)[name]
    redis = redis_share(peak["instances"], seconds, model) if clustered else 0.0
    if redis > share:
        state = "runs out" if redis >= SATURATED else "peaked"
        return {"kind": "redis_server", "share": redis, "at_s": peak["from_s"],
                "text": f"CPU of redis-server {state} at {100 * redis:.0f}% of its core "
                        f"(at {peak['from_s']:.0f} s, {model.redis.server_us:.0f} us a "
                        "message; one Redis: more instances cannot help)"}
    part = max(parts, key=lambda k: parts[k])
    state = "ran out" if share >= SATURATED else "peaked"
    return {"kind": part, "share": share, "instance": name, "parts": parts,
            "at_s": peak["from_s"],
            "text": f"CPU of instance {name} {state} at {100 * share:.0f}% of a core "
                    f"(its busiest second, at {peak['from_s']:.0f} s), mostly "
                    f"{RESOURCE_NAMES[part]} ({100 * parts[part]:.0f}%)"}


def judge(window: dict[str, Any], limits: Limits, users: int | None = None) -> list[str]:
    """The limits a window crossed, in words (empty: it kept to them). With `users`, a
    steady window in which fewer than `CONNECTED` of them were connected crossed too."""
    crossed = []
    least = window.get("least_connections", math.nan)
    if users and not math.isnan(least) and least < CONNECTED * users:
        crossed.append(f"only {least:,.0f} of {users:,} clients connected")
    p99 = window["publish_p99_ms"]
    if not math.isnan(p99) and p99 > limits.p99_ms:
        crossed.append(f"publish p99 {p99:.1f} ms > {limits.p99_ms:g} ms")
    elif math.isnan(p99) and window["requests"]:
        crossed.append("no publish was acknowledged")
    if window["error_rate"] > limits.error_rate:
        crossed.append(f"errors {100 * window['error_rate']:.2f}% > "
                       f"{100 * limits.error_rate:g}%")
    return crossed


def finished_run(run_dir: Path, job: PointJob) -> int | None:
    """The events of a complete run of this very point already in `run_dir` (same
    scenario text, same model), or None: a resumed plan measures it again without
    simulating it again."""
    try:
        meta = json.loads((run_dir / "run.json").read_text())
        text = (run_dir / "scenario.toml").read_text(encoding="utf-8")
    except (OSError, json.JSONDecodeError):
        return None
    engine = meta.get("engine") or {}
    if (meta.get("status") != "complete" or text != job.scenario_text
            or engine.get("model") != job.model.name):
        return None
    return int(engine.get("events") or 0)


def run_point(job: PointJob) -> dict[str, Any]:
    """Simulate one point and measure it (runs in a worker process)."""
    data = tomllib.loads(job.scenario_text)
    path = Path(job.scenario_path) if job.scenario_path else None
    scenario = parse_scenario(data, job.scenario_text, path=path)
    run_dir = Path(job.run_dir)
    wall = time.monotonic()
    done = finished_run(run_dir, job)
    if done is not None:  # simulated by an earlier plan that stopped before its answer
        status, events = "complete", done
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # a run cut short: its rows would mix
        virtual = VirtualRun(scenario, run_dir, job.model, out=io.StringIO(),
                             progress=False, log_deliveries=False, even_spawn=True)
        status = virtual.run()
        events = virtual.engine.events_run
        del virtual  # a million clients' engine: freed before the analysis reads them
        gc.collect()
    run = load_run(run_dir)
    planned = planned_closes(scenario)
    server = scenario.config.server
    clustered = server.backend == "redis" or server.instances > 1
    out: dict[str, Any] = {"instances": job.instances, "load": job.load,
                           "run_dir": str(run_dir), "status": status,
                           "events": events}
    crossed = []
    for name, span in (("steady", job.windows.steady), ("storm", job.windows.storm)):
        if span is None:
            out[name] = None
            continue
        steady = name == "steady"
        window = window_stats(run, *span, planned_closes=planned,
                              connects_from=0.0 if steady else None)
        window["crossed"] = judge(window, job.limits,
                                  scenario.swarm.users if steady else None)
        window["resource"] = res = resource(window, job.model, clustered)
        if res["kind"] == "redis_server" and res["share"] >= SATURATED:
            # A publish's ack does not wait for redis-server in the engine (its reply
            # is not modelled), so its queue shows in no latency the judge reads.
            window["crossed"].append(f"redis-server at {100 * res['share']:.0f}% of "
                                     "its core")
        crossed += [f"{name}: {c}" for c in window["crossed"]]
        out[name] = window
    out["passed"] = not crossed and status == "complete"
    out["crossed"] = crossed
    out["wall_s"] = round(time.monotonic() - wall, 3)
    return out
