"""The virtual engine's time model: queueing, saturation, timeouts, the backlog, the
Redis hop, bulk deliveries, determinism.

Scripted behaviours (generators of intents, as `loadtests.behaviours` writes them)
drive the engine here, so each test states exactly what the clients do; the model's
costs are set per test so every expected figure follows from arithmetic.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from loadtests.intents import Connect, Idle, Request, Sleep
from loadtests.retry import make_policy
from sim import rundir
from sim.scenario import parse_scenario
from sim.virtual.model import Model, Network, RedisModel, load_model
from sim.virtual.run import SERVER_LEAD_S, VirtualRun

EPOCH = 1.9e9  # the servers' start; scenario time 0 (the swarm's start) is ORIGIN
ORIGIN = EPOCH + SERVER_LEAD_S


class Scripted:
    """A behaviour whose steps the test class defines; no retries."""

    def __init__(self, params: Any, *, user_id: str, seed: int, model: str, clock: Any,
                 client: Any, rng: Any = None) -> None:
        self.params = params
        self.user = user_id
        self.clock = clock
        self.client = client
        self.policy = make_policy("none")
        self.seq = 0

    def on_start(self):
        result = yield Connect(1)
        self.connected = result
        yield from self.after_connect()

    def after_connect(self):
        return
        yield

    def on_stop(self):
        return
        yield

    def publish(self, channel: str):
        self.seq += 1
        msg_id = f"{self.user}:{self.seq}"
        data = {"id": msg_id, "ts": self.clock(), "pub": self.user, "ch": channel, "v": 1}
        return (yield Request("publish", {"type": "publish", "channel": channel, "data": data},
                              channel=channel, msg_id=msg_id))


class Flooder(Scripted):
    """Publishes back to back, waiting for each ack (a closed loop)."""

    def task(self):
        yield from self.publish("room/1")


class Listener(Scripted):
    """Subscribes to room/1 and idles; comes back after a close."""

    def after_connect(self):
        yield Request("subscribe", {"type": "subscribe", "channel": "room/1"}, channel="room/1")

    def task(self):
        view = self.client()
        if not view.is_open:
            yield Sleep((view.going_away_ms or 0) / 1000.0)
            result = yield Connect(1)
            if result.ok:
                yield from self.after_connect()
            return
        yield Idle(self.clock() + 1.0, 1.0)


class Ticker(Scripted):
    """Publishes once a second."""

    def task(self):
        yield Sleep(1.0)
        yield from self.publish("room/1")


BEHAVIOURS = {"Publisher": Flooder, "Subscriber": Listener, "Chatter": Ticker}


def costs(**overrides: float) -> dict[str, float]:
    base = dict.fromkeys(load_model().costs_us, 0.0)
    return {**base, **overrides}


def scenario(text: str) -> Any:
    return parse_scenario(__import__("tomllib").loads(text), text, default_name="t")


def simulate(tmp_path: Path, text: str, model: Model, name: str = "run") -> Path:
    run_dir = tmp_path / name
    status = VirtualRun(scenario(text), run_dir, model, out=io.StringIO(), epoch=EPOCH,
                        behaviours=BEHAVIOURS).run()
    assert status == "complete"
    return run_dir


def events(run_dir: Path) -> list[dict[str, Any]]:
    files = sorted((run_dir / "client-events-virtual").glob("*.parquet"))
    rows: list[dict[str, Any]] = []
    for f in files:
        rows += pq.read_table(f).to_pylist()
    return rows


def stats(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / rundir.SERVER_STATS).read_text())


QUIET = Model(name="test", costs_us=costs(), network=Network(median_ms=0.1, sigma=0.0))

FLOOD = """
[server]
seed = 4
[limits]
rate_per_second = 1000000.0
burst = 1000000.0
[swarm]
users = 20
spawn_rate = 1000
duration_s = 10
[swarm.classes.Publisher]
weight = 1
"""


def test_a_saturated_core_serves_one_over_the_cost(tmp_path: Path) -> None:
    # 20 closed loops, a 200 us publish: the core is the bottleneck at 5,000/s.
    model = replace(QUIET, costs_us=costs(publish=200.0))
    run_dir = simulate(tmp_path, FLOOD, model)
    acks = [r for r in events(run_dir) if r["op"] == "publish" and r["outcome"] == "ok"]
    mid = [r for r in acks if ORIGIN + 2 <= r["t"] < ORIGIN + 8]  # steady state
    assert len(mid) / 6.0 == pytest.approx(5000, rel=0.01)
    # Little's law: 20 requests in the system, 200 us each: about 4 ms per round trip.
    lat = sorted(r["latency_ms"] for r in mid)
    assert lat[len(lat) // 2] == pytest.approx(20 * 0.2, rel=0.05)
    assert stats(run_dir)["i0"]["process"]["cpu_s"] == pytest.approx(
        len(acks) * 200e-6, rel=0.01)


def test_below_saturation_latency_is_the_network_and_the_cost(tmp_path: Path) -> None:
    model = replace(QUIET, costs_us=costs(publish=50.0))
    text = FLOOD.replace("users = 20", "users = 1")
    rows = [r for r in events(simulate(tmp_path, text, model))
            if r["op"] == "publish" and r["outcome"] == "ok"]
    # 0.1 ms each way and 50 us of core: 0.25 ms, every time (no draw: sigma 0).
    assert {round(r["latency_ms"], 6) for r in rows} == {0.25}


def test_work_whose_client_timed_out_still_costs(tmp_path: Path) -> None:
    # 20 loops at 1 s a publish: the queue grows past the 10 s client timeout.
    model = replace(QUIET, costs_us=costs(publish=1_000_000.0))
    text = FLOOD.replace("duration_s = 10", "duration_s = 30")
    run_dir = simulate(tmp_path, text, model)
    outcomes = [r["outcome"] for r in events(run_dir) if r["op"] == "publish"]
    assert "timeout" in outcomes
    # The core never idled: every queued publish ran, answered or not.
    assert stats(run_dir)["i0"]["process"]["cpu_s"] == pytest.approx(32.0, abs=1.01)


def test_a_full_backlog_drops_syns_and_the_kernel_retries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 upgrades at once, 10 ms each, a backlog of 10: one in service and ten queued
    # get in; the kernel resends the others' SYNs after 1, 3 and 7 s (all at once, as
    # a real herd does), ~11 more get in each time, and the rest time out at 10 s.
    monkeypatch.setattr("sim.virtual.run.SPAWN_GAP_S", 0.0)  # all 100 at the same instant
    model = replace(QUIET, backlog=10, costs_us=costs(connect_key=10_000.0))
    text = FLOOD.replace("spawn_rate = 1000", "spawn_rate = 100000").replace(
        "users = 20", "users = 100").replace("Publisher", "Subscriber")
    connects = [r for r in events(simulate(tmp_path, text, model)) if r["op"] == "connect"]
    assert len(connects) == 100
    ok = sorted(r["latency_ms"] for r in connects if r["outcome"] == "ok")
    waves = [sum(1 for x in ok if start <= x < start + 200) for start in (0, 1000, 3000, 7000)]
    assert waves == [11, 11, 11, 11] and len(ok) == 44
    assert sum(r["outcome"] == "timeout" for r in connects) == 56
    # Every connection the server welcomed was closed by the end: none leaked.
    assert stats(tmp_path / "run")["i0"]["totals"]["connections"]["now"] == 0


SUBS = """
[server]
seed = 6
{server}
[swarm]
users = 41
spawn_rate = 1000
duration_s = 20
[swarm.classes.Subscriber]
weight = 40
[swarm.classes.Chatter]
fixed_count = 1
{faults}
"""


def test_bulk_deliveries_count_exactly_and_arrive_after_their_write(tmp_path: Path) -> None:
    model = replace(QUIET, costs_us=costs(publish=30.0, delivery=10.0),
                    network=Network(median_ms=0.2, sigma=0.5))
    run_dir = simulate(tmp_path, SUBS.format(server="", faults=""), model)
    rows = events(run_dir)
    delivered = [r for r in rows if r["op"] == "deliver"]
    published = [r for r in rows if r["op"] == "publish" and r["outcome"] == "ok"]
    assert len(delivered) == 40 * len(published) > 0
    assert stats(run_dir)["i0"]["totals"]["messages"]["delivered"] == len(delivered)
    # The 40th recipient's frame leaves 30 + 40 * 10 us after the publish is read.
    assert min(r["latency_ms"] for r in delivered) >= 0.2 * 0 + 0.04
    assert max(r["latency_ms"] for r in delivered) >= 0.43


def test_a_deploy_closes_1001_and_listeners_come_back(tmp_path: Path) -> None:
    faults = '[[faults]]\nkind = "deploy"\nat_s = 8\nfraction = 1.0\nretry_after_ms = 500\n'
    run_dir = simulate(tmp_path, SUBS.format(server="", faults=faults), QUIET)
    rows = events(run_dir)
    closes = [r for r in rows if r["op"] == "close"]
    assert len(closes) == 41 and {r["outcome"] for r in closes} == {"close 1001"}
    connects = [r for r in rows if r["op"] == "connect" and r["outcome"] == "ok"]
    back = [r for r in connects if r["t"] > ORIGIN + 8]
    assert len(back) == 40  # the listeners; the ticker has no reconnect in its script
    # Noticed at the next idle tick (within 1 s), back after retryAfterMs.
    assert all(8 + 0.5 <= r["t"] - ORIGIN < 8 + 1.5 + 0.01 for r in back)
    server = stats(run_dir)["i0"]["totals"]["closes"]
    assert server["1001"] == 41


BUSY_DEPLOY = """
[server]
seed = 4
[limits]
rate_per_second = 1000000.0
burst = 1000000.0
[swarm]
users = 6
spawn_rate = 1000
duration_s = 8
[swarm.classes.Publisher]
fixed_count = 4
[swarm.classes.Subscriber]
weight = 1
[[faults]]
kind = "deploy"
at_s = 5
fraction = 1.0
retry_after_ms = 500
channels = "room/*"
"""


@pytest.mark.timeout(60)
def test_a_deploy_on_a_backlogged_core_fires_once(tmp_path: Path) -> None:
    # Four closed loops of 1 ms publishes keep the core's queue full, so the strike
    # waits in it behind jobs the queue ran ahead. It once found its own fault still
    # due, queued another strike at the same instant, and never let time move on.
    model = replace(QUIET, costs_us=costs(publish=1000.0))
    run_dir = simulate(tmp_path, BUSY_DEPLOY, model)
    rows = events(run_dir)
    closes = [r for r in rows if r["op"] == "close"]
    assert [r["outcome"] for r in closes] == ["close 1001", "close 1001"]
    assert all(5 <= r["t"] - ORIGIN < 5.1 for r in closes)
    assert stats(run_dir)["i0"]["totals"]["closes"] == {"1001": 2}


def test_two_instances_deliver_across_the_redis_hop(tmp_path: Path) -> None:
    model = replace(QUIET, redis=RedisModel(send_us=5.0, receive_us=5.0, latency_ms=1.0))
    text = SUBS.format(server='backend = "redis"\ninstances = 2', faults="")
    run_dir = simulate(tmp_path, text, model)
    rows = events(run_dir)
    delivered = [r for r in rows if r["op"] == "deliver"]
    published = [r for r in rows if r["op"] == "publish" and r["outcome"] == "ok"]
    assert len(delivered) == 40 * len(published) > 0
    lat = sorted(r["latency_ms"] for r in delivered)
    # As RedisBackend does, the publisher's instance awaits the quota charge's round
    # trip to Redis (2 ms) and the PUBLISH's (2 ms) before its own listeners get the
    # message; the other instance's get it from Redis as that reply comes back. So
    # both halves: 0.1 ms out, 4 ms of Redis, 0.1 ms back (and microseconds of CPU).
    assert lat[0] >= 4.2 - 1e-3 and lat[-1] <= 4.2 + 0.05
    acks = [r["latency_ms"] for r in published]
    assert min(acks) >= 4.2 - 1e-3 and max(acks) <= 4.2 + 0.05
    s = stats(run_dir)
    assert sum(x["totals"]["messages"]["delivered"] for x in s.values()) == len(delivered)


def test_a_redis_blip_fails_publishes_with_backend_error(tmp_path: Path) -> None:
    text = SUBS.format(server='backend = "redis"\ninstances = 2', faults="").replace(
        "[server]", "[scenario]\nredis_blips = [{ at_s = 5, down_s = 3 }]\n[server]")
    rows = events(simulate(tmp_path, text, QUIET))
    failed = [r for r in rows if r["op"] == "publish" and r["outcome"] == "backend_error"]
    # The ticker publishes at 1, 2, ... s of scenario time. Redis goes down at 5.5 s
    # (rtmsim run's sampler acts half a second late), is back at 9.0 s (3 s, the same
    # lag and half a second to start) and the link at 9.25 s: 6, 7, 8 and 9 fail.
    assert [round(r["t"] - ORIGIN) for r in failed] == [6, 7, 8, 9]


def test_the_same_seed_gives_the_same_run(tmp_path: Path) -> None:
    model = replace(QUIET, network=Network(median_ms=0.2, sigma=0.8),
                    costs_us=costs(publish=30.0, delivery=3.0, connect_key=100.0))
    text = SUBS.format(server="", faults="")
    a = events(simulate(tmp_path, text, model, "a"))
    b = events(simulate(tmp_path, text, model, "b"))
    assert a == b and len(a) > 100


SLOW_SOAK = """
[server]
seed = 6
[swarm]
users = 40
spawn_rate = 10
duration_s = 12
shape = { kind = "soak", users = 40, spawn_rate = 10, duration_s = 12 }
[swarm.classes.Subscriber]
fixed_count = 39
[swarm.classes.Chatter]
fixed_count = 1
"""


def test_a_shape_slower_than_its_target_spawns_each_user_once(tmp_path: Path) -> None:
    # The shape asks for 40 users each second and they come 10 a second: each tick
    # once added its shortfall again on top of the spawns still on their way, and the
    # 41st spawn found every class at its fixed_count (StopIteration).
    run_dir = simulate(tmp_path, SLOW_SOAK, QUIET)
    connects = sorted(r["t"] - ORIGIN for r in events(run_dir) if r["op"] == "connect")
    assert len(connects) == 40
    # Locust's pace: 10 at the start of each second, for four seconds.
    assert [sum(1 for t in connects if s <= t < s + 1) for s in range(5)] == [10] * 4 + [0]
