"""`rtmsim plan`: the workload it builds, the windows it judges, the deployment it finds.

The end-to-end tests run tiny plans in virtual time (tens of clients, seconds of
virtual time) on a model whose publish is made slow on purpose, so that the answer is
known by arithmetic: one instance cannot carry the load, two can.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest

from server.schema import ConfigError
from sim.cli import main
from sim.plan.point import planned_closes, work_shares
from sim.plan.search import _probes, first_guess
from sim.plan.workload import Targets, Timing, plan_mix, point_scenario
from sim.scenario import load_scenario, parse_scenario
from sim.virtual.model import load_model

ROOT = Path(__file__).resolve().parent.parent

TINY = """
[scenario]
name = "tiny"

[server]
seed = 3

[limits]
rate_per_second = 1000.0
burst = 2000.0

[swarm]
users = 30

[swarm.classes.Subscriber]
weight = 2
subscriptions = 1
wildcard_fraction = 0.0
channels = ["room/{1..4}"]

[swarm.classes.Publisher]
weight = 1
rate = 5.0
channels = ["room/{1..4}"]
"""

DEPLOY = """
[[faults]]
kind = "deploy"
at_s = 40
fraction = 0.5
retry_after_ms = 500

[[faults]]
kind = "deploy"
at_s = 50
fraction = 0.5
retry_after_ms = 500

[[faults]]
kind = "latency"
ms = 1
"""

# Publish made 4.5 ms of CPU: 200 publishes/s fill 90% of one core (the limit is
# crossed), 45% of each of two (kept); everything else as calibrated.
SLOW_PUBLISH = """
[model]
name = "slow publish (a test)"
[model.costs_us]
publish = 4500.0
"""


def with_app_plan(plan: str, extra: str = "") -> str:
    """TINY with the demo app on `plan` (lines of [apps.plan]), and `extra` tables."""
    return TINY.replace("[swarm]", f"""[[apps]]
id = "app_demo"
[apps.plan]
{plan}
[[apps.keys]]
id = "pk_live_demo"
{extra}
[swarm]""")


def scenario_file(tmp_path: Path, text: str, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_mix_gives_publishers_the_rate_and_subscribers_the_rest() -> None:
    sc = load_scenario(ROOT / "scenarios" / "capacity-ramp.toml")
    mix = plan_mix(sc, Targets(connections=600, msgs_per_s=999))
    assert mix.counts == {"Publisher": 200, "Subscriber": 400}
    assert mix.publish_rate == pytest.approx(999 / 200)
    assert mix.fanout == 50.0  # 400 subscribers x 1 subscription / 8 channels
    assert plan_mix(sc, Targets(600, 1000, fanout=10)).channels == 40


def test_the_mix_refuses_more_publishers_than_connections() -> None:
    sc = load_scenario(ROOT / "scenarios" / "capacity-ramp.toml")
    with pytest.raises(ConfigError, match="no connections left for subscribers"):
        plan_mix(sc, Targets(connections=100, msgs_per_s=1000))
    with pytest.raises(ConfigError, match="--fanout must be >= 1"):
        plan_mix(sc, Targets(100, 10, fanout=0.5))


def test_a_scenario_without_publishers_cannot_be_planned() -> None:
    sc = load_scenario(ROOT / "scenarios" / "deploy-storm.toml")
    with pytest.raises(ConfigError, match="needs a Publisher class"):
        plan_mix(sc, Targets(100, 10))


def test_a_point_shifts_the_storms_after_the_steady_window(tmp_path: Path) -> None:
    sc = load_scenario(scenario_file(tmp_path, TINY + DEPLOY))
    mix = plan_mix(sc, Targets(30, 50))
    point, windows = point_scenario(sc, mix, instances=3, load=2.0,
                                    timing=Timing(steady_s=20, recover_s=7), client_s=1e-3)
    data = tomllib.loads(point.source)
    # 60 clients at most 3 x 0.5 / 1 ms = 1,500 a second: spawned in 1 s, settled in 5.
    assert windows.steady == (6.0, 26.0)
    assert windows.storm == (26.0, 36.0)  # the deploys keep their 10 s spacing
    assert windows.duration_s == 43.0
    assert [f.get("at_s") for f in data["faults"]] == [26.0, 36.0, None]
    assert "start_s" not in data["faults"][2]  # a condition of the whole run stays put
    assert data["server"] == {"seed": 3, "instances": 3, "backend": "redis"}
    classes = data["swarm"]["classes"]
    assert classes["Publisher"]["fixed_count"] == 20  # 2 x 50 msgs/s at 5 a publisher
    assert classes["Subscriber"]["fixed_count"] == 40
    # 20 subscribers a channel at the scenario's fan-out (20 x 1 / 4 = 5): 8 channels.
    assert classes["Subscriber"]["channels"] == ["plan/{1..8}"]
    assert point.swarm.model == "open"
    assert parse_scenario(data, point.source).swarm.users == 60  # replayable as it is
    assert planned_closes(point) == frozenset({"close 1001"})


def test_the_first_guess_follows_the_models_arithmetic(tmp_path: Path) -> None:
    sc = load_scenario(scenario_file(tmp_path, TINY))
    slow = load_model(overrides=tomllib.loads(SLOW_PUBLISH)["model"])
    assert first_guess(plan_mix(sc, Targets(60, 200)), slow, 8) == 2
    assert first_guess(plan_mix(sc, Targets(60, 20)), slow, 8) == 1
    # Half of 60,000 clients reconnecting at once: 30,000 x (249 + 65 us) = 9.4 s of
    # CPU, under 2 s a wave on 5 instances (2.4 s on 4).
    many = plan_mix(sc, Targets(60_000, 20))
    model = load_model(overrides={"costs_us": {"connect_key": 249.0, "disconnect": 65.0}})
    assert first_guess(many, model, 32) == 1
    assert first_guess(many, model, 32, waves=(0.5, 0.1)) == 5


def test_probes_grow_then_bisect() -> None:
    assert _probes(0, None, 32, 2) == [1, 2]
    assert _probes(1, None, 32, 2) == [2, 3]
    assert _probes(10, None, 12, 2) == [12]
    assert _probes(3, 9, 32, 2) == [5, 7]
    assert _probes(3, 5, 32, 2) == [4]


def test_plan_finds_two_instances_where_one_runs_out(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = scenario_file(tmp_path, TINY + DEPLOY + SLOW_PUBLISH)
    out = tmp_path / "plan"
    code = main(["plan", str(path), "--connections", "60", "--msgs-per-s", "200",
                 "--steady-s", "10", "--recover-s", "5", "--loads", "1", "--jobs", "1",
                 "--max-instances", "4", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    plan = json.loads((out / "plan.json").read_text())
    answer = plan["answer"]
    assert answer["instances"] == 2
    assert answer["backend"] == "redis"
    one = next(p for p in plan["points"] if p["instances"] == 1 and p["load"] == 1.0)
    assert not one["passed"]
    assert one["steady"]["resource"]["kind"] == "messages"
    assert one["steady"]["resource"]["share"] >= 0.85
    two = next(p for p in plan["points"] if p["instances"] == 2 and p["load"] == 1.0)
    assert two["passed"] and two["storm"] is not None
    assert two["storm"]["errors_by_code"].get("close 1001") is None  # the storm itself
    # The work the counters account for is what the core did, hop included (each
    # instance sends half the publishes and receives the other half).
    steady = two["steady"]["resource"]
    assert sum(steady["parts"].values()) == pytest.approx(steady["share"], abs=0.02)
    storm = two["storm"]["resource"]
    assert sum(storm["parts"].values()) == pytest.approx(storm["share"], abs=0.02)
    redis = load_model().redis
    assert steady["parts"]["redis_hop"] == pytest.approx(
        100 * (redis.send_us + redis.receive_us) / 1e6, rel=0.05)
    # 200 publishes/s accepted in steady state, split over the two instances.
    assert two["steady"]["msgs_per_s"] == pytest.approx(200, rel=0.05)
    # The headroom was pushed until a limit was crossed: two instances run out too.
    assert answer["headroom_load"] is not None and answer["headroom_load"] >= 1.0
    assert answer["binding"]["at_load"] > answer["headroom_load"]
    assert math.isclose(sum(1 for p in plan["points"] if p["instances"] == 2
                            and not p["passed"]), 1)
    assert "answer: 2 instance(s)" in printed
    html = (out / "plan.html").read_text()
    assert "data:image/png;base64," in html and "slow publish (a test)" in html
    assert (out / "points" / "k2-x1" / "run.json").exists()


def test_a_deploys_second_is_charged_its_disconnects() -> None:
    # A wave's second: 2,100 connections end and 100 open (the rest come back after
    # retryAfterMs), so the open ones fall by 2,000: 2,100 disconnects, 100 connects.
    model = load_model()
    per = {"i0": {"connections_total": 100.0, "connections_now": -2000.0,
                  "published": 0.0, "delivered": 0.0}}
    connects = work_shares(per, 1.0, model, clustered=False)["i0"]["connects"]
    cost = model.costs_us
    assert connects == pytest.approx((100 * cost["connect_key"]
                                      + 2100 * cost["disconnect"]) / 1e6)


def test_plan_stops_when_redis_server_is_what_binds(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # One instance runs out (4.5 ms a publish); behind Redis, redis-server at 5 ms a
    # message carries 200 publishes/s at 100% of its core: more instances cannot help.
    slow_redis = SLOW_PUBLISH + "[model.redis]\nserver_us = 5000.0\n"
    path = scenario_file(tmp_path, TINY + slow_redis)
    out = tmp_path / "plan"
    code = main(["plan", str(path), "--connections", "60", "--msgs-per-s", "200",
                 "--steady-s", "10", "--loads", "1", "--jobs", "1", "--max-instances", "4",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1, printed
    plan = json.loads((out / "plan.json").read_text())
    assert plan["answer"]["instances"] is None
    assert "redis-server" in plan["answer"]["stopped"]
    behind = [p for p in plan["points"] if p["instances"] > 1]
    assert len(behind) == 1  # no more instances tried after it
    steady = behind[0]["steady"]["resource"]
    assert steady["kind"] == "redis_server"
    assert steady["share"] == pytest.approx(200 * 5000e-6, rel=0.05)


def test_plan_stops_when_the_apps_plan_is_what_binds(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    capped = with_app_plan("max_concurrent_connections = 40")
    path = scenario_file(tmp_path, capped)
    out = tmp_path / "plan"
    code = main(["plan", str(path), "--connections", "60", "--msgs-per-s", "20",
                 "--steady-s", "5", "--loads", "1", "--jobs", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 1
    plan = json.loads((out / "plan.json").read_text())
    assert plan["answer"]["instances"] is None
    assert "the app's plan" in plan["answer"]["stopped"]
    assert len(plan["points"]) == 1  # no more instances tried: they cannot help
    assert "no deployment found" in printed


@pytest.mark.parametrize(("args", "message"), [
    (["--msgs-per-s", "10"], "--connections and --msgs-per-s are required"),
    (["--connections", "10", "--msgs-per-s", "1", "--loads", "a,b"], "--loads: not a list"),
    (["--connections", "10", "--msgs-per-s", "1", "--loads", "0"], "--loads: must be"),
    (["--connections", "10", "--msgs-per-s", "1", "--p99-ms", "0"], "--p99-ms: out of range"),
    (["--connections", "0", "--msgs-per-s", "1"], "--connections must be >= 1"),
])
def test_bad_plan_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    args: list[str], message: str) -> None:
    path = scenario_file(tmp_path, TINY)
    assert main(["plan", str(path), *args, "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtmsim: ") and message in err and err.count("\n") == 1


def test_a_publish_due_while_its_client_was_away_counts_from_the_reconnect() -> None:
    import pandas as pd  # noqa: PLC0415

    from sim.analysis import connected_latency_ms  # noqa: PLC0415

    requests = pd.DataFrame({
        "user": ["a", "a", "b", "b"], "op": ["connect", "connect", "connect", "publish"],
        "outcome": ["ok", "ok", "ok", "ok"], "t": [1.0, 10.0, 1.0, 5.0],
        "latency_ms": [1.0, 1.0, 1.0, 50.0]})
    publishes = pd.DataFrame({"user": ["a", "b"], "op": ["publish", "publish"],
                              "t": [12.0, 5.0], "latency_ms": [3000.0, 50.0]},
                             index=[7, 3])
    # a meant to publish at 9 s, was back at 10 s and acked at 12 s: 2 s are the
    # service's; b was connected all along.
    got = connected_latency_ms(requests, publishes)
    assert list(got.index) == [3, 7]
    assert got.tolist() == pytest.approx([50.0, 2000.0])


def test_plan_period_alone_writes_the_projection(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    capped = with_app_plan("max_concurrent_connections = 2\nperiod_seconds = 86400", '''
[traffic]
clients = 3
sessions_per_day = 1
session_min = 1400
msgs_per_session = 4
''')
    path = scenario_file(tmp_path, capped)
    out = tmp_path / "plan"
    assert main(["plan", str(path), "--period", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    period = json.loads((out / "period.json").read_text())
    # Three clients, one session of 23 h 20 min a day each, a cap of two: all three
    # overlap, so the ledger admits two and refuses the third (4010), which sends nothing.
    assert period["connections"]["refused"] == 1
    assert period["usage"]["peakConcurrent"] == 2
    assert 0 < period["usage"]["messagesUsed"] <= 8  # 4 a session; a tail may pass the end
    assert "no 4010" not in printed
    assert not (out / "plan.json").exists()  # no targets: no capacity sweep
    assert main(["plan", str(path), "--period", "--clients", "0",
                 "--out", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtmsim: --clients") and err.count("\n") == 1


def test_a_plan_resumes_from_its_points(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = scenario_file(tmp_path, TINY + SLOW_PUBLISH)
    out = tmp_path / "plan"
    args = ["plan", str(path), "--connections", "60", "--msgs-per-s", "200", "--steady-s",
            "5", "--loads", "1", "--max-load", "1", "--jobs", "1", "--out", str(out)]
    assert main(args) == 0
    first = json.loads((out / "plan.json").read_text())
    capsys.readouterr()
    assert main(args) == 2  # the directory is taken
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert f"resuming with {len(first['points'])} point(s)" in printed
    assert " at 1x: " not in printed  # nothing simulated again
    again = json.loads((out / "plan.json").read_text())
    assert again["answer"] == first["answer"]
    assert main([*args[:5], "201", *args[6:], "--resume"]) == 2
    assert "planned with another targets" in capsys.readouterr().err
    # Killed before its plan.json: the complete run directories are measured again,
    # not simulated again; one cut short is simulated afresh.
    (out / "plan.json").unlink()
    kept = (out / "points" / "k1-x1" / "run.json").read_text()
    cut = out / "points" / "k2-x1" / "run.json"
    cut.write_text(cut.read_text().replace('"status": "complete"', '"status": "running"'))
    assert main([*args, "--resume"]) == 0
    assert (out / "points" / "k1-x1" / "run.json").read_text() == kept
    assert '"status": "complete"' in cut.read_text()
    assert json.loads((out / "plan.json").read_text())["answer"] == first["answer"]


def test_the_spawn_leaves_room_for_the_steady_load(tmp_path: Path) -> None:
    sc = load_scenario(scenario_file(tmp_path, TINY))
    mix = plan_mix(sc, Targets(3000, 100))
    timing = Timing()
    # 3,000 clients at 1 ms each: half a core spawns 500 a second (6 s); with the
    # steady load at 80% of the core, only the 10% left under 90% (100 a second: 30 s).
    _, idle = point_scenario(sc, mix, instances=1, load=1.0, timing=timing, client_s=1e-3)
    _, busy = point_scenario(sc, mix, instances=1, load=1.0, timing=timing, client_s=1e-3,
                             busy_share=0.8)
    assert idle.steady[0] == 6 + timing.settle_s
    assert busy.steady[0] == 30 + timing.settle_s
