"""Mirrored instances (`rtmsim simulate --simulate-instances`): M of a deployment's
alike instances in full stand for all N. What is cut, what is refused (one line), the
Redis hop's copies, and a small deploy storm whose figures agree with the same
deployment run in full."""

from __future__ import annotations

import json
import random
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sim import rundir
from sim.cli import main
from sim.scenario import parse_scenario
from sim.virtual import cluster
from sim.virtual.engine import LATENCY_BOUNDS_MS
from sim.virtual.mirror import MirrorError, mirrored
from sim.virtual.model import load_model
from sim.virtual.run import VirtualRun
from sim.virtual.scale import hist_percentiles

STORM = """
[scenario]
name = "mirror-storm"

[server]
seed = 5
backend = "redis"
instances = 8

[[apps]]
id = "app_demo"
[apps.plan]
name = "t"
max_concurrent_connections = 8000
max_messages_per_period = 5000000
balance = 80.0
[[apps.keys]]
id = "pk_live_demo"
actions = {actions}

[swarm]
model = "open"
users = 8000
spawn_rate = 2000
duration_s = 70

[swarm.classes.Subscriber]
weight = {sub_weight}
rate = 0.2
subscriptions = 1
wildcard_fraction = 0.0
channels = ["room/{{1..100}}"]

[swarm.classes.Publisher]
weight = 1
rate = 1.0
channels = ["room/{{1..100}}"]

[[faults]]
kind = "deploy"
at_s = 25
fraction = 0.1
retry_after_ms = 2000

[[faults]]
kind = "deploy"
at_s = 45
fraction = 0.1
retry_after_ms = 2000
"""


def storm(actions: str = '["subscribe", "publish"]', sub_weight: int = 20, swarm: str = ""
          ) -> Any:
    text = STORM.format(actions=actions, sub_weight=sub_weight).replace(
        'model = "open"\n', f'model = "open"\n{swarm}')
    return parse_scenario(tomllib.loads(text), text)


def test_the_scenario_is_cut_to_the_simulated_instances_share() -> None:
    scenario, mirror = mirrored(storm(), 2)
    assert (mirror.instances, mirror.simulated, mirror.factor) == (8, 2, 4)
    assert scenario.config.server.instances == 2
    assert scenario.swarm.users == 2000 and scenario.swarm.spawn_rate == 500
    plan = scenario.config.apps[0].plan
    assert plan.max_concurrent_connections == 2000
    assert plan.max_messages_per_period == 1250000 and plan.balance == 20.0
    assert scenario.config.limits == storm().config.limits  # per connection: as it was
    same, whole = mirrored(storm(), 8)
    assert whole.factor == 1 and same.swarm.users == 8000


@pytest.mark.parametrize(("scenario", "simulate", "message"), [
    (storm(), 3, "must divide the scenario's 8 instance(s), got 3"),
    (storm(), 9, "must divide"),
    (storm(actions='["subscribe", "publish", "presence"]'), 2, "allows presence"),
    (storm(actions='["subscribe", "publish", "send"]'), 2, "allows send"),
    # one Publisher in 80 users, 8 instances: 94 of the 100 Publishers on one instance
    (storm(sub_weight=79), 2, "the instances are not alike: of 8,000 users on 8 "
                              "instances, instance 0 holds 94 Publisher users, another 0"),
    (storm(swarm='shape = "spike"\n'), 2, "the scenario's shape (spike)"),
])
def test_what_cannot_be_mirrored_is_refused(scenario: Any, simulate: int,
                                            message: str) -> None:
    with pytest.raises(MirrorError) as info:
        mirrored(scenario, simulate)
    text = str(info.value)
    assert "\n" not in text and text.startswith("--simulate-instances: ")
    assert message in text


class _Instance:
    def __init__(self, cursor: float) -> None:
        self.cursor = cursor


class _Engine:
    """What `VirtualRedis.hop` asks of the engine: the model and a queue of calls."""

    def __init__(self) -> None:
        self.model = load_model()
        self.env = self
        self.now = 0.0
        self.calls: list[tuple[float, int, Any]] = []

    def at(self, t: float, fn: Any) -> None:
        self.calls.append((t, len(self.calls), fn))

    def run(self) -> None:
        while self.calls:
            self.calls.sort(key=lambda c: c[:2])
            t, _, fn = self.calls.pop(0)
            self.now = t
            fn()


def test_a_hop_under_mirror_reaches_every_instance_the_mirrors_would(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A message from instance 0 of 3 simulated, each standing for 4: 4 times on each
    other instance, 3 times on its own, the copies spread over `MIRROR_SPREAD_S` and
    counted from their own publish, and redis-server handles 4 messages."""
    arrived: list[tuple[float, list[Any], float]] = []
    engine = _Engine()
    monkeypatch.setattr(cluster, "_arrived", lambda targets, job, shift: arrived.append(
        (engine.now, targets, shift)))
    redis = cluster.VirtualRedis(engine)  # type: ignore[arg-type]
    redis.instances = [_Instance(1.0), _Instance(1.0), _Instance(1.0)]  # type: ignore[list-item]
    redis.rng = random.Random(1)
    back = redis.hop(redis.instances[0], "job", copies=4)  # type: ignore[arg-type]
    engine.run()
    got = [sum(targets.count(i) for _, targets, _ in arrived) for i in redis.instances]
    assert got == [3, 4, 4]
    latency = engine.model.redis.latency_ms / 1000
    original = [a for a in arrived if a[2] == 0.0]
    assert len(original) == 1 and original[0][1] == redis.instances[1:]
    assert back == pytest.approx(original[0][0])  # the reply, as the others get it
    for t, _, shift in arrived:
        assert 0 <= shift < cluster.MIRROR_SPREAD_S
        assert t >= 1.0 + shift + 2 * latency  # a copy leaves when its mirror publishes
    assert len({shift for _, _, shift in arrived}) == 4
    assert redis.busy_s == pytest.approx(4 * engine.model.redis.server_us / 1e6)


def run_storm(tmp: Path, simulate: int | None) -> dict[str, Any]:
    scenario, mirror = storm(), None
    if simulate is not None:
        scenario, mirror = mirrored(scenario, simulate)
    run = VirtualRun(scenario, tmp, load_model(), progress=False, log_deliveries=False,
                     epoch=1_700_000_000.0, mirror=mirror)
    assert run.run() == "complete"
    f = 1 if mirror is None else mirror.factor
    stats = json.loads((tmp / rundir.SERVER_STATS).read_text())
    cpu = [i.cpu_s() for i in run.engine.instances]
    return {"connects": f * sum(s["totals"]["connections"]["total"] for s in stats.values()),
            "closes": f * sum(s["totals"]["closes"].get("1001", 0) for s in stats.values()),
            "deliveries": f * run.engine.deliveries, "cpu_mean": sum(cpu) / len(cpu),
            **hist_percentiles(run.engine.latency_hist, (50, 99))}


def test_a_mirrored_deploy_storm_agrees_with_the_deployment_in_full(tmp_path: Path) -> None:
    """Two of 8 instances in full against all 8: the deployment's counts, the
    instances' CPU and the delivery latency agree (bounds of `bench simulate
    --compare`, the counts exact where the run makes them so)."""
    full = run_storm(tmp_path / "full", None)
    half = run_storm(tmp_path / "mirror", 2)
    assert full["connects"] == half["connects"] == 8000 + 8000 // 10 * 2
    assert full["closes"] == half["closes"] == 1600
    assert half["deliveries"] == pytest.approx(full["deliveries"], rel=0.02)
    assert half["cpu_mean"] == pytest.approx(full["cpu_mean"], rel=0.1)
    bins = list(LATENCY_BOUNDS_MS)
    for p in ("p50", "p99"):  # within one bin of the histogram (12%)
        assert abs(bins.index(half[p]) - bins.index(full[p])) <= 1, (p, half[p], full[p])


def test_simulate_instances_on_the_command_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(STORM.format(actions='["subscribe", "publish"]', sub_weight=20)
                        .replace("duration_s = 70", "duration_s = 30"))
    out = tmp_path / "run"
    code = main(["simulate", str(scenario), "--simulate-instances", "2", "--out", str(out),
                 "--no-progress"])
    text = capsys.readouterr().out
    assert code in (0, 1)
    meta = json.loads((out / rundir.RUN).read_text())
    assert meta["mirror"] == {"instances": 8, "simulated": 2, "factor": 4}
    assert meta["users"] == 2000 and meta["instances"] == 2
    assert meta["engine"]["deliveries_logged"] is False  # a copy would read as a duplicate
    assert "mirrored: 2 of 8 instances simulated, each standing for 4" in text
    assert "mirrored: 2 of 8 instances simulated, counts x4" in (out / rundir.REPORT).read_text()
    code = main(["simulate", str(scenario), "--simulate-instances", "3", "--out",
                 str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "must divide" in err
    assert not (tmp_path / "bad").exists()


def _scale_result(simulated: int, p99: float = 178.0, over_100: float = 0.0113,
                  cpu: float = 136.5, recovered: float | None = 8.3) -> dict[str, Any]:
    return {"clients": 1_000_000, "instances": 20, "simulated_instances": simulated,
            "simulated_clients": 50_000 * simulated, "wall_s": 20.0 * simulated,
            "peak_rss_mb": 300, "connects": 2_000_000, "closes": {"1001": 1_000_000},
            "deliveries": 52_646_480, "connects_over_cap_4010": 0,
            "reconnect_peak_per_s": 20_387, "recovered_s_after_last_wave": recovered,
            "delivery_ms": {"p50": 1.26, "p99": p99},
            "delivery_share_over_ms": {"100": over_100, "1000": 0.0017},
            "instance_cpu_s_mean": cpu, "busiest_instance_cpu_s": 136.8}


@pytest.mark.parametrize(("mirrored", "passed", "missed"), [
    # the p99 on a tail's edge is shown, not judged: the share past it is
    (_scale_result(2, p99=89.0, over_100=0.0098), True, None),
    (_scale_result(2, cpu=155.0), False, "instance CPU, mean s"),
    (_scale_result(2, over_100=0.0080), False, "deliveries over 100 ms, %"),
    (_scale_result(2, recovered=None), False, "recovered after last wave, s"),
])
def test_the_mirror_comparison_judges_each_figure_against_its_bound(
        monkeypatch: pytest.MonkeyPatch, mirrored: dict[str, Any], passed: bool,
        missed: str | None) -> None:
    from bench import mirrorcheck  # noqa: PLC0415

    monkeypatch.setattr(mirrorcheck, "simulate_scale", lambda clients, duration, queue, log,
                        simulate=None: _scale_result(20) if simulate is None else mirrored)
    result = mirrorcheck.mirror_compare(1_000_000, 2, 600.0, "heap", lambda _: None)
    assert result["passed"] is passed
    assert [c["figure"] for c in result["checks"] if not c["within"]] == \
        ([missed] if missed else [])
    text = mirrorcheck.mirror_summary(result)
    assert "2 of 20 instances (100,000 clients)" in text
    assert ("MISSED" in text) is not passed
    p99 = next(line for line in text.splitlines() if line.startswith("delivery p99"))
    assert "shown" in p99


def test_compare_needs_the_instances_to_simulate(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.__main__ import main as bench  # noqa: PLC0415

    assert bench(["simulate", "--clients", "1000", "--compare"]) == 2
    err = capsys.readouterr().err
    assert err == "bench: --compare needs --simulate-instances M\n"


def test_a_run_whose_instances_carry_unlike_loads_says_so() -> None:
    """Users go to instances in turn, in class order: one Publisher in 80 users on 8
    instances lands on one of them, and the summary's warnings say so (the alike check
    of mirroring, on any run)."""
    from sim.analysis.summary import uneven_instances  # noqa: PLC0415
    from sim.scenario import run_meta  # noqa: PLC0415

    warned = uneven_instances(run_meta(storm(sub_weight=79)))
    assert warned == ("of 8,000 users on 8 instances, instance 0 holds 94 Publisher users, "
                      "another 0")
    assert uneven_instances(run_meta(storm())) is None  # 47-49 on each
    one = run_meta(storm(sub_weight=79))
    one["instances"] = 1
    assert uneven_instances(one) is None
    assert uneven_instances({**run_meta(storm(sub_weight=79)), "shape": "spike"}) is None
    assert uneven_instances({**run_meta(storm()), "classes": {"Nobody": {}}}) is None
