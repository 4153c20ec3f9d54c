"""The load generator in virtual time (`rtmsim simulate --load-generator`): one event
loop per Locust process, between the users and the network.

Unit tests pin the core's clock arithmetic; the runs pin what it does to what users
measure (a closed loop bound by the process, a reply behind a fan-out's deliveries,
the wake-up of an idle process), each figure from the model's arithmetic.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import tomllib
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
    Ticker,
    costs,
    events,
    scenario,
    stats,
)

from loadtests.intents import Sleep
from sim import rundir
from sim.cli import main
from sim.tomlwrite import toml_text
from sim.virtual import run as run_module
from sim.virtual.engine import HeapQueue
from sim.virtual.loadgen import ProcessCore
from sim.virtual.model import DEFAULT_MODEL, LoadGenerator, load_model
from sim.virtual.run import VirtualRun


def simulate(tmp_path: Path, text: str, model, *, load_generator: bool = True,
             behaviours: dict | None = None) -> Path:
    run_dir = tmp_path / ("lg" if load_generator else "devices")
    status = VirtualRun(scenario(text), run_dir, model, out=io.StringIO(), epoch=EPOCH,
                        behaviours=behaviours or BEHAVIOURS,
                        load_generator=load_generator).run()
    assert status == "complete"
    return run_dir


def acked(run_dir: Path, start: float = 2.0, end: float = 8.0) -> list[dict]:
    return [r for r in events(run_dir) if r["op"] == "publish" and r["outcome"] == "ok"
            and ORIGIN + start <= r["t"] < ORIGIN + end]


# -- the loop's clock --------------------------------------------------------------------


def _loop(**costs_us: float) -> tuple[HeapQueue, ProcessCore]:
    clock = HeapQueue()
    return clock, ProcessCore(LoadGenerator(**costs_us), clock)


def _at(clock: HeapQueue, t: float, fn) -> None:
    clock.call_at(t, fn)


def test_an_idle_loop_writes_and_reads_at_once() -> None:
    clock, core = _loop(send_us=10.0, receive_us=20.0, delivery_us=5.0, wake_us=7.0)
    got: list[float] = []
    _at(clock, 1.0, lambda: core.write(got.append))
    _at(clock, 2.0, lambda: core.read("a", core.delivery_s, got.append, False))
    clock.run(3.0)
    assert got == pytest.approx([1.0 + 10e-6, 2.0 + 7e-6 + 5e-6])  # a wake and a read
    assert core.busy_s == pytest.approx(22e-6)


def test_the_loop_reads_in_iterations_and_resumes_replies_at_their_end() -> None:
    # A reply for "p0" at an idle loop begins an iteration (a wake, 10 us, and its
    # read, 20 us). Meanwhile a delivery for "s", a reply for "p" and a second
    # delivery for "s" arrive, and a user writes: the next iteration writes first
    # (4 us), then wakes "s" once for both its frames, then "p"; a reply's user
    # resumes only when its iteration is over.
    clock, core = _loop(send_us=4.0, receive_us=20.0, delivery_us=5.0, wake_us=10.0)
    got: dict[str, float] = {}

    def read(key: str, name: str, cost: float, reply: bool):
        return lambda: core.read(key, cost, lambda t: got.__setitem__(name, t), reply)

    _at(clock, 1.0, read("p0", "first", core.receive_s, True))
    _at(clock, 1.0 + 5e-6, read("s", "d1", core.delivery_s, False))
    _at(clock, 1.0 + 6e-6, read("p", "ack", core.receive_s, True))
    _at(clock, 1.0 + 7e-6, read("s", "d2", core.delivery_s, False))
    _at(clock, 1.0 + 8e-6, lambda: core.write(lambda t: got.__setitem__("write", t)))
    clock.run(2.0)
    first = 1.0 + 30e-6
    assert got["first"] == pytest.approx(first)
    assert got["write"] == pytest.approx(first + 4e-6)
    s_read = first + 4e-6 + 10e-6 + 2 * 5e-6
    assert got["d1"] == got["d2"] == pytest.approx(s_read)
    assert got["ack"] == pytest.approx(s_read + 10e-6 + 20e-6)
    assert core.busy_s == pytest.approx(got["ack"] - 1.0)


def test_a_ready_socket_reads_what_arrived_before_its_turn() -> None:
    # "a" and "b" are ready when the iteration begins; a second frame for "b" arrives
    # while "a" is read, so "b" reads both at its turn (one wake); a frame for "c",
    # not ready at the start, waits for the next iteration.
    clock, core = _loop(delivery_us=5.0, wake_us=10.0)
    got: dict[str, float] = {}

    def read(key: str, name: str):
        return lambda: core.read(key, core.delivery_s,
                                 lambda t: got.__setitem__(name, t), False)

    _at(clock, 1.0, read("a", "a"))
    _at(clock, 1.0, read("b", "b1"))
    _at(clock, 1.0 + 1e-6, read("c", "c"))
    _at(clock, 1.0 + 2e-6, read("b", "b2"))
    clock.run(2.0)
    assert got["a"] == pytest.approx(1.0 + 15e-6)
    assert got["b1"] == got["b2"] == pytest.approx(1.0 + 15e-6 + 20e-6)
    assert got["c"] == pytest.approx(1.0 + 35e-6 + 15e-6)


def test_the_event_logs_flush_holds_up_the_loop_by_the_rows_since_the_last() -> None:
    # Three frames read (three rows), then the flush's timer: 1 ms and 10 us a row.
    # A reply arriving during the flush is read after it; the next flush has one row.
    clock, core = _loop(receive_us=5.0, flush_us=1000.0, flush_row_us=10.0)
    got: list[float] = []
    for i in range(3):
        _at(clock, 1.0 + i * 1e-3, lambda i=i: core.read(i, core.receive_s, got.append, True))
    _at(clock, 1.01, core.flush)
    _at(clock, 1.0105, lambda: core.read("late", core.receive_s, got.append, True))
    _at(clock, 2.01, core.flush)
    clock.run(3.0)
    flush = 1000e-6 + 3 * 10e-6
    assert got[3] == pytest.approx(1.01 + flush + 5e-6)
    assert core.busy_s == pytest.approx(4 * 5e-6 + flush + 1000e-6 + 10e-6)
    assert core.rows == 0


def test_without_a_wake_a_backlog_is_read_frame_after_frame() -> None:
    # wake_us = 0 (a model file from before the loop): the reads of a backlog are
    # 5 us apart whichever iteration holds them, as a FIFO would read them.
    clock, core = _loop(delivery_us=5.0)
    read: list[float] = []
    for i in range(4):
        _at(clock, 1.0 + i * 1e-6,
            lambda i=i: core.read(i, core.delivery_s, read.append, False))
    clock.run(2.0)
    assert sorted(read) == pytest.approx([1.0 + 5e-6, 1.0 + 10e-6, 1.0 + 15e-6,
                                          1.0 + 20e-6])


def test_an_idle_loop_runs_its_timers_on_whole_milliseconds() -> None:
    # The loop last worked at 1.0 (a write), so it sleeps until its first timer in
    # whole milliseconds: a sleep ending at 1.0253 runs at 1.026, and one ending at
    # 1.0258 joins that iteration, running when the first user has written (greenlets
    # run one at a time). The loop is busy until 1.026 + 2 writes; a timer ending at
    # 1.0261 then waits from there, 1 ms rounded up.
    clock, core = _loop(send_us=10.0, timer_ms=1.0)
    ran: list[tuple[str, float]] = []

    def user(name: str):
        def run() -> None:
            ran.append((name, clock.now))
            core.write(lambda t: ran.append((name + " wrote", t)))
        return lambda: core.timer(run)

    _at(clock, 1.0, lambda: core.write(lambda t: None, 0.0))
    _at(clock, 1.0253, user("a"))
    _at(clock, 1.0258, user("b"))
    _at(clock, 1.0261, user("c"))
    clock.run(2.0)
    got = dict(ran)
    assert (got["a"], got["b"]) == pytest.approx((1.026, 1.026 + 10e-6))
    assert (got["a wrote"], got["b wrote"]) == pytest.approx((1.026 + 10e-6, 1.026 + 20e-6))
    assert got["c"] == pytest.approx(1.026 + 20e-6 + 1e-3)


def test_a_frame_wakes_a_loop_sleeping_to_its_timer_and_the_timer_runs_first() -> None:
    # The timer ended at 1.0253 (the loop would wake at 1.026); a frame at 1.0255
    # wakes it sooner, and the user whose timer ended runs first in that iteration.
    clock, core = _loop(delivery_us=5.0, wake_us=10.0, timer_ms=1.0)
    ran: list[tuple[str, float]] = []
    _at(clock, 1.0, lambda: core.write(lambda t: None, 0.0))
    _at(clock, 1.0253, lambda: core.timer(lambda: ran.append(("timer", clock.now))))
    _at(clock, 1.0255, lambda: core.read("s", core.delivery_s,
                                         lambda t: ran.append(("read", t)), False))
    clock.run(2.0)
    assert ran == [("timer", pytest.approx(1.0255)), ("read", pytest.approx(1.0255 + 15e-6))]


def test_a_timer_wakes_the_loop_later_the_longer_it_slept() -> None:
    # timer_wake_curve [[1 ms, 100 us], [50 ms, 300 us]]: a 25 ms sleep (25 ms on the
    # dot) wakes at 25 ms + the curve at 25 ms, linear in log idle between the points.
    clock, core = _loop(timer_ms=1.0, timer_wake_curve=((1.0, 100.0), (50.0, 300.0)))
    ran: list[float] = []
    _at(clock, 1.0, lambda: core.write(lambda t: None, 0.0))
    _at(clock, 1.025, lambda: core.timer(lambda: ran.append(clock.now)))
    clock.run(2.0)
    extra = 100e-6 + 200e-6 * math.log(25.0) / math.log(50.0)
    assert ran == [pytest.approx(1.025 + extra)]


def test_a_busy_loop_runs_an_expired_timer_first_in_its_next_iteration() -> None:
    # A frame's read holds the loop 1.0 -> 1.0 + 110 us; a timer ending meanwhile
    # runs when it ends (not on a millisecond: the loop did not sleep), and with
    # timer_ms = 0 an idle loop runs a timer when it ends.
    clock, core = _loop(delivery_us=100.0, wake_us=10.0, timer_ms=1.0)
    ran: list[float] = []
    _at(clock, 1.0, lambda: core.read("s", core.delivery_s, lambda t: None, False))
    _at(clock, 1.00005, lambda: core.timer(lambda: ran.append(clock.now)))
    clock.run(2.0)
    assert ran == [pytest.approx(1.0 + 110e-6)]
    clock, core = _loop(send_us=10.0)
    _at(clock, 1.0, lambda: core.write(lambda t: None))
    _at(clock, 1.0253, lambda: core.timer(lambda: ran.append(clock.now)))
    clock.run(2.0)
    assert ran[1] == pytest.approx(1.0253)


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


SPAWN = """
[server]
seed = 4
[swarm]
users = 20
spawn_rate = 1000
duration_s = 1
[swarm.classes.Subscriber]
weight = 1
subscriptions = 1
"""


def test_users_connecting_at_once_take_turns_at_their_process_handshakes(
        tmp_path: Path) -> None:
    # 20 users spawned in one burst (SPAWN_GAP_S apart, as a real Locust process
    # spawns them); each upgrade costs their one process 5 ms (the TCP connect and the
    # client's side of the handshake), nothing else costs anything, the network 0.1
    # ms each way: the upgrades leave the process 5 ms apart, not as spawned, and a
    # user's connect waits for the handshakes ahead of it (real runs: connect p50s of
    # 22-57 ms for 30-50 users).
    def connects(model) -> tuple[list[float], list[float]]:
        run_dir = simulate(tmp_path / model.name, SPAWN, model)
        rows = [r for r in events(run_dir) if r["op"] == "connect"]
        assert len(rows) == 20 and all(r["outcome"] == "ok" for r in rows)
        served = [e["t"] for e in map(json.loads, (run_dir / "server-events.jsonl")
                                      .read_text().splitlines()) if e["event"] == "connect"]
        served.sort()
        return [b - a for a, b in itertools.pairwise(served)], sorted(
            r["latency_ms"] for r in rows)

    gap = run_module.SPAWN_GAP_S
    gaps, fast = connects(replace(QUIET, name="fast", load_generator=LoadGenerator()))
    assert gaps == pytest.approx([gap] * 19, abs=1e-6)  # as spawned
    assert fast == pytest.approx([0.2] * 20, abs=1e-3)  # the two trips, nothing else
    gaps, slow = connects(replace(QUIET, name="slow",
                                  load_generator=LoadGenerator(connect_us=5000.0)))
    assert gaps == pytest.approx([0.005] * 19, abs=1e-5)
    assert slow[0] >= 5.2 - 1e-6  # its own handshake, then the trips
    # the last spawned (19 gaps in) is welcomed no sooner than the 20th upgrade leaves
    assert slow[-1] >= 20 * 5.0 - 19 * gap * 1e3 + 0.2 - 1e-6


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
        "connect_us": 0.0, "receive_us": 0.0, "delivery_us": 0.0, "wake_us": 0.0, "flush_us": 0.0,
        "flush_row_us": 0.0, "timer_ms": 0.0, "timer_wake_curve": []}
    meta = json.loads((simulate(tmp_path, flood, model, load_generator=False)
                       / rundir.RUN).read_text())
    assert meta["engine"]["load_generator"] is None


def test_the_event_log_flushes_once_a_virtual_second_through_a_whole_run(
        tmp_path: Path) -> None:
    # Nothing else costs the process anything: its CPU is its flushes, 2 ms each, one
    # a second from the start of the run to its end (20 s of scenario and the lead).
    model = replace(QUIET, load_generator=LoadGenerator(flush_us=2000.0))
    run_dir = simulate(tmp_path, SUBS.format(server="", faults=""), model)
    meta = json.loads((run_dir / rundir.RUN).read_text())
    flushes = meta["load_generator"]["cpu_s"] / 0.002
    assert flushes == pytest.approx(round(flushes), abs=1e-6)
    assert 20 <= round(flushes) <= 20 + 5
    assert meta["load_generator"]["busiest_share"] == pytest.approx(0.002, abs=1e-4)


def test_the_shipped_model_has_load_generator_costs() -> None:
    lg = load_model().load_generator
    assert lg.send_us > 0 and lg.receive_us > 0 and lg.delivery_us > 0


@pytest.mark.parametrize(("flag", "table"), [([], "load_generator"),
                                             (["raw"], "raw_client")])
def test_a_load_generator_the_model_has_no_costs_for_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: list[str],
        table: str) -> None:
    """A model calibrated with --no-load-generator (or one from before it) has no such
    costs: modelled free, the flag would change nothing while run.json said it did."""
    model = tmp_path / "m.toml"
    data = tomllib.loads(DEFAULT_MODEL.read_text())
    del data["model"][table]
    model.write_text(toml_text(data))
    path = tmp_path / "s.toml"
    path.write_text(FLOOD)
    out = tmp_path / "out"
    assert main(["simulate", str(path), "--model", str(model), "--load-generator", *flag,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"[model.{table}]" in err
    assert not out.exists()  # refused before anything ran
    assert main(["simulate", str(path), "--model", str(model), "--duration", "1",
                 "--out", str(out), "--no-progress"]) == 0  # without the flag it runs


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
    path.write_text(FLOOD + "[model.load_generator]\ntimer_wake_curve = [[10, 5], [1, 9]]\n")
    assert main(["simulate", str(path), "--out", str(tmp_path / "out3")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "model.load_generator.timer_wake_curve" in err and "ascending" in err


def test_a_model_file_sets_the_load_generators_timers(tmp_path: Path) -> None:
    path = tmp_path / "model.toml"
    path.write_text('[model]\n[model.costs_us]\n' + "".join(
        f"{op} = 10.0\n" for op in load_model().costs_us)
        + "[model.load_generator]\ntimer_ms = 1.0\n"
          "timer_wake_curve = [[1.0, 90.0], [50.0, 300]]\n")
    lg = load_model(path).load_generator
    assert (lg.timer_ms, lg.timer_wake_curve) == (1.0, ((1.0, 90.0), (50.0, 300.0)))


class AlignedTicker(Ticker):
    """Publishes on each whole second of the clock, 10 us later for the second user."""

    def task(self):
        now = self.clock()
        lag = 10e-6 if self.user.endswith("-2") else 0.0
        yield Sleep(math.floor(now) + 1.0 + lag - now)
        yield from self.publish("room/1")


def test_acks_of_fan_outs_read_together_resume_together(tmp_path: Path) -> None:
    # Two tickers publish 10 us apart, each to 40 listeners in the same process. The
    # loop reads both fan-outs' frames socket by socket (a wake, then each frame), so
    # both acks wait for the iteration that read their deliveries to end and resume
    # at the same instant, after every delivery of both; each round of the tickers
    # gives one such pair. (A FIFO of frames resumed each ack right after its own 40
    # deliveries, 40 reads apart.)
    model = replace(QUIET, costs_us=costs(publish=30.0, delivery=1.0),
                    network=replace(QUIET.network, median_ms=0.2),
                    load_generator=LoadGenerator(receive_us=5.0, delivery_us=5.0,
                                                 wake_us=20.0))
    text = SUBS.format(server="", faults="").replace("fixed_count = 1", "fixed_count = 2") \
        .replace("users = 41", "users = 42")
    rows = events(simulate(tmp_path, text, model,
                           behaviours={**BEHAVIOURS, "Chatter": AlignedTicker}))
    acks = sorted((r["t"], r["msg_id"]) for r in rows
                  if r["op"] == "publish" and r["outcome"] == "ok")
    read: dict[str, float] = {}
    for r in rows:
        if r["op"] == "deliver":
            read[r["msg_id"]] = max(read.get(r["msg_id"], 0.0), r["t"])
    rounds: dict[str, list[tuple[float, str]]] = {}
    for t, m in acks:
        rounds.setdefault(m.split(":")[1], []).append((t, m))
    pairs = [v for v in rounds.values() if len(v) == 2]
    assert len(pairs) >= 15
    for (t1, m1), (t2, m2) in pairs:
        assert t1 == pytest.approx(t2, abs=1e-6)
        assert t1 >= max(read[m1], read[m2]) - 1e-6
