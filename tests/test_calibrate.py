"""`rtmsim calibrate`: the fit on synthetic steps, the model file it writes, bad input.

The fit is checked where the answer is known (costs put into synthetic steps of the
same shape as the real ones come back out); the real command once, at a tiny scale,
for what can be asserted of any machine: the file loads, every cost is positive and
finite, a connect costs more than a publish. Never a speed.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from bench.calibratecheck import compare
from loadtests.client import RealtimeClient
from sim.calibrate import command, loadgen, servers
from sim.calibrate.fit import (
    FLOOR_US,
    FitError,
    Row,
    fit_costs,
    fit_nonnegative,
    lognormal,
    saturation,
)
from sim.calibrate.rawclient import raw_client_costs
from sim.calibrate.steps import NUISANCE, Scale
from sim.cli import main
from sim.tomlwrite import toml_text
from sim.virtual.model import DEFAULT_MODEL, OPERATIONS, load_model

ROOT = Path(__file__).resolve().parent.parent
UNKNOWNS = [*OPERATIONS, *NUISANCE]
KNOWN_US = {"connect_key": 250.0, "connect_jwt": 320.0, "subscribe": 25.0,
            "unsubscribe": 20.0, "publish": 18.0, "send": 19.0, "delivery": 5.5,
            "frame": 12.0, "close": 40.0, "disconnect": 60.0, "rest_publish": 250.0,
            "rest_get": 200.0, "rest_kick": 300.0}


def steps_like_calibrate(costs: dict[str, float], noise: float, seed: int = 1) -> list[Row]:
    """Rows shaped as the command's steps are, their CPU from `costs` (+- noise)."""
    rng = random.Random(seed)
    shapes = {
        "rest_get": {"rest_get": 300},
        "connect_key": {"connect_key": 1200},
        "disconnect_after_key": {"disconnect": 1200, "rest_get": 14},
        "connect_jwt": {"connect_jwt": 900},
        "disconnect_after_jwt": {"disconnect": 900, "rest_get": 11},
        "subscribe": {"subscribe": 8000}, "unsubscribe": {"unsubscribe": 8000},
        "publish_to_0": {"publish": 60000, "delivery": 0},
        "publish_to_10": {"publish": 20000, "delivery": 200000},
        "publish_to_50": {"publish": 5000, "delivery": 250000},
        "send": {"send": 50000, "delivery": 50000},
        "ping": {"frame": 40000}, "bad_frame": {"frame": 38000},
        "connect_jwt_kicked": {"connect_jwt": 720},
        "kick_4": {"rest_kick": 20, "close": 80, "disconnect": 80, "rest_get": 22},
        "kick_32": {"rest_kick": 20, "close": 640, "disconnect": 640, "rest_get": 25},
        "rest_publish": {"rest_publish": 6000},
    }
    rows = []
    for step, ops in shapes.items():
        cpu = sum(n * costs[op] for op, n in ops.items()) / 1e6
        rows.append(Row(step, ops, cpu * (1 + rng.uniform(-noise, noise))))
    return rows


def test_fit_recovers_the_costs_put_into_exact_steps() -> None:
    fit = fit_costs(steps_like_calibrate(KNOWN_US, noise=0.0), UNKNOWNS)
    for op, cost in KNOWN_US.items():
        assert fit.costs_us[op] == pytest.approx(cost, rel=1e-9), op
    assert max(abs(r) for r in fit.residuals) < 1e-9
    assert fit.clamped == []


def test_fit_recovers_the_costs_within_the_noise_of_the_steps() -> None:
    """1% noise per step: directly measured costs within 1%, the differences (send less
    its delivery, a kick's close less the disconnect) within a few."""
    fit = fit_costs(steps_like_calibrate(KNOWN_US, noise=0.01), UNKNOWNS)
    for op in ("connect_key", "subscribe", "unsubscribe", "publish", "delivery",
               "frame", "disconnect", "rest_publish"):
        assert fit.costs_us[op] == pytest.approx(KNOWN_US[op], rel=0.015), op
    for op in ("send", "close"):
        assert fit.costs_us[op] == pytest.approx(KNOWN_US[op], rel=0.1), op
    assert max(abs(r) for r in fit.residuals) <= 0.02


def test_fit_floors_a_cost_that_noise_puts_below_zero() -> None:
    costs = {**KNOWN_US, "close": 0.5}
    rows = steps_like_calibrate(costs, noise=0.0)
    rows = [Row(r.step, r.ops, r.cpu_s * 0.97) if r.step == "kick_32" else r for r in rows]
    fit = fit_costs(rows, UNKNOWNS)
    assert fit.raw_us["close"] < 0
    assert fit.clamped == ["close"]
    assert fit.costs_us["close"] == FLOOR_US


def test_fit_names_an_operation_no_step_measured() -> None:
    rows = [r for r in steps_like_calibrate(KNOWN_US, 0.0) if "rest_publish" not in r.ops]
    with pytest.raises(FitError, match="no measured step does rest_publish"):
        fit_costs(rows, UNKNOWNS)


def test_fit_refuses_operations_that_always_come_together() -> None:
    rows = [Row("a", {"close": 10, "disconnect": 10}, 0.001),
            Row("b", {"close": 20, "disconnect": 20}, 0.002)]
    with pytest.raises(FitError, match="determine only 1 of 2"):
        fit_costs(rows, ["close", "disconnect"])


def test_lognormal_recovers_median_and_sigma() -> None:
    samples = np.random.default_rng(7).lognormal(math.log(0.05), 0.4, 20000)
    median, sigma = lognormal(list(samples))
    assert median == pytest.approx(0.05, rel=0.02)
    assert sigma == pytest.approx(0.4, rel=0.05)


def test_saturation_from_costs_alone() -> None:
    got = saturation({"publish": 20.0, "delivery": 5.0}, subscribers=50)
    assert got["fanout_delivered_per_s"] == pytest.approx(50 * 1e6 / 270.0)
    assert got["reqack_round_trips_per_s"] == pytest.approx(50_000.0)


def test_toml_text_round_trips_through_tomllib() -> None:
    data = {"model": {"name": 'a "quoted" name', "cores": 1, "costs_us": {"publish": 18.5},
                      "network": {"median_ms": 0.05, "sigma": 0.5},
                      "measured": {"clamped": [], "flags": [True, False],
                                   "steps": [{"step": "x", "ops": {"publish": 3}},
                                             {"step": "y", "ops": {"frame": 1}}],
                                   "deep": {"a": 1, "b": 2.5, "c": "s", "d": [1, 2],
                                            "e": {"f": 1}}}}}
    assert tomllib.loads(toml_text(data, "a comment\nsecond line")) == data


def test_without_redis_the_file_says_the_defaults_were_kept() -> None:
    table, record, source = command._redis(None, dict(KNOWN_US), [0.001],
                                           "no redis-server on PATH")
    assert table == {"send_us": 25.0, "receive_us": 25.0, "server_us": 0.0, "latency_ms": 0.15}
    assert record == {"measured": False}
    assert source == ("rtmsim calibrate; [model.redis] left at the defaults: no "
                      "redis-server on PATH")


# -- the raw client's costs -------------------------------------------------------------

RAW_US = {"round_trip": 30.0, "delivery": 5.0}


def with_load(rows: list[Row], costs: dict[str, float] | None, noise: float = 0.0,
              seed: int = 2) -> list[Row]:
    """`rows` with the extras a real step has; in the publish steps, the load CPU of a
    raw client of `costs` (+- noise) or, with None, no load CPU at all."""
    rng = random.Random(seed)
    out = []
    for r in rows:
        load = 0.0
        if costs is not None and r.step.startswith("publish_to_"):
            load = (r.ops["publish"] * costs["round_trip"]
                    + r.ops.get("delivery", 0) * costs["delivery"]) / 1e6
            load *= 1 + rng.uniform(-noise, noise)
        out.append(Row(r.step, r.ops, r.cpu_s, 1.0,
                       {"server_busy": 0.9, "core_busy": 0.9, "load_cpu_s": load,
                        "load_busy": load, "load_other_threads_cpu_s": 0.0}))
    return out


def test_the_locust_round_trip_is_split_around_the_bursts_wake() -> None:
    def table(round_trip: float, wake: float, frame: float) -> dict[str, float]:
        return loadgen.load_generator_table({
            "requests": {"round_trip_us": round_trip},
            "deliveries": {"delivery_us": wake + frame},
            "bursts": {"wake_us": wake, "frame_us": frame}})
    # a reply's frame is a delivery's when the round trip leaves room for it
    assert table(60.0, 20.0, 15.0) == {"send_us": 25.0, "receive_us": 15.0,
                                       "delivery_us": 15.0, "wake_us": 20.0}
    # a delivery's frame (its envelope timed, reported, de-duplicated) can cost more
    # than a whole round trip's send and reply: the two share what is left
    assert table(43.0, 25.0, 21.0) == {"send_us": 9.0, "receive_us": 9.0,
                                       "delivery_us": 21.0, "wake_us": 25.0}
    assert table(20.0, 25.0, 21.0)["send_us"] == table(20.0, 25.0, 21.0)["receive_us"] == 0


def test_an_upgrade_costs_the_churn_cycle_less_what_its_frames_cost_anyway() -> None:
    measured = {"requests": {"round_trip_us": 60.0}, "deliveries": {"delivery_us": 35.0},
                "bursts": {"wake_us": 20.0, "frame_us": 15.0}}
    # a connect and its close: an upgrade and a close written, a welcome and a close
    # read (2 x (25 + 15) us), and the rest is the upgrade's own
    table = loadgen.load_generator_table({**measured, "connects": {"cycle_us": 1100.0}})
    assert table["connect_us"] == 1020.0
    assert loadgen.load_generator_table(
        {**measured, "connects": {"cycle_us": 50.0}})["connect_us"] == 0.0
    assert "connect_us" not in loadgen.load_generator_table(measured)  # a file of before


def test_the_calibration_feeds_subscribers_what_a_locust_publisher_publishes() -> None:
    frame = json.loads(loadgen.publish_frame("cal/x", 7))
    data = frame["data"]
    assert (frame["type"], frame["channel"], frame["requestId"]) == ("publish", "cal/x", "7")
    assert data["id"] == f"{loadgen.FEEDER}:7" and data["ch"] == "cal/x"
    assert isinstance(data["ts"], float) and len(data["v"]) == 64
    # the subscriber's client times, reports and sequences it as a run's delivery
    reported: list[tuple[float | None, str]] = []

    class Reporter:
        def delivery(self, kind: str, latency: float | None, **kw: str) -> None:
            reported.append((latency, kw["msg_id"]))
    client = RealtimeClient("ws://127.0.0.1:9", reporter=Reporter())  # never connects
    raw = json.dumps({"type": "message", "channel": "cal/x", "data": data})
    client._dispatch(json.loads(raw), raw)
    client._dispatch(json.loads(raw), raw)
    assert [msg_id for _, msg_id in reported] == [data["id"]] * 2
    assert all(latency is not None and latency >= 0 for latency, _ in reported)
    assert (client.received, client.duplicates) == (2, 1)


def test_raw_client_costs_recover_the_costs_put_into_the_publish_steps() -> None:
    table, record = raw_client_costs(with_load(steps_like_calibrate(KNOWN_US, 0.0), RAW_US))
    # the round trip split as the Locust one: receive = a delivery, send = the rest
    assert table == {"send_us": 25.0, "receive_us": 5.0, "delivery_us": 5.0}
    assert record["measured"] is True
    assert (record["round_trip_us"], record["delivery_us"]) == (30.0, 5.0)
    assert record["held_at_zero"] == []
    assert record["max_abs_residual"] == 0.0
    assert [(s["step"], s["round_trips"], s["deliveries"], s["load_cpu_s"], s["residual"])
            for s in record["steps"]] == [("publish_to_0", 60000, 0, 1.8, 0.0),
                                          ("publish_to_10", 20000, 200000, 1.6, 0.0),
                                          ("publish_to_50", 5000, 250000, 1.4, 0.0)]


def test_raw_client_costs_within_the_noise_of_the_steps() -> None:
    rows = with_load(steps_like_calibrate(KNOWN_US, 0.0), RAW_US, noise=0.02)
    _, record = raw_client_costs(rows)
    assert record["round_trip_us"] == pytest.approx(30.0, rel=0.03)
    assert record["delivery_us"] == pytest.approx(5.0, rel=0.1)
    assert 0 < record["max_abs_residual"] <= 0.02


def test_the_nonnegative_fit_holds_at_zero_a_cost_the_data_put_below_it() -> None:
    """A second step that did 100,000 deliveries more for less CPU: unconstrained, a
    delivery would cost less than nothing; held at 0, the round trip is the weighted
    least squares of the two steps alone."""
    rows = [Row("publish_to_0", {"round_trip": 10000, "delivery": 0}, 0.30),
            Row("publish_to_10", {"round_trip": 10000, "delivery": 100000}, 0.29)]
    assert fit_costs(rows, ["round_trip", "delivery"]).raw_us["delivery"] < 0
    fit = fit_nonnegative(rows, ["round_trip", "delivery"])
    a = [10000 / 0.30, 10000 / 0.29]
    assert fit.costs_us["delivery"] == 0.0
    assert fit.costs_us["round_trip"] == pytest.approx(
        sum(a) / sum(x * x for x in a) * 1e6, rel=1e-12)
    assert fit.clamped == ["delivery"]


@pytest.mark.parametrize(("rows", "why"), [
    (with_load(steps_like_calibrate(KNOWN_US, 0.0), None),
     "publish_to_0, publish_to_10, publish_to_50) do not determine the raw client's "
     "costs: no measured step does round_trip: its cost is undetermined; no load CPU "
     "measured in publish_to_0, publish_to_10, publish_to_50; [model.raw_client] left out"),
    ([r for r in with_load(steps_like_calibrate(KNOWN_US, 0.0), RAW_US)
      if r.step not in ("publish_to_10", "publish_to_50")],
     "publish_to_0) do not determine the raw client's costs: no measured step does "
     "delivery: its cost is undetermined; [model.raw_client] left out"),
], ids=["no_load_cpu", "no_deliveries"])
def test_raw_client_costs_that_the_steps_do_not_give_are_left_out(rows: list[Row],
                                                                   why: str) -> None:
    table, record = raw_client_costs(rows)
    assert table is None
    assert record["measured"] is False
    assert record["reason"] == "the publish steps (" + why


def measured_like_calibrate(rows: list[Row]) -> dict:
    """What `command.measure` returns, around `rows` (no Redis, no Locust swarms)."""
    rtts = [0.0001 * (1 + i / 100) for i in range(100)]
    return {"rows": rows, "idle_per_s": 0.0, "rtts": rtts,
            "idle_rtts": {5.0: [0.0005] * 10, 1000.0: [0.0002] * 10},
            "local_delivery": [0.0001] * 10, "spin_rate": [1.0, 1.0],
            "batching": {"publish_us_1_in_flight": 60.0, "publish_us_8_in_flight": 30.0},
            "load_generator": None, "redis": None, "redis_missing": "--no-redis"}


MACHINE = {"host": "h", "cpus": 2, "arch": "x86_64", "cpu_model": "c", "python": "3",
           "kernel": "k"}
WHEN = datetime(2026, 1, 2, tzinfo=UTC)


def written_model(tmp_path: Path, rows: list[Row]) -> tuple[dict, Path]:
    model = command.build_model(measured_like_calibrate(rows), Scale(), MACHINE, WHEN)
    out = tmp_path / "model.toml"
    out.write_text(toml_text({"model": model}, command.header(model, Scale())))
    return model, out


def test_the_model_file_carries_the_raw_client_the_engine_reads(tmp_path: Path) -> None:
    model, out = written_model(tmp_path, with_load(steps_like_calibrate(KNOWN_US, 0.0),
                                                   RAW_US))
    raw_client = load_model(out).raw_client
    assert (raw_client.send_us, raw_client.receive_us, raw_client.delivery_us) == (
        25.0, 5.0, 5.0)
    recorded = tomllib.loads(out.read_text())["model"]["measured"]["raw_client"]
    assert recorded["measured"] is True
    assert [s["step"] for s in recorded["steps"]] == ["publish_to_0", "publish_to_10",
                                                      "publish_to_50"]
    steps = {s["step"]: s for s in tomllib.loads(out.read_text())["model"]["measured"][
        "steps"]}
    assert steps["publish_to_10"]["load_cpu_s"] == 1.6
    assert ("raw client    send 25.0 us, receive 5.0 us, delivery 5.0 us of its core"
            in command.table(model).splitlines())


def test_a_raw_client_not_measured_is_left_out_of_the_file_with_the_reason(
        tmp_path: Path) -> None:
    model, out = written_model(tmp_path, with_load(steps_like_calibrate(KNOWN_US, 0.0),
                                                   None))
    assert "raw_client" not in tomllib.loads(out.read_text())["model"]
    raw_client = load_model(out).raw_client
    assert (raw_client.send_us, raw_client.receive_us, raw_client.delivery_us) == (
        0.0, 0.0, 0.0)  # the model's default: nothing charged
    reason = tomllib.loads(out.read_text())["model"]["measured"]["raw_client"]["reason"]
    assert reason.endswith("no load CPU measured in publish_to_0, publish_to_10, "
                           "publish_to_50; [model.raw_client] left out")
    assert f"raw client    not measured: {reason}" in command.table(model).splitlines()


def bench_result(busy: float, share: float, us: float) -> dict:
    return {"ours": 30_000.0, "bare": 31_000.0, "unit": "round trips/s",
            "other_cpu": 0.4, "client_cpu": 0.5, "busy_by_cpu": {"0": busy, "1": 0.9},
            "servers": {"ours": {"server_cpu": share, "server_cpu_us_per_ack": us}}}


def test_check_explains_a_miss_by_the_core_others_took_and_by_batching() -> None:
    c = compare("reqack", 50_000.0, 25.0, bench_result(1.0, 0.7, 20.0), server_core=0)
    assert c["error"] == pytest.approx(50_000 / 30_000 - 1, abs=1e-4)
    assert c["within"] is False
    assert c["predicted_at_that_share"] == 35_000.0
    assert [e.split(":")[0] for e in c["explanations"]] == [
        "the server got 70% of its core", "batching"]


def test_check_says_when_the_server_was_not_saturated() -> None:
    c = compare("reqack", 31_000.0, 25.0, bench_result(0.6, 0.55, 25.0), server_core=0)
    assert c["within"] is True
    assert c["explanations"] == [
        "the server's core was 60% busy: the server was not saturated, the load was the "
        "limit (its client used 0.5 core; other processes 0.4 core of the machine)"]


def test_the_shipped_model_is_a_calibration_of_this_project_machine() -> None:
    model = load_model()
    raw = tomllib.loads(DEFAULT_MODEL.read_text())["model"]
    assert raw["source"].startswith("rtmsim calibrate")
    assert raw["measured"]["steps"]
    for op, cost in model.costs_us.items():
        assert math.isfinite(cost) and cost > 0, op
    assert DEFAULT_MODEL.read_text().startswith("# The model a scenario without [model]")


# -- the command ------------------------------------------------------------------------


def test_calibrate_writes_a_model_the_engine_loads(tmp_path: Path) -> None:
    """A tiny calibration end to end (with the Redis hop when redis-server is here)."""
    out = tmp_path / "sub" / "model.toml"
    has_redis = shutil.which("redis-server") is not None
    cmd = [sys.executable, "-m", "sim.cli", "calibrate", "--seconds", "0.15", "--out",
           str(out), "--json", *([] if has_redis else ["--no-redis"])]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)
    assert printed["out"] == str(out)
    model = load_model(out)
    assert set(model.costs_us) == set(OPERATIONS)
    for op, cost in model.costs_us.items():
        assert math.isfinite(cost) and cost > 0, op
    assert model.costs_us["connect_key"] > model.costs_us["publish"]
    assert model.costs_us["connect_jwt"] > model.costs_us["publish"]
    assert model.network.median_ms > 0 and model.network.sigma >= 0
    raw = tomllib.loads(out.read_text())["model"]
    assert raw["source"] == ("rtmsim calibrate" if has_redis else raw["source"])
    assert raw["measured"]["redis"]["measured"] is has_redis
    steps = {s["step"] for s in raw["measured"]["steps"]}
    assert {"connect_key", "publish_to_50", "kick_32", "rest_publish"} <= steps
    assert out.read_text().startswith("# Measured by `rtmsim calibrate")
    # Each request at two depths in alternating slices; its turn from that pair alone.
    by_step = {s["step"]: s for s in raw["measured"]["steps"]}
    for op, kind in (("publish", "publish"), ("send", "send"), ("frame", "ping"),
                     ("subscribe", "subscribe"), ("unsubscribe", "unsubscribe")):
        lo, hi = by_step[f"turn4_{kind}"], by_step[f"turn16_{kind}"]
        assert (lo["in_flight"], hi["in_flight"]) == (4, 16)
        per = [r["cpu_s"] / r["ops"][op] for r in (lo, hi)]
        expected = max(0.0, (per[0] - per[1]) / (1 / 4 - 1 / 16) * 1e6)
        assert model.turn_us[op] == pytest.approx(expected, abs=0.01), op
    # The wake-up of an idle server: one point per rate, idle ascending.
    idle = [ms for ms, _ in model.wake_curve]
    assert idle == [200.0, 50.0, 10.0, 3.333, 1.0][::-1] and all(
        us >= 0 for _, us in model.wake_curve)
    # The Locust process's costs, from its three swarms: a read of one frame (the
    # deliveries) split by the bursts into its reader's wake and the frame.
    lg = model.load_generator
    assert lg.send_us + lg.receive_us > 0 and lg.delivery_us >= 0
    swarms = raw["measured"]["load_generator"]
    assert swarms["requests"]["round_trips"] > 0 and swarms["deliveries"]["deliveries"] > 0
    bursts = swarms["bursts"]
    assert bursts["rounds"] > 0 and bursts["deliveries"] >= bursts["rounds"] * 10 * 20
    assert (lg.wake_us, lg.delivery_us) == (bursts["wake_us"], bursts["frame_us"])
    assert lg.wake_us + lg.delivery_us == pytest.approx(
        swarms["deliveries"]["delivery_us"], abs=0.02)
    rest = max(0.0, swarms["requests"]["round_trip_us"] - lg.wake_us)
    assert lg.receive_us == pytest.approx(min(lg.delivery_us, rest / 2), abs=0.01)
    churn = swarms["connects"]  # connect-and-close loops: an upgrade's own cost
    assert churn["connects"] > 0 and churn["cycle_us"] > 0
    assert lg.connect_us == pytest.approx(max(0.0, churn["cycle_us"] - 2 * (
        lg.send_us + lg.receive_us)), abs=0.02)
    timers = swarms["timers"]  # an idle gevent loop's sleeps: whole ms, then later
    assert lg.timer_ms == timers["timer_ms"] == 1.0
    assert [ms for ms, _ in lg.timer_wake_curve] == [1.0, 4.0, 10.0, 50.0, 200.0]
    assert [list(p) for p in lg.timer_wake_curve] == timers["timer_wake_curve"]
    assert all(us >= 0 for _, us in lg.timer_wake_curve)
    flush = swarms["flush"]  # the event log's flush, timed on 2,000 and 10,000 rows
    assert (lg.flush_us, lg.flush_row_us) == (flush["flush_us"], flush["flush_row_us"])
    assert flush["median_ms"][1] > flush["median_ms"][0] > 0 and lg.flush_row_us > 0
    assert lg.send_us + lg.receive_us == pytest.approx(rest, abs=0.02)
    # The raw client's costs, fitted from the load's own CPU in the publish steps.
    fitted = raw["measured"]["raw_client"]
    assert fitted["measured"] is True, fitted.get("reason")
    assert [s["step"] for s in fitted["steps"]] == ["publish_to_0", "publish_to_10",
                                                    "publish_to_50"]
    rc = model.raw_client
    assert raw["raw_client"] == {"send_us": rc.send_us, "receive_us": rc.receive_us,
                                 "delivery_us": rc.delivery_us}
    assert rc.send_us + rc.receive_us == pytest.approx(fitted["round_trip_us"], abs=0.02)
    assert rc.delivery_us == fitted["delivery_us"]
    assert rc.send_us + rc.receive_us > 0
    for step in raw["measured"]["steps"]:  # the load's CPU is its event loop's
        assert step["load_cpu_s"] > 0, step["step"]
        assert step["load_other_threads_cpu_s"] <= 0.01 * step["load_cpu_s"], step["step"]


@pytest.mark.parametrize("where", ["dir", "under_a_file"])
def test_a_bad_out_path_is_one_line(tmp_path: Path, where: str) -> None:
    (tmp_path / "f").write_text("")
    out = tmp_path if where == "dir" else tmp_path / "f" / "model.toml"
    done = subprocess.run([sys.executable, "-m", "sim.cli", "calibrate", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rtmsim: calibrate: --out {out}: ")
    assert ("is a directory" if where == "dir" else "cannot create") in lines[0]


def test_bad_seconds_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--seconds", "0"]) == 2
    assert capsys.readouterr().err == "rtmsim: calibrate: --seconds must be > 0, got 0\n"


def test_a_server_that_fails_to_start_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(servers, "SERVE_COMMAND", (
        sys.executable, "-c", "import sys; print('rtmsim: cannot listen on 127.0.0.1'); "
        "sys.exit(2)"))
    affinity = os.sched_getaffinity(0)  # the command pins its own process to the load CPU
    try:
        code = main(["calibrate", "--seconds", "0.1", "--out", str(tmp_path / "m.toml")])
    finally:
        os.sched_setaffinity(0, affinity)
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ("rtmsim: calibrate: the server (rtmsim serve) did not start (exit "
                       "code 2): rtmsim: cannot listen on 127.0.0.1")
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "m.toml").exists()


def test_the_wake_ups_cpu_is_taken_out_of_their_latency(tmp_path: Path) -> None:
    # Back to back a ping costs the server 30 us and takes 0.1 ms; after 200 ms idle
    # (5 a second) 230 us and 0.5 ms; after 1 ms idle 80 us and 0.2 ms.
    rows = with_load(steps_like_calibrate(KNOWN_US, 0.0), RAW_US)
    measured = {**measured_like_calibrate(rows),
                "rtts": [0.0001] * 100, "rtt_cpu": 30e-6,
                "idle_cpu": {5.0: 230e-6, 1000.0: 80e-6}}
    model = command.build_model(measured, Scale(), MACHINE, WHEN)
    assert model["wake_cpu_curve"] == [[1.0, 50.0], [200.0, 200.0]]
    # 400 us more a round trip after 200 ms idle, 200 of them the server's CPU.
    assert model["wake_curve"] == [[1.0, 50.0], [200.0, 200.0]]
    out = tmp_path / "model.toml"
    out.write_text(toml_text({"model": model}, command.header(model, Scale())))
    assert load_model(out).wake_cpu_curve == ((1.0, 50.0), (200.0, 200.0))
    # Without the CPU figures (an older calibration) the latency keeps all of it
    # (back to back: a median of 0.1495 ms).
    older = command.build_model(measured_like_calibrate(rows), Scale(), MACHINE, WHEN)
    assert older["wake_cpu_curve"] == []
    assert older["wake_curve"] == [[1.0, 50.5], [200.0, 350.5]]
