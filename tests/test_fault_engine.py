"""The fault engine's decisions: seeded, scheduled, targeted (PROTOCOL.md section 9)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.config import ConfigError, parse_config
from server.faults import Fail, FaultEngine, FaultSpecError

ORIGIN = 10_000.0


def engine(*specs, seed=1):
    e = FaultEngine(seed, ORIGIN)
    e.load(specs)
    return e


def decisions(e, n=200, op="publish", app="app", channel="c", t=1.0):
    return [e.on_route(op, app, channel, ORIGIN + t) for _ in range(n)]


def test_same_seed_and_scenario_give_the_same_decision_sequence():
    specs = ({"kind": "error", "probability": 0.3},
             {"kind": "latency", "distribution": "exponential", "mean_ms": 5},
             {"kind": "loss", "probability": 0.2})
    a, b = engine(*specs), engine(*specs)
    assert decisions(a) == decisions(b)
    assert [a.deliver_copies("app", "c", ORIGIN) for _ in range(100)] == [
        b.deliver_copies("app", "c", ORIGIN) for _ in range(100)]


def test_another_seed_gives_other_decisions():
    spec = {"kind": "error", "probability": 0.5}
    assert decisions(engine(spec, seed=1)) != decisions(engine(spec, seed=2))


def test_a_fault_added_later_does_not_shift_the_others_decisions():
    alone = engine({"kind": "error", "probability": 0.5})
    both = engine({"kind": "error", "probability": 0.5},
                  {"kind": "error", "probability": 0.5, "apps": ["other"]})
    assert decisions(alone) == decisions(both)


def test_error_probability_is_honoured():
    e = engine({"kind": "error", "code": "internal_error", "probability": 0.25})
    fails = [d[0] for d in decisions(e, n=4000) if d[0] is not None]
    assert 850 < len(fails) < 1150  # 1000 expected; ~7 standard deviations of slack
    assert fails[0] == Fail("internal_error", "injected internal_error (fault f1)")


def test_window_and_targeting():
    e = engine({"kind": "outage", "start_s": 5, "end_s": 10, "apps": ["a"],
                "ops": ["publish"], "channels": "room/*"})
    assert e.on_route("publish", "a", "room/1", ORIGIN + 4.99)[0] is None
    assert e.on_route("publish", "a", "room/1", ORIGIN + 5)[0] == Fail("backend_error",
                                                                      "backend unavailable")
    assert e.on_route("publish", "a", "room/1", ORIGIN + 10)[0] is None
    assert e.on_route("publish", "b", "room/1", ORIGIN + 6)[0] is None
    assert e.on_route("send", "a", None, ORIGIN + 6)[0] is None
    assert e.on_route("publish", "a", "hall", ORIGIN + 6)[0] is None


def test_latency_distributions_and_where():
    fixed = engine({"kind": "latency", "ms": 50, "where": "before_ack"})
    assert fixed.on_route("publish", "a", "c", ORIGIN) == (None, 0.0, 0.05)
    uni = engine({"kind": "latency", "distribution": "uniform", "min_ms": 10, "max_ms": 20})
    delays = [d[1] for d in decisions(uni)]
    assert all(0.01 <= x <= 0.02 for x in delays) and len(set(delays)) > 100
    logn = engine({"kind": "latency", "distribution": "lognormal", "median_ms": 20,
                   "sigma": 0.5})
    delays = sorted(d[1] for d in decisions(logn, n=2001))
    assert delays[1000] == pytest.approx(0.020, rel=0.1)


def test_latency_probability_applies_to_a_fraction():
    e = engine({"kind": "latency", "ms": 50, "probability": 0.2})
    delayed = sum(1 for d in decisions(e, n=5000) if d[1])
    assert 850 < delayed < 1150


def test_loss_and_duplicate_copies():
    assert {engine({"kind": "loss", "probability": 1.0}).deliver_copies("a", "c", ORIGIN)} == {0}
    assert engine({"kind": "duplicate", "probability": 1.0}).deliver_copies("a", "c",
                                                                            ORIGIN) == 2
    assert engine({"kind": "loss", "probability": 0.0}).deliver_copies("a", "c", ORIGIN) == 1


def test_one_shot_strikes_fire_once_at_their_time_and_rearm_with_a_new_origin():
    e = engine({"kind": "deploy", "at_s": 3, "fraction": 0.5, "retry_after_ms": 250})
    assert e.next_strike_in(ORIGIN + 1) == pytest.approx(2)
    assert e.due_strikes(ORIGIN + 2.9) == []
    [strike] = e.due_strikes(ORIGIN + 3)
    assert (strike.action, strike.fraction, strike.code, strike.retry_after_ms) == (
        "going_away", 0.5, 1001, 250)
    assert e.due_strikes(ORIGIN + 4) == []
    assert e.next_strike_in(ORIGIN + 4) is None
    e.set_origin(ORIGIN + 100)
    assert len(e.due_strikes(ORIGIN + 103)) == 1


def test_strike_picks_a_seeded_fraction():
    e = engine({"kind": "close", "close_code": 4020, "fraction": 0.3})
    [strike] = e.due_strikes(ORIGIN)
    picked = e.pick(strike, list(range(100)))
    assert len(picked) == 30
    e2 = engine({"kind": "close", "close_code": 4020, "fraction": 0.3})
    assert e2.pick(e2.due_strikes(ORIGIN)[0], list(range(100))) == picked


def test_buffer_limit_is_the_smallest_active_bound():
    e = engine({"kind": "slow_consumer", "max_buffer_bytes": 5000},
               {"kind": "slow_consumer", "max_buffer_bytes": 1000, "start_s": 10})
    assert e.buffer_limit("a", ORIGIN) == 5000
    assert e.buffer_limit("a", ORIGIN + 10) == 1000


def test_runtime_add_remove_clear_and_ids():
    e = engine({"kind": "error"})
    f = e.add({"kind": "latency", "ms": 1})
    assert f.id == "f2"
    with pytest.raises(FaultSpecError):
        e.add({"kind": "latency"})
    assert e.add({"kind": "outage", "id": "blip"}).id == "blip"
    assert e.add({"kind": "loss", "probability": 0.1}).id == "f3"
    assert e.remove("f2") and not e.remove("f2")
    assert [d["id"] for d in e.describe()] == ["f1", "blip", "f3"]
    assert e.clear() == 3 and not e.has_route_faults


@pytest.mark.parametrize(("spec", "message"), [
    ({"kind": "boom"}, "fault.kind: must be one of close, deploy, disconnect, duplicate, "
                       "error, latency, loss, outage, pause, slow_consumer, got 'boom'"),
    ({"kind": "error", "probability": 1.5}, "fault.probability: must be <= 1, got 1.5"),
    ({"kind": "error", "code": "oops"},
     "fault.code: must be one of backend_error, internal_error, got 'oops'"),
    ({"kind": "latency", "distribution": "zipf"},
     "fault.distribution: must be one of fixed, uniform, exponential, lognormal, got 'zipf'"),
    ({"kind": "latency", "ms": 5, "where": "later"},
     "fault.where: must be one of before_ack, before_delivery, got 'later'"),
    ({"kind": "outage", "start_s": 5, "end_s": 2}, "fault.end_s: must be > start_s (5), got 2"),
    ({"kind": "deploy", "fraction": 0}, "fault.fraction: must be > 0, got 0"),
    ({"kind": "loss"}, "fault.probability: is required"),
    ({"kind": "error", "ops": ["fly"]},
     "fault.ops: 'fly' is not one of subscribe, publish, send, connect, deliver, unsubscribe"),
    ({"kind": "error", "at_s": 3}, "fault.at_s: unknown field for this kind"),
    ({"kind": "close", "close_code": 1005},
     "fault.close_code: must be a whole, sendable close code, got 1005"),
    ([1], "fault: must be a table/object, got list"),
])
def test_invalid_specs_name_the_field(spec, message):
    with pytest.raises(FaultSpecError) as err:
        FaultEngine(0, 0).add(spec)
    assert str(err.value) == message


def test_config_faults_are_validated_at_load_with_their_index():
    with pytest.raises(ConfigError) as err:
        parse_config({"faults": [{"kind": "error"}, {"kind": "latency", "ms": -1}]})
    assert str(err.value) == "faults[1].ms: must be >= 0, got -1"
    cfg = parse_config({"faults": [{"kind": "outage", "start_s": 1, "end_s": 2}]})
    assert tuple(f.to_dict() for f in cfg.faults) == (
        {"kind": "outage", "start_s": 1, "end_s": 2},)



# -- per-recipient draws as geometric gaps (Fault.hit_positions) ----------------------------


def _loss(p: float, seed: int = 7):
    return engine({"kind": "loss", "probability": p}, seed=seed)._deliver[0]


@settings(max_examples=200, deadline=None)
@given(st.floats(0.001, 0.999), st.lists(st.integers(0, 300), min_size=1, max_size=20))
def test_hits_do_not_depend_on_how_recipients_are_batched(p, sizes):
    whole, parts = _loss(p), _loss(p)
    expected = whole.hit_positions(p, sum(sizes))
    got, offset = [], 0
    for n in sizes:
        got += [offset + i for i in parts.hit_positions(p, n)]
        offset += n
    assert got == expected


@pytest.mark.parametrize("p", [0.01, 0.1, 0.5, 0.9])
def test_hits_are_bernoulli_per_recipient(p):
    fault = _loss(p)
    n = 200_000
    hits = fault.hit_positions(p, n)
    sigma = (n * p * (1 - p)) ** 0.5
    assert abs(len(hits) - n * p) < 5 * sigma
    # Memoryless: a recipient right after a hit is hit with the same probability.
    hit = set(hits)
    followers = sum(1 for i in hits if i + 1 in hit)
    assert abs(followers - len(hits) * p) < 5 * (len(hits) * p * (1 - p)) ** 0.5 + 1


def test_certain_and_impossible_hits():
    assert _loss(0.0).hit_positions(0.0, 1000) == []
    assert _loss(1.0).hit_positions(1.0, 5) == [0, 1, 2, 3, 4]


def test_a_loss_wins_over_a_duplicate_and_both_count_their_hits():
    e = engine({"kind": "loss", "probability": 1.0}, {"kind": "duplicate", "probability": 1.0})
    plan = e.delivery_plan(e._deliver, 3)
    assert {i: copies for i, (copies, _) in plan.items()} == {0: 0, 1: 0, 2: 0}
    assert all(len(by) == 2 for _, by in plan.values())
