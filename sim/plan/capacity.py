"""A capacity plan from start to finish: sweep, answer, plan.json and plan.html.

The one entry point for the command line and the capacity notebook alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..scenario import Scenario
from ..virtual.model import Model
from .page import write_page
from .result import plan_result, verdict_lines
from .search import Planner, PlanRequest


def plan_capacity(scenario: Scenario, request: PlanRequest, model: Model, out_dir: Path,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Find the deployment for `request`, write `out_dir`/plan.json and plan.html; the
    result (plan.json's content). Ctrl-C stops the sweep: the plan of the points so
    far is still written, with `answer.stopped = "interrupted"`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    planner = Planner(scenario, request, model, out_dir, log=log)
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


def finite(value: Any) -> Any:
    """`value` with NaN as None: plan.json is strict JSON (no NaN literals)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
