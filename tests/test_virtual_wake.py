"""The wake-up of an idle instance (`[model] wake_curve`): a request reaching a server
that slept waits longer the longer it slept, as on this VM; a busy one does not wait."""

from __future__ import annotations

import math
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from test_virtual_engine import FLOOD, ORIGIN, QUIET, costs, events, simulate, stats

from server.schema import ConfigError
from sim.virtual.model import Model, WakeCurve, load_model

CURVE = ((1.0, 100.0), (10.0, 300.0), (100.0, 500.0))  # idle ms, wake us


def test_the_curve_interpolates_in_log_idle_and_holds_past_its_ends() -> None:
    wake = WakeCurve(CURVE)
    assert wake(0.0) == 0.0
    assert wake(0.0005) == pytest.approx(50e-6)  # half the first point's idle: half
    assert wake(0.001) == pytest.approx(100e-6)
    assert wake(10 ** -2.5) == pytest.approx(200e-6)  # halfway between 1 and 10 ms (log)
    assert wake(0.05) == pytest.approx(300e-6 + 200e-6 * math.log10(5), rel=1e-9)
    assert wake(5.0) == pytest.approx(500e-6)
    assert WakeCurve(())(3.0) == 0.0


def test_a_lone_loop_waits_for_the_wake_up_of_the_idle_server(tmp_path: Path) -> None:
    # One closed loop, 0.1 ms each way, 50 us of core: between two requests the server
    # idles for the ack's trip back and the next request's trip out, 0.2 ms: a fifth
    # of the first point's idle, so a fifth of its 100 us: 0.25 + 0.02 ms a round trip.
    model = replace(QUIET, costs_us=costs(publish=50.0), wake_curve=CURVE)
    run_dir = simulate(tmp_path, FLOOD.replace("users = 20", "users = 1"), model)
    rows = [r for r in events(run_dir) if r["op"] == "publish" and r["outcome"] == "ok"]
    steady = [r["latency_ms"] for r in rows if ORIGIN + 1 <= r["t"] < ORIGIN + 9]
    assert steady == pytest.approx([0.27] * len(steady), abs=1e-3)
    # Wake-ups are latency, not CPU.
    assert stats(run_dir)["i0"]["process"]["cpu_s"] == pytest.approx(len(rows) * 50e-6,
                                                                     rel=0.01)


def test_a_core_that_idled_runs_its_first_job_slower(tmp_path: Path) -> None:
    # The same lone loop with a wake-up CPU of 100 us after 1 ms idle: after 0.2 ms a
    # fifth, 20 us more CPU a publish, and 20 us more latency; no more latency from
    # the wake-up itself.
    model = replace(QUIET, costs_us=costs(publish=50.0), wake_curve=CURVE,
                    wake_cpu_curve=((1.0, 100.0),))
    run_dir = simulate(tmp_path, FLOOD.replace("users = 20", "users = 1"), model)
    rows = [r for r in events(run_dir) if r["op"] == "publish" and r["outcome"] == "ok"]
    steady = [r["latency_ms"] for r in rows if ORIGIN + 1 <= r["t"] < ORIGIN + 9]
    assert steady == pytest.approx([0.29] * len(steady), abs=1e-3)
    cpu = stats(run_dir)["i0"]["process"]["cpu_s"]
    assert cpu == pytest.approx(len(rows) * 70e-6, rel=0.01)


def test_a_saturated_server_never_sleeps(tmp_path: Path) -> None:
    # 20 closed loops on a 200 us publish: the queue never empties, so no wake-up:
    # the same 5,000/s as without a curve.
    model = replace(QUIET, costs_us=costs(publish=200.0), wake_curve=CURVE,
                    wake_cpu_curve=CURVE)
    acks = [r for r in events(simulate(tmp_path, FLOOD, model))
            if r["op"] == "publish" and r["outcome"] == "ok"
            and ORIGIN + 2 <= r["t"] < ORIGIN + 8]
    assert len(acks) / 6.0 == pytest.approx(5000, rel=0.01)


@pytest.mark.parametrize("curve", ["[[1.0, 5.0], [1.0, 6.0]]", "[[0, 5.0]]",
                                   "[[1.0, -5.0]]", "[1.0, 5.0]", "5.0", "[[1.0, true]]"])
def test_a_bad_wake_curve_is_one_line(curve: str) -> None:
    value = tomllib.loads("wake_curve = " + curve)["wake_curve"]
    with pytest.raises(ConfigError, match=r"^model\.wake_curve: must be a list of "):
        Model().with_table({"wake_curve": value}, "model")


def test_the_shipped_model_has_a_measured_wake_curve() -> None:
    curve = load_model().wake_curve
    assert len(curve) >= 3
    idle = [ms for ms, _ in curve]
    assert idle == sorted(idle) and all(us >= 0 for _, us in curve)
