"""The billing-period projection (`sim.plan.period`): the server's ledger over a traffic
model, batched runs against one call per event, and a real server given the same calls.
"""

from __future__ import annotations

import argparse
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from wsclient import client_pool, close_code, wait_until

from server.billing import Ledger
from server.config import Plan
from server.schema import ConfigError
from sim.cli import main as cli_main
from sim.plan.period import LedgerDriver, period_lines, project_period
from sim.plan.traffic import (
    Traffic,
    add_period_arguments,
    build_schedule,
    parse_traffic,
    period_from_args,
    period_s_from_args,
)
from sim.scenario import parse_scenario

DAY = 86400.0


def scenario(plan: str, *, seed: int = 7, traffic: str = "", apps: str = "") -> Any:
    """A scenario with one app `a` on `plan` (a TOML inline table body)."""
    text = f"""
[server]
seed = {seed}

[[apps]]
id = "a"
plan = {{ {plan} }}
[[apps.keys]]
id = "pk_a"
{apps}
[swarm.classes.Subscriber]
weight = 1
{traffic}
"""
    return parse_scenario(tomllib.loads(text), text)


ALL_DAY = Traffic(clients=3, sessions_per_day=1, session_min=1440, msgs_per_session=4)


def sends_in_period(sc: Any, traffic: Traffic, admitted: set[int]) -> int:
    sched = build_schedule(traffic, period_s=DAY, seed=sc.config.server.seed)
    return sum(len(s.messages) for s in sched.sessions() if s.index in admitted)


# -- exact figures on hand-checkable traffic -------------------------------------------


def test_three_all_day_sessions_on_a_cap_of_two_refuse_the_third_to_start():
    sc = scenario("max_concurrent_connections = 2, max_messages_per_period = 3, "
                  "period_seconds = 86400")
    r = project_period(sc, ALL_DAY, detail=True)
    sessions = list(build_schedule(ALL_DAY, period_s=DAY, seed=7).sessions())
    assert sorted(s.client for s in sessions) == [0, 1, 2]
    refused = r["over_concurrent_limit"]
    assert refused["session_indices"] == [2]  # all-day sessions: nobody leaves
    assert (refused["sessions"], refused["clients"]) == (1, 1)
    assert refused["client_share"] == pytest.approx(1 / 3)
    assert refused["first_at"]["t_s"] == sessions[2].start * 60.0
    assert sum(refused["by_hour"]) == 1
    used = sends_in_period(sc, ALL_DAY, {0, 1})
    assert r["usage"] | {"plan": None} == {
        "appId": "a", "periodStartUnix": 0, "periodEndUnix": 86400, "concurrentNow": 2,
        "peakConcurrent": 2, "messagesUsed": used, "overageMessages": 0,
        "overageConnections": 0, "balance": 0.0, "plan": None}
    assert r["connections"]["peak_at"]["t_s"] == sessions[1].start * 60.0
    assert used > 3
    assert r["messages"]["refused"] == used - 3
    assert r["over_message_quota"]["messages"] == used - 3


def test_overage_and_recharges_are_the_plans_arithmetic():
    """Dyadic prices: the ledger's floats are exact, so the bill is plain arithmetic."""
    sc = scenario("max_concurrent_connections = 1, max_messages_per_period = 3, "
                  "period_seconds = 86400, overages_allowed = true, "
                  "overages_enabled = true, balance = 1.0, overage_price_per_message = 0.25,"
                  " overage_price_per_connection = 0.5, auto_recharge = 2.0")
    traffic = Traffic(clients=3, sessions_per_day=1, session_min=1440, msgs_per_session=9)
    r = project_period(sc, traffic)
    used = sends_in_period(sc, traffic, {0, 1, 2})  # overage admits all three
    cost = (used - 3) * 0.25 + 2 * 0.5
    recharges = max(0, math.ceil((cost - 1.0) / 2.0))
    assert (r["messages"]["overage"], r["connections"]["overage"]) == (used - 3, 2)
    assert r["cost"] == {"overage_charges": cost, "recharges": recharges,
                         "recharged": 2.0 * recharges, "balance_start": 1.0,
                         "balance_end": 1.0 + 2.0 * recharges - cost}
    assert r["over_concurrent_limit"] is None and r["over_message_quota"] is None
    assert r["connections"]["peak_concurrent"] == 3


def test_a_refused_session_sends_nothing_and_fanout_counts_deliveries_only():
    sc = scenario("max_concurrent_connections = 1, period_seconds = 86400")
    traffic = Traffic(clients=3, sessions_per_day=1, session_min=1440, msgs_per_session=4,
                      fanout=25)
    r = project_period(sc, traffic)
    used = sends_in_period(sc, traffic, {0})
    assert r["messages"] == {"attempted": used, "accepted": used, "overage": 0,
                             "refused": 0, "deliveries": used * 25.0}
    assert r["connections"]["refused"] == 2


def test_the_same_seed_gives_the_same_projection_and_another_does_not():
    traffic = Traffic(clients=200, sessions_per_day=1.5, session_min=45,
                      msgs_per_session=3.5, peak_factor=1.7)
    plan = "max_concurrent_connections = 10, max_messages_per_period = 3000"
    runs = [project_period(scenario(plan, seed=s), traffic, period_s=7 * DAY)
            for s in (1, 1, 2)]
    for r in runs:
        r.pop("wall_s")
    assert runs[0] == runs[1]
    assert runs[0]["usage"] != runs[2]["usage"]


# -- batching is the ledger's own answer -----------------------------------------------

PRICES = st.sampled_from([0.0, 0.001, 0.1, 0.25, 0.3, 0.7])


@settings(max_examples=300, deadline=None)
@example(cap=0, quota=0, allowed=False, enabled=False, balance=0.0, per_message=0.0,
         per_connection=0.0, recharge=None,  # a rollover on a run's first call
         ops=[("charge", 1, 3.0), ("charge", 2, 3.0)])
@given(cap=st.integers(0, 6), quota=st.integers(0, 30), allowed=st.booleans(),
       enabled=st.booleans(), balance=st.sampled_from([0.0, 0.3, 1.0, 2.75]),
       per_message=PRICES, per_connection=PRICES,
       recharge=st.sampled_from([None, 0.05, 0.5, 2.0]),
       ops=st.lists(st.tuples(st.sampled_from(["release", "admit", "charge"]),
                              st.integers(0, 60), st.sampled_from([0.0, 0.0, 0.4, 3.0])),
                    max_size=40))
def test_batched_runs_leave_the_ledger_as_one_call_per_event_does(
        cap, quota, allowed, enabled, balance, per_message, per_connection, recharge, ops):
    plan = Plan(max_concurrent_connections=cap, max_messages_per_period=quota,
                period_seconds=5.0, overages_allowed=allowed, overages_enabled=enabled,
                balance=balance, overage_price_per_message=per_message,
                overage_price_per_connection=per_connection, auto_recharge=recharge)
    batched, reference = Ledger.open(plan, 0.0), Ledger.open(plan, 0.0)
    fast, slow = LedgerDriver(batched), LedgerDriver(reference, per_event=True)
    now = 0.0
    for op, n, dt in ops:  # dt: some runs cross a period boundary (a rollover)
        now += dt
        assert getattr(fast, op)(now, n) == getattr(slow, op)(now, n)
    assert batched == reference  # every field


def test_a_long_paid_run_with_recharges_is_the_ledger_call_for_call():
    plan = Plan(max_messages_per_period=0, overages_allowed=True, overages_enabled=True,
                balance=0.5, overage_price_per_message=0.001, auto_recharge=7.0)
    batched, reference = Ledger.open(plan, 0.0), Ledger.open(plan, 0.0)
    n = 536_633
    assert LedgerDriver(batched).charge(1.0, n) == n
    slow = LedgerDriver(reference, per_event=True)
    assert slow.charge(1.0, n) == n
    assert batched == reference
    assert batched.recharges > 30


def test_the_projection_batched_equals_one_ledger_call_per_event():
    plans = ["max_concurrent_connections = 40, max_messages_per_period = 2000",
             "max_concurrent_connections = 40, max_messages_per_period = 2000, "
             "overages_allowed = true, overages_enabled = true, balance = 3.3, "
             "overage_price_per_message = 0.01, overage_price_per_connection = 0.07",
             "max_concurrent_connections = 40, max_messages_per_period = 2000, "
             "overages_allowed = true, overages_enabled = true, balance = 0.3, "
             "overage_price_per_message = 0.001, overage_price_per_connection = 0.07, "
             "auto_recharge = 1.1"]
    traffic = Traffic(clients=300, sessions_per_day=2.4, session_min=90,
                      msgs_per_session=7.3, peak_factor=1.8)
    for plan in plans:
        sc = scenario(plan)
        fast = project_period(sc, traffic, period_s=3 * DAY, detail=True)
        slow = project_period(sc, traffic, period_s=3 * DAY, detail=True, per_event=True)
        assert fast["ledger"]["calls"] < slow["ledger"]["calls"] == slow["ledger"]["events"]
        for r in (fast, slow):
            r.pop("wall_s"), r.pop("ledger")
        assert fast == slow


def test_a_month_of_many_clients_is_few_ledger_calls():
    sc = scenario("max_concurrent_connections = 500, max_messages_per_period = 1000000")
    r = project_period(sc, Traffic(clients=20_000, sessions_per_day=3, session_min=20,
                                   msgs_per_session=12))
    assert r["schedule"]["ticks"] == 43_200
    assert r["ledger"]["calls"] < 5 * 43_200 < r["ledger"]["events"] / 50  # a few a tick
    # events: a connect per session, a close per admitted session that ended, a charge
    # per message used
    assert r["usage"]["messagesUsed"] == r["ledger"]["events"] - 2 * r["schedule"][
        "sessions"] + r["connections"]["refused"] + r["usage"]["concurrentNow"]


# -- the traffic model: its table, its flags -------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"clients": 10, "sessions_per_day": 2, "session_min": 30, "msgs_per_session": 5}


@pytest.mark.parametrize(("change", "message"), [
    ({"sessions_per_day": -1}, "traffic.sessions_per_day: must be > 0, got -1"),
    ({"clients": 0}, "traffic.clients: must be >= 1, got 0"),
    ({"clients": 2.5}, "traffic.clients: must be a whole number, got 2.5"),
    ({"session_min": 2000}, "traffic.session_min: must be <= 1440, got 2000"),
    ({"peak_factor": 3}, "traffic.peak_factor: must be <= 2, got 3"),
    ({"fanout": "x"}, "traffic.fanout: must be a number, got 'x'"),
    ({"sesions_per_day": 1}, "traffic.sesions_per_day: unknown key"),
    ({"msgs_per_session": None}, "traffic.msgs_per_session: is required"),
])
def test_a_bad_traffic_table_names_the_key(change, message):
    table = {k: v for k, v in (GOOD | change).items() if v is not None}
    with pytest.raises(ConfigError) as exc:
        parse_traffic(table)
    assert str(exc.value) == message


@pytest.mark.parametrize("argv", [["run"], ["simulate"],
                                  ["plan", "--connections", "100", "--msgs-per-s", "10"]])
def test_every_command_refuses_a_bad_traffic_table(tmp_path, capsys, argv):
    """Only `plan --period` reads [traffic], but a bad one is bad input wherever the
    scenario is given: one line naming the key, before anything runs."""
    path = tmp_path / "s.toml"
    path.write_text((ROOT / "scenarios" / "default.toml").read_text()
                    + "\n[traffic]\nclients = -5\n")
    out = tmp_path / "out"
    assert cli_main([argv[0], str(path), *argv[1:], "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "rtmsim: traffic.clients: must be >= 1, got -5" and not out.exists()


def test_a_partial_traffic_table_is_not_bad_input_where_flags_may_complete_it(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text((ROOT / "scenarios" / "default.toml").read_text()
                    + "\n[traffic]\nclients = 5\n")
    assert cli_main(["simulate", str(path), "--duration", "1", "--no-progress",
                     "--out", str(tmp_path / "out")]) in (0, 1)  # 1: a threshold
    assert (tmp_path / "out" / "summary.json").is_file()


def test_a_traffic_table_in_a_scenario_and_flags_over_it():
    sc = scenario("name = 'p'", traffic="[traffic]\nclients = 10\nsessions_per_day = 2\n"
                                        "session_min = 30\nmsgs_per_session = 5\n")
    parser = argparse.ArgumentParser()
    add_period_arguments(parser)
    args = parser.parse_args(["--clients", "1000", "--fanout", "40", "--period-days", "7"])
    assert period_from_args(args, sc) == Traffic(clients=1000, sessions_per_day=2.0,
                                                 session_min=30.0, msgs_per_session=5.0,
                                                 fanout=40.0)
    assert period_s_from_args(args) == 7 * DAY
    assert parse_traffic(sc.config.extra["traffic"]) == Traffic(10, 2.0, 30.0, 5.0)


def test_the_capacity_planners_fanout_flag_is_shared():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fanout", type=float, help="subscribers a channel")  # rtmsim plan's
    add_period_arguments(parser)
    args = parser.parse_args(["--clients", "3", "--fanout", "12"])
    sc = scenario("name = 'p'", traffic="[traffic]\nsessions_per_day = 2\nsession_min = 30\n"
                                        "msgs_per_session = 5\n")
    assert period_from_args(args, sc).fanout == 12.0


@pytest.mark.parametrize(("argv", "message"), [
    (["--sessions-per-day", "-1"], "--sessions-per-day: must be > 0, got -1.0"),
    (["--peak-hour", "25"], "--peak-hour: must be <= 24, got 25.0"),
    (["--clients", "0"], "--clients: must be >= 1, got 0"),
    (["--period-days", "0"], "--period-days: must be > 0, got 0.0"),
])
def test_a_bad_flag_is_named(argv, message):
    parser = argparse.ArgumentParser()
    add_period_arguments(parser)
    args = parser.parse_args([*argv, "--clients", "5"] if argv[0] != "--clients" else argv)
    sc = scenario("name = 'p'", traffic="[traffic]\nsessions_per_day = 2\nsession_min = 30\n"
                                        "msgs_per_session = 5\n")
    with pytest.raises(ConfigError) as exc:
        period_from_args(args, sc)
        period_s_from_args(args)
    assert str(exc.value) == message


def test_missing_traffic_says_where_to_give_it():
    parser = argparse.ArgumentParser()
    add_period_arguments(parser)
    with pytest.raises(ConfigError) as exc:
        period_from_args(parser.parse_args(["--sessions-per-day", "1"]), scenario("name='p'"))
    assert str(exc.value) == ("traffic.clients: is required: set it in [traffic] or pass "
                              "--clients")


def test_an_unknown_app_is_named():
    with pytest.raises(ConfigError) as exc:
        project_period(scenario("name='p'"), ALL_DAY, app_id="nope")
    assert str(exc.value) == "--app: no app 'nope' in the scenario (its apps: a)"


def test_the_summary_says_who_is_refused_and_what_it_costs():
    sc = scenario("name = 'tiny', max_concurrent_connections = 2, "
                  "max_messages_per_period = 3, period_seconds = 86400")
    r = project_period(sc, ALL_DAY)
    lines = period_lines(r)
    refused, quota = r["over_concurrent_limit"], r["over_message_quota"]
    at, since = refused["first_at"]["time_of_day"], quota["first_at"]["time_of_day"]
    hour = int(at[:2])
    assert lines[0] == ("plan 'tiny' of a: 2 concurrent, 3 messages a period of 86400 s "
                        "(1 traffic day); no overage")
    assert lines[1] == (f"traffic: 3 clients x 1 session a day of 1440 min, 4 messages a "
                        f"session: 3 sessions, {r['messages']['attempted']} messages")
    assert lines[3] == (f"4010 from day 1 at {at}: 1 session (33.3%) of 1 client (33.3%) "
                        f"refused, most at {hour:02d}:00-{(hour + 1) % 24:02d}:00")
    assert lines[4] == (f"over_message_quota from day 1 at {since}: "
                        f"{r['messages']['refused']} messages refused, sent by "
                        f"{quota['sessions']} sessions ({quota['session_share']:.1%}) of "
                        f"{quota['clients']} clients ({quota['client_share']:.1%})")
    assert lines[5] == ("overage: 0 messages, 0 connections, cost 0; 0 recharges (0); "
                        "balance 0 -> 0")


@pytest.mark.parametrize(("balance", "price", "line"), [
    # binary floats paid 499 (0.5 - 499 x 0.001 is a hair under 0.001) and left 0.001
    ("0.5", "0.001", "overage: 500 messages, 0 connections, cost 0.5; 0 recharges (0); "
                     "balance 0.5 -> 0"),
    # ... and 2 here, with a cost of 0.30000000000000004 had all three been paid
    ("0.3", "0.1", "overage: 3 messages, 0 connections, cost 0.3; 0 recharges (0); "
                   "balance 0.3 -> 0"),
])
def test_the_balance_pays_every_price_it_holds_and_the_summary_shows_it(balance, price,
                                                                       line):
    sc = scenario("max_messages_per_period = 0, period_seconds = 86400, "
                  f"overages_allowed = true, overages_enabled = true, balance = {balance}, "
                  f"overage_price_per_message = {price}")
    r = project_period(sc, Traffic(clients=10, sessions_per_day=5, session_min=60,
                                   msgs_per_session=20))
    assert r["cost"]["balance_end"] == 0.0
    assert r["cost"]["overage_charges"] == float(balance)
    assert period_lines(r)[5] == line


# -- the cross-check: a real server given the same calls -------------------------------

CROSS_DAY_S = 10.0  # a traffic day compressed into 10 s: a 30 s period holds 3 days
# Hour-long ticks: closes, connects and publishes often share a tick, so the order
# within a tick (closes, connects, publishes) is checked too.
CROSS_TICKS_PER_DAY = 24
CROSS_APPS = {
    "x_refuse": ("max_concurrent_connections = 2, max_messages_per_period = 6, "
                 "period_seconds = 30, overages_allowed = true, overages_enabled = true, "
                 "balance = 1.75, overage_price_per_message = 0.25, "
                 "overage_price_per_connection = 0.5"),
    "x_recharge": ("max_concurrent_connections = 2, max_messages_per_period = 4, "
                   "period_seconds = 30, overages_allowed = true, overages_enabled = true, "
                   "balance = 0, overage_price_per_message = 0.25, "
                   "overage_price_per_connection = 0.5, auto_recharge = 1.0"),
}
CROSS_TRAFFIC = """
[traffic]
clients = 4
sessions_per_day = 2
session_min = 240
msgs_per_session = 1.5
peak_factor = 2
"""


def cross_config() -> str:
    apps = "".join(f"""
[[apps]]
id = "{app}"
plan = {{ {plan} }}
[[apps.keys]]
id = "pk_{app}"
[[apps.keys]]
id = "sk_id_{app}"
secret = "sk_secret_{app}"
""" for app, plan in CROSS_APPS.items())
    return f"[server]\nseed = 5\n{apps}\n[swarm.classes.Subscriber]\nweight = 1\n" \
           + CROSS_TRAFFIC


def usage(server: Any, app: str) -> dict[str, Any]:
    status, body = server.http("GET", "/v1/usage", token=f"sk_id_{app}:sk_secret_{app}")
    assert status == 200, body
    return body


def schedule_calls(sched: Any) -> list[tuple[int, int, int]]:
    """(tick, phase, session) in the planner's order: closes, connects, publishes."""
    calls = []
    for s in sched.sessions():
        calls.append((s.start, 1, s.index))
        if s.end < sched.ticks:
            calls.append((s.end, 0, s.index))
        calls.extend((t, 2, s.index) for t in s.messages)
    return sorted(calls)


def replay(server: Any, app: str, sched: Any) -> dict[str, Any]:
    """Make the schedule's calls on a real server, in order, as fast as it answers."""
    open_, refused, over_quota = {}, [], 0
    with client_pool(server.ws_url) as pool:
        for _tick, phase, i in schedule_calls(sched):
            if phase == 0 and i in open_:
                open_.pop(i).close()  # the release happens after the close: wait for it
                wait_until(lambda: usage(server, app)["concurrentNow"] == len(open_))
            elif phase == 1:
                client = pool.open(f"key=pk_{app}")
                try:
                    assert client.recv()["type"] == "welcome"
                    open_[i] = client
                except ConnectionClosed as exc:
                    assert close_code(exc) == 4010
                    refused.append(i)
            elif phase == 2 and i in open_:
                reply = open_[i].request({"type": "publish", "channel": "room/1",
                                          "data": i, "requestId": "r"})
                if reply["type"] == "error":
                    assert reply["code"] == "over_message_quota", reply
                    over_quota += 1
        final = usage(server, app)  # before the pool closes what is still open
    return {"usage": final, "refused": refused, "over_quota": over_quota}


def without_period(u: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in u.items() if k not in ("periodStartUnix", "periodEndUnix")}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("app", list(CROSS_APPS))
def test_a_compressed_period_on_a_real_server_keeps_the_planners_ledger(server_factory, app):
    text = cross_config()
    sc = parse_scenario(tomllib.loads(text), text)
    traffic = parse_traffic(sc.config.extra["traffic"])
    planned = project_period(sc, traffic, app_id=app, day_s=CROSS_DAY_S, detail=True,
                             ticks_per_day=CROSS_TICKS_PER_DAY)
    sched = build_schedule(traffic, period_s=30, day_s=CROSS_DAY_S, seed=5,
                           ticks_per_day=CROSS_TICKS_PER_DAY)
    server = server_factory(text)
    before = usage(server, app)
    real = replay(server, app, sched)
    u = real["usage"]
    assert u["periodStartUnix"] == before["periodStartUnix"]  # all in one period
    assert u["periodEndUnix"] - u["periodStartUnix"] == 30
    assert without_period(u) == without_period(planned["usage"])
    refused = planned["over_concurrent_limit"]
    assert real["refused"] == (refused["session_indices"] if refused else [])
    assert real["over_quota"] == planned["messages"]["refused"]
    # Recharges are not in /v1/usage: the balance and the (dyadic) charges give them.
    plan = sc.config.app(app).plan
    charges = (u["overageMessages"] * plan.overage_price_per_message
               + u["overageConnections"] * plan.overage_price_per_connection)
    recharged = u["balance"] - plan.balance + charges
    assert recharged == planned["cost"]["recharged"]
    # The schedule does exercise the ledger: overage, and refusals or recharges.
    assert u["overageMessages"] and u["overageConnections"]
    if app == "x_refuse":
        assert real["refused"] and real["over_quota"]
    else:
        assert planned["cost"]["recharges"] > 10
