"""The capacity notebook's virtual sources: a virtual ramp's load steps, a plan's points.

A virtual run (`rtmsim simulate`) has no Locust stats history, so its steps come from
the shape it followed; a plan (`rtmsim plan`'s plan.json) is read into one row per
point and window. Both are written by hand here with known facts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from sim import analysis as A
from sim import rundir

RAMP = """
[scenario]
name = "tiny-ramp"

[swarm]
users = 30
spawn_rate = 30
duration_s = 25
model = "open"
shape = { kind = "step_ramp", step_users = 10, step_s = 10, max_users = 30, spawn_rate = 30 }

[swarm.classes.Subscriber]
channels = ["a"]
"""


def virtual_run(path: Path, scenario: str, **meta: Any) -> A.Run:
    path.mkdir(parents=True)
    (path / rundir.RUN).write_text(json.dumps({
        "name": "tiny-ramp", "status": "complete", "duration_s": 25, "origin": 1000.0,
        "started": 997.0, "virtual": True, "shape": "step_ramp", **meta}))
    (path / rundir.SCENARIO).write_text(scenario)
    return A.load_run(path)


def test_a_virtual_ramp_has_the_steps_of_its_shape(tmp_path: Path) -> None:
    steps = A.load_steps(virtual_run(tmp_path / "v", RAMP))
    assert steps.values.tolist() == [[1, 10, 0.0, 10.0], [2, 20, 10.0, 20.0],
                                     [3, 30, 20.0, 25.0]]


def test_a_virtual_run_without_a_shape_is_one_step_after_its_spawn(tmp_path: Path) -> None:
    flat = (RAMP.replace("shape = {", "# shape = {")
            .replace("spawn_rate = 30\n", "spawn_rate = 10\n", 1))
    steps = A.load_steps(virtual_run(tmp_path / "v", flat, shape=None))
    assert steps.values.tolist() == [[1, 30, 2.0, 25.0]]  # 10, 20, then 30 from 2 s


def test_a_real_run_without_stats_history_has_no_steps(tmp_path: Path) -> None:
    run = virtual_run(tmp_path / "r", RAMP, virtual=False)
    assert len(A.load_steps(run)) == 0


def window(p99: float | None, msgs: float, cpu: float, crossed: list[str]) -> dict[str, Any]:
    return {"msgs_per_s": msgs, "deliveries_per_s": 50 * msgs, "publish_p50_ms": 0.5,
            "publish_p99_ms": p99, "error_rate": 0.0, "cpu": {"i0": cpu, "i1": cpu / 2},
            "resource": {"kind": "messages", "text": f"CPU at {100 * cpu:.0f}%"},
            "crossed": crossed}


def test_plan_points_are_one_row_a_window(tmp_path: Path) -> None:
    plan = {"targets": {"connections": 600, "msgs_per_s": 1000.0, "fanout": None},
            "points": [
                {"instances": 2, "load": 2.0, "run_dir": "k2-x2", "passed": False,
                 "steady": window(None, 1500.0, 1.0, ["no publish was acknowledged"]),
                 "storm": window(250.0, 1400.0, 1.0, ["publish p99 250.0 ms > 100 ms"])},
                {"instances": 1, "load": 1.0, "run_dir": "k1-x1", "passed": True,
                 "steady": window(0.8, 1000.0, 0.25, []), "storm": None}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    points = A.plan_points(A.load_plan(tmp_path))
    assert points[["instances", "load", "offered_msgs_per_s", "window", "msgs_per_s",
                   "busiest_core", "crossed", "passed"]].values.tolist() == [
        [1, 1.0, 1000.0, "steady", 1000.0, 0.25, "", True],
        [2, 2.0, 2000.0, "steady", 1500.0, 1.0, "no publish was acknowledged", False],
        [2, 2.0, 2000.0, "storm", 1400.0, 1.0, "publish p99 250.0 ms > 100 ms", False]]
    assert math.isnan(points.publish_p99_ms[1])  # plan.json's null
    assert points.deliveries_per_s[0] == 50_000.0
    assert points.resource[2] == "CPU at 100%"


def test_no_plan_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"plan\.json: no plan here; run `rtmsim "
                                                r"plan SCENARIO"):
        A.load_plan(tmp_path)
