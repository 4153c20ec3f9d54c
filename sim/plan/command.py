"""`rtmsim plan SCENARIO --connections N --msgs-per-s M`: the command's arguments and flow."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.schema import ConfigError

if TYPE_CHECKING:
    from .search import PlanRequest


def add_arguments(plan: argparse.ArgumentParser) -> None:
    plan.add_argument("scenario", help="scenario TOML file: its classes, app, plan and "
                      "storms (e.g. scenarios/capacity-ramp.toml)")
    plan.add_argument("--connections", type=int, help="target concurrent connections")
    plan.add_argument("--msgs-per-s", type=float, help="target publishes a second")
    plan.add_argument("--fanout", type=float, help="subscribers a channel (default: the "
                      "scenario's)")
    plan.add_argument("--p99-ms", type=float, default=100.0,
                      help="publish p99 limit (default 100 ms)")
    plan.add_argument("--error-rate", type=float, default=0.01,
                      help="service error limit, a fraction of requests (default 0.01)")
    plan.add_argument("--max-instances", type=int, default=32,
                      help="the largest deployment to try (default 32)")
    plan.add_argument("--loads", default="0.5,1,1.5,2", help="the curve's loads, as "
                      "multiples of the target (default 0.5,1,1.5,2)")
    plan.add_argument("--steady-s", type=float, default=30.0,
                      help="steady window of each point, virtual s (default 30)")
    plan.add_argument("--recover-s", type=float, default=30.0,
                      help="after the last storm, virtual s (default 30)")
    plan.add_argument("--jobs", type=int, default=0, help="points simulated at once, one "
                      "process each (default: the CPUs)")
    plan.add_argument("--model", metavar="FILE", help="performance model (default: the "
                      "scenario's [model], else the shipped calibration)")
    plan.add_argument("--out", help="output directory (default results/plan-<name>-<time>)")
    plan.add_argument("--max-load", type=float, default=16.0, help="how far the answer's "
                      "load rises to find its headroom, x the target (default 16; 1: "
                      "not at all)")
    plan.add_argument("--resume", action="store_true", help="take the points of --out's "
                      "plan.json (an interrupted plan of the same request) instead of "
                      "simulating them again")
    plan.add_argument("--period", action="store_true", help="also project one billing "
                      "period of the scenario's [traffic] (or the flags below) through "
                      "the server's own ledger: quota, 4010s, overage, cost")
    plan.add_argument("--app", help="the app whose plan is projected (default: the "
                      "scenario's first)")
    from .traffic import add_period_arguments  # noqa: PLC0415 (the parser, not the run)

    add_period_arguments(plan)


def _loads(text: str) -> tuple[float, ...]:
    try:
        loads = tuple(sorted({float(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise ConfigError(f"--loads: not a list of numbers: {text!r}") from None
    if not loads or any(not math.isfinite(x) or x <= 0 for x in loads):
        raise ConfigError(f"--loads: must be numbers > 0, got {text!r}")
    return tuple(sorted(set(loads) | {1.0}))


def request_from_args(args: argparse.Namespace) -> PlanRequest:
    """The plan's request, checked (ConfigError names the flag)."""
    from .point import Limits  # noqa: PLC0415 (the parser is built for every command)
    from .search import PlanRequest  # noqa: PLC0415
    from .workload import Targets, Timing  # noqa: PLC0415

    if args.connections is None or args.msgs_per_s is None:
        raise ConfigError("plan: --connections and --msgs-per-s are required (or --period "
                          "alone, for the billing projection)")
    for flag, value, ok in (("--p99-ms", args.p99_ms, args.p99_ms > 0),
                            ("--error-rate", args.error_rate, 0 <= args.error_rate < 1),
                            ("--max-instances", args.max_instances, args.max_instances >= 1),
                            ("--steady-s", args.steady_s, args.steady_s > 0),
                            ("--recover-s", args.recover_s, args.recover_s >= 0),
                            ("--jobs", args.jobs, args.jobs >= 0),
                            ("--max-load", args.max_load, args.max_load >= 1)):
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{flag}: out of range, got {value:g}")
    targets = Targets(args.connections, args.msgs_per_s, args.fanout)
    targets.check()
    return PlanRequest(targets=targets, limits=Limits(args.p99_ms, args.error_rate),
                       timing=Timing(steady_s=args.steady_s, recover_s=args.recover_s),
                       max_instances=args.max_instances, loads=_loads(args.loads),
                       max_load=args.max_load,
                       jobs=args.jobs or os.cpu_count() or 1)


def _out_dir(args: argparse.Namespace, name: str) -> Path:
    out = Path(args.out) if args.out else Path("results") / (
        f"plan-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise ConfigError(f"{out}: exists and is not empty; choose another --out (or "
                          "--resume an interrupted plan there)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def cmd_plan(args: argparse.Namespace) -> int:
    """The billing period (`--period`) and the capacity sweep (the targets), either or
    both, into one output directory: 0 when every part answered, 1 when no deployment
    kept the limits, 130 when interrupted (what was done is written)."""
    from ..scenario import load_scenario  # noqa: PLC0415 (start-up time)
    from ..virtual.model import scenario_model  # noqa: PLC0415
    from .capacity import plan_capacity  # noqa: PLC0415
    from .traffic import check_scenario_traffic  # noqa: PLC0415

    capacity = not args.period or args.connections is not None or args.msgs_per_s is not None
    request = request_from_args(args) if capacity else None
    scenario = load_scenario(args.scenario)
    check_scenario_traffic(scenario)  # a bad [traffic] is refused with or without --period
    if args.period:
        period = _period(args, scenario)  # checked before any sweep starts
    out = _out_dir(args, scenario.name)
    if args.period:
        (out / "period.json").write_text(json.dumps(period, indent=2))
        print(f"rtmsim: wrote {out / 'period.json'}")
    if request is None:
        return 0
    model = scenario_model(scenario.config.extra.get("model"), scenario.path, args.model)
    result = plan_capacity(scenario, request, model, out, log=lambda s: print(s, flush=True),
                           resume=args.resume)
    if result["answer"]["stopped"] == "interrupted":
        return 130
    return 0 if result["answer"]["instances"] is not None else 1


def _period(args: argparse.Namespace, scenario: Any) -> dict[str, Any]:
    """The billing-period projection, printed; its result (period.json)."""
    from .period import period_lines, project_period  # noqa: PLC0415
    from .traffic import period_from_args, period_s_from_args  # noqa: PLC0415

    traffic = period_from_args(args, scenario)
    result = project_period(scenario, traffic, app_id=args.app,
                            period_s=period_s_from_args(args))
    for line in period_lines(result):
        print(line, flush=True)
    return result
