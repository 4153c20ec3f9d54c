"""The Redis hop in virtual time: the sender's and the receivers' CPU apart,
redis-server's own core, and one machine (`colocated`) where redis-server and the load
process take turns on the instances' cores.

Each expected figure follows from the model's arithmetic: two runs that differ in one
cost differ by that cost times a count the run reports.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_virtual_engine import BEHAVIOURS, EPOCH, QUIET, SUBS, events, scenario, stats

from sim.virtual.model import LoadGenerator, RedisModel, load_model
from sim.virtual.run import VirtualRun

THREE = SUBS.format(server='backend = "redis"\ninstances = 3', faults="")


def simulate(tmp_path: Path, name: str, redis: RedisModel, *, colocated: bool = False,
             load_generator: bool | str = False, raw: LoadGenerator | None = None) -> Path:
    model = replace(QUIET, redis=redis, colocated=colocated,
                    raw_client=raw or LoadGenerator())
    run_dir = tmp_path / name
    status = VirtualRun(scenario(THREE), run_dir, model, out=io.StringIO(), epoch=EPOCH,
                        behaviours=BEHAVIOURS, load_generator=load_generator).run()
    assert status == "complete"
    return run_dir


def cpu(run_dir: Path) -> dict[str, float]:
    return {name: s["process"]["cpu_s"] for name, s in stats(run_dir).items()}


def host(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text())["engine"]["host"]


def test_the_sender_pays_send_us_and_each_other_instance_receive_us(tmp_path: Path) -> None:
    base = simulate(tmp_path, "a", RedisModel(send_us=100.0, receive_us=30.0))
    more_send = simulate(tmp_path, "b", RedisModel(send_us=300.0, receive_us=30.0))
    more_receive = simulate(tmp_path, "c", RedisModel(send_us=100.0, receive_us=80.0))
    published = {n: s["totals"]["messages"]["published"] for n, s in stats(base).items()}
    sender = max(published, key=published.__getitem__)
    assert published[sender] > 10 and sum(published.values()) == published[sender]
    # +200 us a publish on the sender's core only.
    for name, c in cpu(more_send).items():
        extra = 200e-6 * published[name]
        assert c - cpu(base)[name] == pytest.approx(extra, abs=2e-6)
    # +50 us a message received: every instance receives what the others send (the
    # publishes, and presence changes), so each pays for at least the publishes it
    # did not send; the sender pays nothing more for its own.
    for name, c in cpu(more_receive).items():
        received = (c - cpu(base)[name]) / 50e-6
        assert received == pytest.approx(round(received), abs=0.01)
        if name != sender:
            assert received >= published[sender]


def test_redis_server_spends_server_us_a_message_on_its_own_core(tmp_path: Path) -> None:
    fast = simulate(tmp_path, "fast", RedisModel(send_us=0.0, receive_us=0.0,
                                                 latency_ms=1.0))
    slow = simulate(tmp_path, "slow", RedisModel(send_us=0.0, receive_us=0.0,
                                                 server_us=500.0, latency_ms=1.0))
    hops = host(slow)["redis_cpu_s"] / 500e-6
    published = sum(s["totals"]["messages"]["published"] for s in stats(slow).values())
    assert hops == pytest.approx(round(hops)) and hops >= published > 10
    assert host(fast)["redis_cpu_s"] == 0
    assert cpu(slow) == cpu(fast)  # not the instances' CPU

    def slowest(run_dir: Path) -> float:
        return max(r["latency_ms"] for r in events(run_dir) if r["op"] == "deliver")
    # A message through Redis: 0.1 ms to the sender's instance, the quota charge's round
    # trip to Redis (2 ms), 1 ms to Redis and 1 ms on, 0.1 ms to the subscriber; and now
    # 0.5 ms in redis-server too.
    assert slowest(fast) == pytest.approx(0.1 + 2.0 + 2.0 + 0.1, abs=0.02)
    assert slowest(slow) - slowest(fast) == pytest.approx(0.5, abs=0.02)


def test_on_one_machine_redis_server_takes_turns_on_the_instances_cores(
        tmp_path: Path) -> None:
    redis = RedisModel(send_us=0.0, receive_us=0.0, server_us=500.0, latency_ms=1.0)
    apart = simulate(tmp_path, "apart", redis)
    together = simulate(tmp_path, "together", redis, colocated=True)
    lent = host(together)["lent_cpu_s"]
    assert host(together)["redis_cpu_s"] == 0
    assert sum(lent.values()) == pytest.approx(host(apart)["redis_cpu_s"])
    assert cpu(together) == cpu(apart)  # lent work is not the instance's CPU
    assert sum(1 for v in lent.values() if v > 0) >= 2  # the least busy core, in turn


def test_on_one_machine_the_raw_load_process_takes_turns_too(tmp_path: Path) -> None:
    redis = RedisModel(send_us=0.0, receive_us=0.0, latency_ms=1.0)
    raw = LoadGenerator(send_us=40.0, receive_us=20.0, delivery_us=10.0)
    run_dir = simulate(tmp_path, "raw", redis, colocated=True, load_generator="raw",
                       raw=raw)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["engine"]["load_generator"]["kind"] == "raw"
    assert meta["engine"]["load_generator"]["processes"] == 1
    load_cpu = meta["load_generator"]["cpu_s"]
    assert load_cpu > 0
    # run.json rounds the load process to the millisecond
    assert sum(host(run_dir)["lent_cpu_s"].values()) == pytest.approx(load_cpu, abs=5e-4)


def test_a_model_file_reads_the_split_hop_and_the_older_single_figure(tmp_path: Path
                                                                      ) -> None:
    shipped = load_model()
    assert shipped.redis.send_us > shipped.redis.receive_us > 0
    assert shipped.redis.server_us > 0 and not shipped.colocated
    old = load_model(overrides={"redis": {"hop_us": 140.0}})
    assert (old.redis.send_us, old.redis.receive_us) == (140.0, 140.0)
    both = load_model(overrides={"redis": {"hop_us": 140.0, "send_us": 200.0},
                                 "colocated": True,
                                 "raw_client": {"send_us": 9.0, "delivery_us": 4.0}})
    assert (both.redis.send_us, both.redis.receive_us) == (200.0, 140.0)
    assert both.colocated and both.raw_client == replace(shipped.raw_client, send_us=9.0,
                                                         delivery_us=4.0)
