"""The load generator in virtual time (`rtmsim simulate --load-generator`): one FIFO
core per Locust process, between the users and the network.

Unit tests pin the core's clock arithmetic; the runs pin what it does to what users
measure (a closed loop bound by the process, a reply behind a fan-out's deliveries,
the wake-up of an idle process), each figure from the model's arithmetic.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_virtual_engine import (
    BEHAVIOURS,
    EPOCH,
    FLOOD,
    ORIGIN,
    QUIET,
    SUBS,
    costs,
    events,
    scenario,
    stats,
)

from sim import rundir
from sim.cli import main
from sim.virtual.loadgen import ProcessCore
from sim.virtual.model import LoadGenerator, load_model
from sim.virtual.run import VirtualRun


def simulate(tmp_path: Path, text: str, model, *, load_generator: bool = True) -> Path:
    run_dir = tmp_path / ("lg" if load_generator else "devices")
    status = VirtualRun(scenario(text), run_dir, model, out=io.StringIO(), epoch=EPOCH,
                        behaviours=BEHAVIOURS, load_generator=load_generator).run()
    assert status == "complete"
    return run_dir


def acked(run_dir: Path, start: float = 2.0, end: float = 8.0) -> list[dict]:
    return [r for r in events(run_dir) if r["op"] == "publish" and r["outcome"] == "ok"
            and ORIGIN + start <= r["t"] < ORIGIN + end]


# -- the core's clock -------------------------------------------------------------------


def test_a_busy_core_queues_frames_in_order() -> None:
    core = ProcessCore(LoadGenerator(send_us=10.0, receive_us=20.0, delivery_us=5.0))
    assert core.sent(1.0) == pytest.approx(1.0 + 10e-6)
    # Arrives while the write is under way: read after it.
    assert core.read(1.0 + 5e-6, core.receive_s) == pytest.approx(1.0 + 30e-6)
    # Arrives at an idle core: read at once.
    assert core.read(2.0, core.receive_s) == pytest.approx(2.0 + 20e-6)
    assert core.sent(2.0 + 1e-6) == pytest.approx(2.0 + 30e-6)  # behind the read
    assert core.busy_s == pytest.approx(60e-6)


def test_read_many_is_read_one_after_another() -> None:
    costs_ = LoadGenerator(delivery_us=5.0)
    one, many = ProcessCore(costs_), ProcessCore(costs_)
    arrivals = [1.0, 1.0 + 1e-6, 1.0 + 2e-4, 1.0 + 5e-3]
    expected = [one.read(a, one.delivery_s) for a in arrivals]
    assert many.read_many(arrivals, many.delivery_s) == pytest.approx(expected)
    assert (many.free_at, many.busy_s) == pytest.approx((one.free_at, one.busy_s))
    # The second queues behind the first; the last two find the core idle.
    assert expected[1] - expected[0] == pytest.approx(5e-6)
    assert expected[3] == pytest.approx(1.0 + 5e-3 + 5e-6)


# -- what users measure ----------------------------------------------------------------


def test_closed_loops_are_bound_by_the_load_generator_process(tmp_path: Path) -> None:
    # 20 closed loops, a 10 us publish on the server, 40 + 60 us of the one Locust
    # process per round trip: the process is the bottleneck at 10,000/s.
    model = replace(QUIET, costs_us=costs(publish=10.0),
                    load_generator=LoadGenerator(send_us=40.0, receive_us=60.0))
    run_dir = simulate(tmp_path, FLOOD, model)
    mid = acked(run_dir)
    assert len(mid) / 6.0 == pytest.approx(10_000, rel=0.01)
    # Little's law again: 20 in the system, 100 us each: 2 ms a round trip.
    lat = sorted(r["latency_ms"] for r in mid)
    assert lat[len(lat) // 2] == pytest.approx(20 * 0.1, rel=0.05)
    # The server's core idled 90% of the time.
    assert stats(run_dir)["i0"]["process"]["cpu_s"] == pytest.approx(
        len(acked(run_dir, 0.0, 10.0)) * 10e-6, rel=0.01)


def test_two_processes_share_the_users_and_double_the_bound(tmp_path: Path) -> None:
    model = replace(QUIET, costs_us=costs(publish=10.0),
                    load_generator=LoadGenerator(send_us=40.0, receive_us=60.0))
    text = FLOOD.replace("duration_s = 10", "duration_s = 10\nworkers = 2")
    assert len(acked(simulate(tmp_path, text, model))) / 6.0 == pytest.approx(20_000,
                                                                              rel=0.01)


def test_deliveries_are_read_one_after_another_by_their_process(tmp_path: Path) -> None:
    # 40 listeners in one process: a publish fans out 40 frames that all arrive
    # 0.2 ms after their write (sigma 0); the process reads them 25 us apart, so the
    # last is read 39 x 25 us after the first.
    model = replace(QUIET, costs_us=costs(publish=30.0, delivery=1.0),
                    network=replace(QUIET.network, median_ms=0.2),
                    load_generator=LoadGenerator(delivery_us=25.0))
    run_dir = simulate(tmp_path, SUBS.format(server="", faults=""), model)
    rows = events(run_dir)
    published = [r for r in rows if r["op"] == "publish" and r["outcome"] == "ok"]
    delivered = [r for r in rows if r["op"] == "deliver"]
    assert len(delivered) == 40 * len(published) > 0
    assert stats(run_dir)["i0"]["totals"]["messages"]["delivered"] == len(delivered)
    by_msg: dict[str, list[float]] = {}
    for r in delivered:
        by_msg.setdefault(r["msg_id"], []).append(r["latency_ms"])
    spans = [max(v) - min(v) for v in by_msg.values()]
    # Written 1 us apart, read 25 us apart: the reads set the pace (39 gaps). (Unix
    # seconds near 1.9e9 carry a quarter of a microsecond.)
    assert spans == pytest.approx([39 * 0.025] * len(spans), abs=1e-3)
    # The first: the 0.2 ms trip out, 30 us publish and 1 us delivery, 0.2 ms back,
    # and its read.
    assert min(min(v) for v in by_msg.values()) == pytest.approx(
        0.2 + 0.030 + 0.001 + 0.2 + 0.025, abs=1e-3)


def test_run_json_names_the_modelled_processes(tmp_path: Path) -> None:
    # A second of the flood: without costs its 20 loops make 100,000 publishes a
    # virtual second, and what run.json says of the processes does not need ten.
    model = replace(QUIET, load_generator=LoadGenerator(send_us=1.0))
    flood = FLOOD.replace("duration_s = 10", "duration_s = 1")
    meta = json.loads((simulate(tmp_path, flood, model) / rundir.RUN).read_text())
    assert meta["engine"]["load_generator"] == {
        "kind": "locust", "processes": 1, "colocated": False, "send_us": 1.0,
        "receive_us": 0.0, "delivery_us": 0.0}
    meta = json.loads((simulate(tmp_path, flood, model, load_generator=False)
                       / rundir.RUN).read_text())
    assert meta["engine"]["load_generator"] is None


def test_the_shipped_model_has_load_generator_costs() -> None:
    lg = load_model().load_generator
    assert lg.send_us > 0 and lg.receive_us > 0 and lg.delivery_us > 0


def test_a_bad_load_generator_figure_is_one_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.toml"
    path.write_text(FLOOD + "[model.load_generator]\nsend_us = -1\n")
    assert main(["simulate", str(path), "--load-generator", "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.load_generator.send_us" in err
    path.write_text(FLOOD + "[model.load_generator]\nsend_ms = 1\n")
    assert main(["simulate", str(path), "--out", str(tmp_path / "out2")]) == 2
    assert "send_ms" in capsys.readouterr().err
