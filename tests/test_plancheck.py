"""`bench plancheck`'s quick parts: judging a step, finding the capacity on a ladder,
the prediction on a tiny workload in the virtual engine. No real server runs here and
nothing is timed: the real ladder is `python -m bench plancheck`."""

from __future__ import annotations

import itertools
import math
import tomllib
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.plancheck import (
    Ladder,
    Workload,
    capacity_of,
    predict_capacity,
    run_ladder,
    scenario_text,
    step_figures,
)
from bench.planload import slots_between
from bench.planreport import (
    at_instance_cores,
    model_us_per_publish,
    plancheck_summary,
    shared_cores,
)
from sim.scenario import parse_scenario
from sim.tomlwrite import toml_text
from sim.virtual.model import DEFAULT_MODEL
from sim.virtual.spawn import class_order

# -- one step ---------------------------------------------------------------------------


def test_a_step_whose_slowest_percent_is_fast_enough_is_under_the_limit():
    s = step_figures([1.0] * 995 + [200.0] * 5, errors=0, expected=1000)
    assert (s["p99_ms"], s["p50_ms"], s["unanswered"], s["crossed"]) == (1.0, 1.0, 0, [])


def test_a_step_whose_slowest_percent_is_slow_crosses_the_p99_limit():
    s = step_figures([1.0] * 980 + [150.0] * 20, errors=0, expected=1000)
    assert (s["p99_ms"], s["crossed"]) == (150.0, ["p99 150.0 ms > 100 ms"])


def test_publishes_offered_but_never_answered_count_as_over_the_limit():
    # 20 of 1000 slots got no answer in the step: throughput stopped following the
    # offered rate, and that is a p99 beyond any limit, not a p99 of the survivors
    s = step_figures([1.0] * 980, errors=0, expected=1000)
    assert (s["unanswered"], s["p99_ms"], s["crossed"]) == (
        20, None, ["p99 unanswered > 100 ms"])


def test_errors_over_one_percent_cross_the_error_limit():
    s = step_figures([1.0] * 985, errors=15, expected=1000)
    assert (s["error_rate"], s["p99_ms"], s["crossed"]) == (
        0.015, 1.0, ["errors 1.50% > 1%"])


def test_one_percent_of_errors_is_still_under_the_limit():
    assert step_figures([1.0] * 990, errors=10, expected=1000)["crossed"] == []


# -- the ladder -------------------------------------------------------------------------


def steps(*crossed: bool) -> list[dict]:
    return [{"rate": 1000 * (i + 1), "crossed": ["p99 x"] if c else []}
            for i, c in enumerate(crossed)]


def test_the_capacity_is_the_last_step_before_the_first_crossing():
    assert capacity_of(steps(False, False, False, True, False)) == {
        "capacity_per_s": 3000, "first_over_per_s": 4000, "limit": "p99 x",
        "lower_bound": False}


def test_a_ladder_that_never_crosses_gives_a_lower_bound():
    cap = capacity_of(steps(False, False))
    assert (cap["capacity_per_s"], cap["lower_bound"], cap["first_over_per_s"]) == (
        2000, True, None)


def test_a_ladder_over_the_limit_at_its_first_step_has_no_capacity():
    cap = capacity_of(steps(True))
    assert (cap["capacity_per_s"], cap["first_over_per_s"], cap["lower_bound"]) == (
        None, 1000, False)


def test_the_ladder_stops_at_the_first_step_over_the_limit():
    asked: list[float] = []

    def measure(rate: float) -> dict:
        asked.append(rate)
        latency = 5.0 if rate < 3000 else 500.0  # a synthetic knee between 2000 and 3000
        return {"rate": rate, **step_figures([latency] * 100, 0, 100),
                "acked_per_s": rate, "delivered_per_s": 10 * rate, "cpu": {}}
    result = run_ladder(measure, [1000, 2000, 3000, 4000], lambda _: None, "synthetic")
    assert asked == [1000, 2000, 3000]
    assert (result["capacity_per_s"], result["first_over_per_s"]) == (2000, 3000)


def test_the_ladder_rises_geometrically_from_its_start():
    assert Ladder(start_per_s=1000, ratio=1.5, steps=4).rates() == [1000, 1500, 2250, 3375]


# -- the prediction -------------------------------------------------------------------------


def test_a_step_scenario_is_the_workload_at_the_step_rate_on_two_instances_behind_redis():
    text = scenario_text(2, Workload(), 3000.0, Ladder())
    scenario = parse_scenario(tomllib.loads(text), text, default_name="x")
    classes = scenario.swarm.classes
    assert (scenario.config.server.instances, scenario.config.server.backend) == (2, "redis")
    assert (classes["Publisher"]["fixed_count"], classes["Publisher"]["rate"]) == (20, 150.0)
    assert (classes["Subscriber"]["fixed_count"], scenario.swarm.model) == (40, "open")


def test_the_engine_splits_each_class_of_the_default_workload_evenly_like_the_real_load():
    # The engine puts spawned user n on instance n mod 2 in Locust's spawn order; the
    # real load puts connection j of each class on instance j mod 2. With twice as many
    # subscribers as publishers the two placements agree.
    w = Workload()
    order = itertools.islice(class_order({"Publisher": (None, w.publishers),
                                          "Subscriber": (None, w.subscribers)}),
                             w.publishers + w.subscribers)
    on_i0: dict[str, int] = {}
    for n, name in enumerate(order, start=1):
        on_i0[name] = on_i0.get(name, 0) + (n % 2 == 0)
    assert on_i0 == {"Publisher": w.publishers // 2, "Subscriber": w.subscribers // 2}


def slow_publish_model(tmp_path: Path, publish_us: float) -> Path:
    """The shipped model with a publish that costs `publish_us` in all (no loop-turn
    share): a capacity of a few hundred publishes/s, so a tiny ladder finds it in a
    few virtual seconds."""
    data = tomllib.loads(DEFAULT_MODEL.read_text())
    data["model"]["costs_us"]["publish"] = publish_us
    data["model"].get("turn_us", {}).pop("publish", None)
    path = tmp_path / "slow.toml"
    path.write_text(toml_text(data))
    return path


def test_the_prediction_finds_the_knee_of_a_tiny_workload(tmp_path):
    # 4.3 ms of CPU a publish over two cores: ~460/s. At 300/s the cores are 65% busy,
    # at 600/s overrun, so the queue (and p99) grows without bound
    model = slow_publish_model(tmp_path, 4000.0)
    w = Workload(subscribers=4, publishers=2, channels=2)
    ladder = Ladder(start_per_s=150, ratio=2.0, steps=4, step_s=3.0)
    result = predict_capacity(2, w, ladder, model, lambda _: None)
    assert (result["capacity_per_s"], result["first_over_per_s"]) == (300, 600)
    assert [s["rate"] for s in result["steps"]] == [150, 300, 600]
    assert result["steps"][-1]["p99_ms"] is None or result["steps"][-1]["p99_ms"] > 100
    assert math.isclose(result["steps"][1]["acked_per_s"], 300, rel_tol=0.1)


# -- the command line ---------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["--ratio", "1"], "--ratio 1: the steps must rise"),
    (["--step-seconds", "2"], "--step-seconds 2 leaves no window"),
    (["--publishers", "1"], "at least 2 each"),
])
def test_a_bad_ladder_or_workload_is_one_line_and_exit_2(argv, message, capsys):
    assert main(["plancheck", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_an_open_model_window_offers_the_slots_of_the_grid_in_it():
    # slots at 0.0, 0.25, 0.5, ...: [0.5, 1.0) holds 0.5 and 0.75, whichever slot the
    # grid is known by
    assert [slots_between(a, 0.25, 0.5, 1.0) for a in (0.0, 0.75, 10.0)] == [2, 2, 2]
    assert slots_between(0.05, 0.1, 0.0, 1.0) == 10
    assert slots_between(0.0, 0.1, 1.0, 1.0) == 0


# -- what the result says -------------------------------------------------------------------


def step(rate: float, cpu: dict[str, float], crossed: bool = False, **more: float) -> dict:
    return {"rate": rate, "crossed": ["p99 x"] if crossed else [], "acked_per_s": rate,
            "cpu": cpu, "irq_cpu": more.get("irq", 0.0), "other_cpu": more.get("other", 0.0),
            "busy_by_cpu": {"0": 1.0, "1": 1.0}}


def test_what_shared_the_cores_is_read_at_the_knee_and_at_the_first_step_over_it():
    measured = {"steps": [step(2000, {"i0": 0.5, "i1": 0.5, "redis": 0.1, "load": 0.2}),
                          step(2500, {"i0": 0.75, "i1": 0.75, "redis": 0.125, "load": 0.25},
                               crossed=True, irq=0.1, other=0.025)],
                **capacity_of([{"rate": 2000, "crossed": []},
                               {"rate": 2500, "crossed": ["p99 x"]}])}
    predicted = {"steps": [step(2000, {"i0": 0.4, "i1": 0.4}),
                           step(2500, {"i0": 0.5, "i1": 0.5})]}
    shared = shared_cores(measured, predicted)
    over = shared["over"]
    assert (over["instance_cores"], over["taken_cores"]) == (1.5, 0.5)
    assert over["instance_us_per_publish"] == {"real": 600.0, "engine": 400.0}
    assert (over["redis_us_per_publish"], over["load_us_per_publish"]) == (50.0, 100.0)
    assert shared["knee"]["instance_us_per_publish"] == {"real": 500.0, "engine": 400.0}
    # the model's 4000/s is for two whole cores; the instances got 1.5 of them
    assert at_instance_cores(4000, 2000, shared) == {"instance_cores": 1.5,
                                                     "predicted": 3000, "error": 0.5}


def test_interrupts_inside_the_processes_cpu_are_not_counted_twice():
    # The processes' CPU adds up to the cores' busy time: the interrupts (0.3 core)
    # were charged to the tasks they interrupted, and are already inside it.
    over = step(2500, {"i0": 0.8, "i1": 0.8, "redis": 0.125, "load": 0.275}, crossed=True,
                irq=0.3)
    measured = {"steps": [step(2000, {"i0": 0.5, "i1": 0.5}), over],
                **capacity_of([{"rate": 2000, "crossed": []},
                               {"rate": 2500, "crossed": ["p99 x"]}])}
    shared = shared_cores(measured, {"steps": []})["over"]
    assert shared["taken"]["irq"] == 0.0
    assert (shared["irq_us_per_publish"], shared["irq_inside_us_per_publish"]) == (0.0, 120.0)
    assert shared["ours_us_per_publish"] == 800.0  # 640 + 50 + 110, no interrupts again
    assert shared["machine_alone_per_s"] == 2500


def test_the_model_side_of_a_publish_comes_from_the_calibration():
    calibration = {"costs_us": {"publish": 50.0, "delivery": 5.0},
                   "redis": {"send_us": 250.0, "receive_us": 80.0, "server_us": 45.0},
                   "raw_client": {"send_us": 12.0, "receive_us": 4.0, "delivery_us": 4.0}}
    assert model_us_per_publish(calibration, 10.0) == {
        "instances": 430.0, "redis-server": 45.0, "load process": 56.0}
    assert model_us_per_publish(None, 10.0) is None


def test_the_summary_gives_both_capacities_and_the_verdict():
    side = {"capacity_per_s": 4000, "first_over_per_s": 4400, "limit": "p99 300.0 ms > 100 ms",
            "lower_bound": False, "instances": 2, "wall_s": 60.0, "steps": []}
    result = {"workload": {"subscribers": 40, "channels": 4, "fanout": 10.0,
                           "publishers": 20},
              "predicted": {**side, "capacity_per_s": 5187, "first_over_per_s": 5696},
              "measured": side, "limits": {"p99_ms": 100.0, "error_rate": 0.01},
              "ratio": 0.7712, "error": 0.2968, "passed": False, "tolerance": 0.25,
              "shared": {}, "at_instance_cores": None,
              "load_average": {"before_real": 0.5, "after_real": 1.9}}
    lines = plancheck_summary(result).splitlines()
    assert lines[1:4] == [
        "  predicted capacity 5,187/s; 5,696/s crossed: p99 300.0 ms > 100 ms",
        "  measured capacity  4,000/s; 4,400/s crossed: p99 300.0 ms > 100 ms",
        "  measured/predicted 0.771: the prediction is +29.7% of the measured capacity, "
        "OUTSIDE 25%"]
