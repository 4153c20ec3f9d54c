"""The loop turn's share of a request (`[model.turn_us]`): calibrated at two depths,
read from a model file, and charged by the engine as a share of the jobs ready.

Measured on the project's VM: a publish costs the server 71 us with 1 in flight and
28 with 32, awake throughout; a model with one cost per operation predicts neither a
lone client nor a saturated server (`bench calibrate-check`'s reqack was 18% off).
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from test_calibrate import KNOWN_US, UNKNOWNS, steps_like_calibrate
from test_virtual_engine import FLOOD, ORIGIN, QUIET, costs, events, simulate, stats

from server.schema import ConfigError
from sim.calibrate.fit import Row, fit_costs, saturation
from sim.calibrate.turns import TURN_OPS, less_turns, merge, step_name, turns_from_pairs
from sim.tomlwrite import toml_text
from sim.virtual.model import DEFAULT_MODEL, Model, load_model

TURN_US = {"subscribe": 30.0, "unsubscribe": 25.0, "publish": 50.0, "send": 45.0,
           "frame": 35.0}
DEPTH, TURN_DEPTH = 4, 16
PAIRS = {"subscribe": {"subscribe": 9000}, "unsubscribe": {"unsubscribe": 9000},
         "publish": {"publish": 90000, "delivery": 0},
         "send": {"send": 70000, "delivery": 70000}, "ping": {"frame": 60000}}


def cpu_s(ops: dict[str, float], depth: int, speed: float = 1.0) -> float:
    """What `ops` cost at `depth` in flight, each request its cost and its turn's
    share; `speed` times slower (the vCPU drifts)."""
    return speed * sum(n * (KNOWN_US[op] + TURN_US.get(op, 0.0) / depth)
                       for op, n in ops.items()) / 1e6


def steps_with_turns(noise: float = 0.0, drift: float = 1.0) -> list[Row]:
    """The calibration's steps at `DEPTH` in flight (`drift` times slower), then its
    alternating pairs at `DEPTH` and `TURN_DEPTH` (the same machine for both)."""
    rows = []
    for r in steps_like_calibrate(KNOWN_US, noise=noise):
        if any(op in TURN_OPS for op in r.ops):
            r = replace(r, cpu_s=cpu_s(r.ops, DEPTH, drift) * r.cpu_s / cpu_s(r.ops, 10**9),
                        extra={"in_flight": DEPTH})
        rows.append(r)
    for kind, ops in PAIRS.items():
        for depth in (DEPTH, TURN_DEPTH):
            rows.append(Row(step_name(kind, depth), ops, cpu_s(ops, depth),
                            extra={"in_flight": depth}))
    return rows


def fitted(rows: list[Row]) -> tuple[dict[str, float], dict[str, float]]:
    turns = turns_from_pairs(rows)
    return fit_costs(less_turns(rows, turns), UNKNOWNS).costs_us, turns


def test_alternating_pairs_part_a_requests_cost_from_its_turn() -> None:
    costs, turns = fitted(steps_with_turns())
    assert turns == pytest.approx(TURN_US, rel=1e-9)
    for op, cost in KNOWN_US.items():
        assert costs[op] == pytest.approx(cost, rel=1e-6), op


def test_a_machine_that_slowed_between_the_steps_and_the_pairs_moves_no_turn() -> None:
    """The main steps ran 20% slower than the pairs: the turns come from the pairs
    alone, so they stand; the costs carry the drift."""
    costs, turns = fitted(steps_with_turns(drift=1.2))
    assert turns == pytest.approx(TURN_US, rel=1e-9)
    assert costs["publish"] > KNOWN_US["publish"]


def test_a_request_without_its_pair_keeps_its_turn_in_its_cost() -> None:
    rows = [r for r in steps_with_turns() if r.step != step_name("publish", TURN_DEPTH)]
    costs, turns = fitted(rows)
    assert "publish" not in turns and turns["frame"] == pytest.approx(TURN_US["frame"])
    # what a publish cost where it was measured: its cost and its turn over the depth
    assert costs["publish"] == pytest.approx(
        KNOWN_US["publish"] + TURN_US["publish"] / DEPTH, rel=0.02)


def test_slices_of_a_step_merge_into_one_row() -> None:
    extra = {"in_flight": 4, "server_cpu_s": 0.5, "load_cpu_s": 0.2,
             "load_other_threads_cpu_s": 0.0, "core_busy": 0.9, "core_irq": 0.1}
    a = Row("turn4_publish", {"publish": 100, "delivery": 0}, 0.5, 1.0, extra)
    b = Row("turn4_publish", {"publish": 300, "delivery": 0}, 1.5, 3.0,
            {**extra, "server_cpu_s": 1.5, "core_busy": 0.5})
    (row,) = merge([a, b])
    assert row.ops == {"publish": 400, "delivery": 0} and row.cpu_s == 2.0
    assert row.wall_s == 4.0 and row.extra["server_cpu_s"] == 2.0
    assert row.extra["core_busy"] == pytest.approx(0.6) and row.extra["in_flight"] == 4
    assert row.extra["server_busy"] == 0.5


def test_saturation_shares_the_turn_over_the_requests_in_flight() -> None:
    got = saturation({"publish": 20.0, "delivery": 5.0}, {"publish": 40.0},
                     subscribers=50, publishers=4, connections=8)
    assert got["fanout_delivered_per_s"] == pytest.approx(50e6 / (20 + 10 + 250))
    assert got["reqack_round_trips_per_s"] == pytest.approx(1e6 / (20 + 5))


def test_a_model_file_reads_turns_and_a_scenario_cost_replaces_one(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    data = tomllib.loads(DEFAULT_MODEL.read_text())
    data["model"]["turn_us"] = {"publish": 50.0, "frame": 35.0}
    path.write_text(toml_text(data))
    model = load_model(path)
    assert model.turn_us == {"publish": 50.0, "frame": 35.0}
    # A scenario's cost is the operation's whole cost, unless it sets the turn too.
    over = model.with_table({"costs_us": {"publish": 3333.0}}, "model")
    assert over.turn_us == {"frame": 35.0} and over.costs_us["publish"] == 3333.0
    both = model.with_table({"costs_us": {"publish": 10.0}, "turn_us": {"publish": 5.0}},
                            "model")
    assert both.turn_us == {"publish": 5.0, "frame": 35.0}


@pytest.mark.parametrize(("table", "named"), [
    ({"turn_us": {"publsh": 1.0}}, "model.turn_us.publsh"),
    ({"turn_us": {"publish": -1.0}}, "model.turn_us.publish"),
    ({"turn_us": 3}, "model.turn_us"),
])
def test_a_bad_turn_is_one_line_naming_it(table: dict, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        Model().with_table(table, "model")
    text = str(err.value)
    assert named in text and "\n" not in text


def test_a_lone_request_pays_its_whole_turn(tmp_path: Path) -> None:
    model = replace(QUIET, costs_us=costs(publish=50.0), turn_us={"publish": 40.0})
    text = FLOOD.replace("users = 20", "users = 1")
    rows = [r for r in events(simulate(tmp_path, text, model))
            if r["op"] == "publish" and r["outcome"] == "ok"]
    # 0.1 ms each way, 50 us of cost and the 40 us turn it shares with no one.
    assert rows and {round(r["latency_ms"], 6) for r in rows} == {0.29}


def test_a_saturated_core_shares_each_turn_over_the_queue(tmp_path: Path) -> None:
    # 20 closed loops, a 200 us publish and a 400 us turn. Alone each would cost
    # 600 us (1,667/s); with no turn, 5,000/s. Saturated, the other loops' requests
    # wait behind each one (19 or 20 ready), so it pays about 400/19.5 of the turn.
    model = replace(QUIET, costs_us=costs(publish=200.0), turn_us={"publish": 400.0})
    run_dir = simulate(tmp_path, FLOOD, model)
    acks = [r for r in events(run_dir) if r["op"] == "publish" and r["outcome"] == "ok"]
    mid = [r for r in acks if ORIGIN + 2 <= r["t"] < ORIGIN + 8]
    assert len(mid) / 6.0 == pytest.approx(1e6 / (200 + 400 / 19.5), rel=0.015)
    cpu = stats(run_dir)["i0"]["process"]["cpu_s"]
    assert len(acks) * 200e-6 < cpu < len(acks) * 225e-6
