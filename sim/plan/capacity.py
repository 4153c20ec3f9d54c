"""A capacity plan from start to finish: sweep, answer, plan.json and plan.html.

The one entry point for the command line and the capacity notebook alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.schema import ConfigError

from ..scenario import Scenario
from ..virtual.model import Model
from .page import write_page
from .result import plan_result, verdict_lines
from .search import Planner, PlanRequest


def plan_capacity(scenario: Scenario, request: PlanRequest, model: Model, out_dir: Path,
                  log: Callable[[str], None] = print, *, resume: bool = False
                  ) -> dict[str, Any]:
    """Find the deployment for `request`, write `out_dir`/plan.json and plan.html; the
    result (plan.json's content). Ctrl-C stops the sweep: the plan of the points so
    far is still written, with `answer.stopped = "interrupted"`, and `resume` takes
    its points back (same scenario, targets, limits and timing) instead of simulating
    them again."""
    out_dir.mkdir(parents=True, exist_ok=True)
    planner = Planner(scenario, request, model, out_dir, log=log)
    if resume:
        log(f"rtmsim plan: resuming with {planner.resume(earlier_points(out_dir, planner))}"
            f" point(s) of {out_dir / 'plan.json'}")
    mix = planner.mix
    log(f"rtmsim plan: {scenario.name}: {request.targets.connections:,} connections "
        f"({mix.counts[mix.publisher]:,} publishers at {mix.publish_rate:g}/s, "
        f"{mix.counts[mix.subscriber]:,} subscribers, {mix.fanout:g} a channel) on "
        f"the model {model.name!r}; points go to {out_dir}/points")
    chosen: int | None = None
    interrupted = False
    try:
        chosen = planner.search()
        planner.curves(chosen)
    except KeyboardInterrupt:
        log("rtmsim: interrupted: writing the plan from the points so far")
        interrupted = True
    result = plan_result(planner, None if interrupted else chosen)
    if interrupted:
        result["answer"]["stopped"] = "interrupted"
    (out_dir / "plan.json").write_text(json.dumps(finite(result), indent=2))
    page = write_page(result, out_dir)
    for line in verdict_lines(result):
        log(line)
    log(f"rtmsim: wrote {out_dir / 'plan.json'} and {page}")
    return result


def earlier_points(out_dir: Path, planner: Planner) -> list[dict[str, Any]]:
    """The points of `out_dir`/plan.json, if it is a plan of the same request
    (ConfigError otherwise: its points would answer another question)."""
    path = out_dir / "plan.json"
    try:
        earlier = json.loads(path.read_text())
    except OSError:
        return []
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not a plan.json ({exc.msg}); cannot --resume") from None
    now = finite(plan_result(planner, None))
    for key in ("scenario", "targets", "limits", "timing", "model"):
        if earlier.get(key) != now[key]:
            raise ConfigError(f"--resume: {path} was planned with another {key} "
                              f"({earlier.get(key)!r}, now {now[key]!r})")
    return list(earlier.get("points") or [])


def finite(value: Any) -> Any:
    """`value` with NaN as None: plan.json is strict JSON (no NaN literals)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
