"""A capacity plan (`rtmsim plan`'s plan.json) as tables: its points, one row a window.

The planner (`sim.plan`) writes plan.json; this reads it, so that the notebooks and
tools look at a plan without importing the planner, as they look at a run directory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

PLAN = "plan.json"
WINDOWS = ("steady", "storm")
POINT_COLUMNS = ["instances", "load", "offered_msgs_per_s", "window", "msgs_per_s",
                 "deliveries_per_s", "publish_p50_ms", "publish_p99_ms", "error_rate",
                 "busiest_core", "resource", "crossed", "passed", "run_dir"]


def load_plan(plan_dir: str | Path) -> dict[str, Any]:
    """plan.json of `plan_dir` (FileNotFoundError with a one-line message saying what to
    do when there is none)."""
    path = Path(plan_dir) / PLAN
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no plan here; run `rtmsim plan SCENARIO "
                                "--connections N --msgs-per-s M --out DIR` first, or "
                                "leave the plan directory parameter empty")
    return json.loads(path.read_text())


def _num(value: Any) -> float:
    """plan.json writes NaN as null."""
    return math.nan if value is None else float(value)


def plan_points(plan: dict[str, Any]) -> pd.DataFrame:
    """One row per simulated point and window ("steady", "storm"; a scenario without
    storms has only steady rows), sorted by instances, load, window.

    offered_msgs_per_s is the target's rate times the load; msgs_per_s and
    deliveries_per_s what the server accepted and delivered in the window;
    busiest_core the busiest instance's share of its core over the window; resource
    the planner's words for what was nearest to running out (its busiest second);
    crossed the limits the window crossed ("; "-joined, empty: none); passed whether
    the point as a whole (both windows, run complete) kept the limits.
    """
    rows = []
    target = float(plan["targets"]["msgs_per_s"])
    for p in plan["points"]:
        for name in WINDOWS:
            w = p.get(name)
            if not w:
                continue
            rows.append({
                "instances": int(p["instances"]), "load": float(p["load"]),
                "offered_msgs_per_s": target * float(p["load"]), "window": name,
                "msgs_per_s": _num(w["msgs_per_s"]),
                "deliveries_per_s": _num(w["deliveries_per_s"]),
                "publish_p50_ms": _num(w["publish_p50_ms"]),
                "publish_p99_ms": _num(w["publish_p99_ms"]),
                "error_rate": _num(w["error_rate"]),
                "busiest_core": max((_num(v) for v in w["cpu"].values()), default=math.nan),
                "resource": w["resource"]["text"], "crossed": "; ".join(w["crossed"]),
                "passed": bool(p["passed"]), "run_dir": p["run_dir"]})
    out = pd.DataFrame(rows, columns=POINT_COLUMNS)
    return out.sort_values(["instances", "load", "window"], ignore_index=True)
