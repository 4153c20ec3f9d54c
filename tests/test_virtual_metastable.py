"""Timeouts retried, a stalled instance, and Bronson et al.'s metastable retry storm on
the real server core (`scenarios/metastable-retries.toml`, HotOS 2021 section 2.1)."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_virtual_engine import FLOOD, ORIGIN, QUIET, costs, events, simulate, stats

from loadtests.eventload import load_client_events
from sim.scenario import load_scenario
from sim.virtual.model import scenario_model
from sim.virtual.run import VirtualRun

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "metastable-retries.toml"


def test_a_pause_holds_every_reply_and_costs_no_cpu(tmp_path: Path) -> None:
    # 20 loops on a 200 us publish; the loop stalls for 2 s at scenario 4 s: nothing
    # is acked inside the stall, the first ack after it is ~2 s late, and the core's
    # CPU is the publishes' alone.
    text = FLOOD + '[[faults]]\nkind = "pause"\nat_s = 4\nseconds = 2\n'
    model = replace(QUIET, costs_us=costs(publish=200.0))
    run_dir = simulate(tmp_path, text, model)
    acks = [r for r in events(run_dir) if r["op"] == "publish" and r["outcome"] == "ok"]
    inside = [r for r in acks if ORIGIN + 4.01 <= r["t"] < ORIGIN + 5.99]
    assert inside == []
    assert max(r["latency_ms"] for r in acks) == pytest.approx(2000, abs=10)
    assert stats(run_dir)["i0"]["process"]["cpu_s"] == pytest.approx(len(acks) * 200e-6,
                                                                     rel=0.01)


def per_second(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    origin = json.loads((run_dir / "run.json").read_text())["origin"]
    df = load_client_events(run_dir)
    pub = df[df.op == "publish"]
    sec = (pub.t - origin).astype(int).to_numpy()
    n = int(sec.max()) + 1
    return (np.bincount(sec, minlength=n),
            np.bincount(sec[(pub.outcome == "ok").to_numpy()], minlength=n))


def run_scenario(tmp_path: Path, users: int, duration: float) -> Path:
    scenario = load_scenario(SCENARIO).with_overrides(users=users, duration_s=duration)
    model = scenario_model(scenario.config.extra.get("model"), scenario.path)
    run_dir = tmp_path / f"u{users}"
    assert VirtualRun(scenario, run_dir, model, out=io.StringIO(),
                      log_deliveries=False).run() == "complete"
    return run_dir


def test_above_half_capacity_the_retries_keep_the_server_overloaded(tmp_path: Path) -> None:
    attempts, ok = per_second(run_scenario(tmp_path, 2800, 100))
    before, after = slice(10, 30), slice(50, 100)
    assert attempts[before].mean() == pytest.approx(280, rel=0.02)
    assert ok[before].mean() == pytest.approx(280, rel=0.02)
    # Long after the 10 s stall (30-40 s): twice the offered load, no goodput.
    assert attempts[after].mean() == pytest.approx(560, rel=0.02)
    assert ok[after].sum() == 0


def test_below_half_capacity_it_drains_and_recovers(tmp_path: Path) -> None:
    attempts, ok = per_second(run_scenario(tmp_path, 1400, 220))
    # Stuck at first (280 attempts/s, none answered in time), then the backlog drains
    # at 300 - 280 = 20/s and goodput comes back, about two minutes after the stall.
    assert ok[50:100].sum() == 0 and attempts[50:100].mean() == pytest.approx(280, rel=0.02)
    assert ok[200:220].mean() == pytest.approx(140, rel=0.05)
    assert attempts[200:220].mean() == pytest.approx(140, rel=0.05)
