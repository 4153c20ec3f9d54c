"""Conformance over real sockets: message quota, overages, auto-recharge and rollover.

PROTOCOL.md section 7. One server holds one small app per test, so tests do not share
counters. `/v1/usage` is the observable ledger.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serverproc import ServerProcess, served
from wsclient import ClientPool, client_pool, expected_error, wait_until, without_message

APPS = {
    # app id: its plan, as the body of a TOML inline table
    "q_basic": "max_messages_per_period = 2",
    "q_mixed": "max_messages_per_period = 2",
    "q_free": "max_messages_per_period = 1",
    "q_zero": "max_messages_per_period = 0",
    "q_balance": ("max_messages_per_period = 1, overages_allowed = true, "
                  "overages_enabled = true, balance = 0.5, overage_price_per_message = 0.25"),
    "q_disabled": ("max_messages_per_period = 1, overages_allowed = true, "
                   "overages_enabled = false, balance = 10, "
                   "overage_price_per_message = 0.25"),
    "q_recharge": ("max_messages_per_period = 1, overages_allowed = true, "
                   "overages_enabled = true, balance = 0, overage_price_per_message = 0.25, "
                   "auto_recharge = 1.0"),
    "q_rollover": "max_messages_per_period = 1, period_seconds = 1",
    "q_conn": ("max_concurrent_connections = 1, overages_allowed = true, "
               "overages_enabled = true, balance = 1.0, overage_price_per_connection = 0.5"),
}


def quota_config() -> str:
    parts = []
    for app, plan in APPS.items():
        patterns = '["ok/*", "_system/*"]' if app in ("q_free", "q_zero") else '["**"]'
        parts.append(f"""
[[apps]]
id = "{app}"
plan = {{ {plan} }}

[[apps.keys]]
id = "pk_{app}"
channel_patterns = {patterns}

[[apps.keys]]
id = "sk_id_{app}"
secret = "sk_secret_{app}"
""")
    return "".join(parts)


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory) -> Iterator[ServerProcess]:
    with served(quota_config(), tmp_path_factory.mktemp("quota")) as server:
        yield server


@pytest.fixture
def clients(quota_server) -> Iterator[ClientPool]:
    with client_pool(quota_server.ws_url) as pool:
        yield pool


def bearer(app: str) -> str:
    return f"sk_id_{app}:sk_secret_{app}"


def usage(server: ServerProcess, app: str) -> dict:
    status, body = server.http("GET", "/v1/usage", token=bearer(app))
    assert status == 200, body
    return body


def publish(client, rid: str, channel: str = "ok/1") -> dict:
    frame = client.request({"type": "publish", "channel": channel, "data": rid,
                            "requestId": rid})
    return without_message(frame) if frame["type"] == "error" else frame


def ack(rid: str) -> dict:
    return {"type": "ack", "requestId": rid}


def test_publish_over_quota_is_over_message_quota(clients, quota_server):
    client = clients.key("pk_q_basic")
    assert [publish(client, r) for r in ("m1", "m2", "m3")] == [
        ack("m1"), ack("m2"), expected_error("over_message_quota", "m3")]
    assert client.sync() == []  # soft drop
    u = usage(quota_server, "q_basic")  # the rejected attempt counts too
    assert (u["messagesUsed"], u["overageMessages"]) == (3, 0)


def test_send_and_rest_publish_share_the_quota(clients, quota_server):
    client, target = clients.key("pk_q_mixed"), clients.key("pk_q_mixed")
    frame = {"type": "send", "to": target.peer_id, "data": 1, "requestId": "s1"}
    assert client.request(frame) == ack("s1")
    assert target.recv() == {"type": "direct", "from": client.peer_id, "data": 1}
    status, body = quota_server.http("POST", "/v1/channels/ok/publish", {"data": 2},
                                     token=bearer("q_mixed"))
    assert (status, body) == (200, {"channel": "ok", "delivered": 0})
    frame = {**frame, "requestId": "s2"}
    assert without_message(client.request(frame)) == expected_error("over_message_quota",
                                                                    "s2")
    status, body = quota_server.http("POST", "/v1/channels/ok/publish", {"data": 3},
                                     token=bearer("q_mixed"))
    assert (status, body["error"]) == (429, "over_message_quota")
    assert usage(quota_server, "q_mixed")["messagesUsed"] == 4


def test_frames_failing_earlier_checks_are_not_counted(clients, quota_server):
    client = clients.key("pk_q_free")
    rejected = [
        ({"type": "publish", "channel": "ok/1"}, "missing_data"),
        ({"type": "publish", "channel": "", "data": 1}, "invalid_channel"),
        ({"type": "publish", "channel": "_system/x", "data": 1}, "channel_reserved"),
        ({"type": "publish", "channel": "no/1", "data": 1}, "channel_not_authorized"),
        ({"type": "send", "to": "", "data": 1}, "invalid_peer_id"),
    ]
    for i, (frame, code) in enumerate(rejected):
        reply = client.request({**frame, "requestId": str(i)})
        assert without_message(reply) == expected_error(code, str(i))
    assert usage(quota_server, "q_free")["messagesUsed"] == 0


def test_quota_is_checked_after_scope_and_before_routing(clients, quota_server):
    client = clients.key("pk_q_zero")  # a quota of 0: every message is over it
    unauthorized = {"type": "publish", "channel": "no/1", "data": 1, "requestId": "a"}
    assert without_message(client.request(unauthorized)) == expected_error(
        "channel_not_authorized", "a")
    absent = {"type": "send", "to": "nobody-here", "data": 1, "requestId": "b"}
    assert without_message(client.request(absent)) == expected_error(
        "over_message_quota", "b")
    assert usage(quota_server, "q_zero")["messagesUsed"] == 1


def test_overage_is_paid_from_the_balance(clients, quota_server):
    client = clients.key("pk_q_balance")
    assert [publish(client, r) for r in ("m1", "m2", "m3", "m4")] == [
        ack("m1"), ack("m2"), ack("m3"), expected_error("over_message_quota", "m4")]
    u = usage(quota_server, "q_balance")
    assert (u["messagesUsed"], u["overageMessages"], u["balance"]) == (4, 2, 0.0)


def test_overages_allowed_but_not_enabled_reject(clients, quota_server):
    client = clients.key("pk_q_disabled")
    assert [publish(client, r) for r in ("m1", "m2")] == [
        ack("m1"), expected_error("over_message_quota", "m2")]
    u = usage(quota_server, "q_disabled")
    assert (u["overageMessages"], u["balance"]) == (0, 10.0)


def test_auto_recharge_tops_up_and_accepts(clients, quota_server):
    client = clients.key("pk_q_recharge")
    assert [publish(client, r) for r in ("m1", "m2", "m3")] == [ack("m1"), ack("m2"),
                                                                 ack("m3")]
    u = usage(quota_server, "q_recharge")
    assert (u["messagesUsed"], u["overageMessages"], u["balance"]) == (3, 2, 0.5)


def test_connection_overage_is_paid_then_4010(clients, quota_server):
    for _ in range(3):  # one in the plan, two paid from the balance (0.5 each)
        clients.key("pk_q_conn")
    assert clients.rejected("key=pk_q_conn") == ([], 4010)
    u = usage(quota_server, "q_conn")
    assert (u["concurrentNow"], u["overageConnections"], u["balance"]) == (3, 2, 0.0)


def test_period_rollover_resets_the_quota(clients, quota_server):
    """period_seconds = 1: waits for two period boundaries (bounded, ~2 s)."""
    client = clients.key("pk_q_rollover")

    def period_after(start: int) -> dict | None:
        u = usage(quota_server, "q_rollover")
        return u if u["periodStartUnix"] != start else None

    first = usage(quota_server, "q_rollover")["periodStartUnix"]
    start = wait_until(lambda: period_after(first), timeout=3)
    # A new period began at most a few ms ago: ~1 s to use it up.
    assert [publish(client, r) for r in ("m1", "m2")] == [
        ack("m1"), expected_error("over_message_quota", "m2")]
    used = usage(quota_server, "q_rollover")
    assert (used["periodStartUnix"], used["messagesUsed"]) == (start["periodStartUnix"], 2)
    rolled = wait_until(lambda: period_after(start["periodStartUnix"]), timeout=3)
    assert (rolled["messagesUsed"], rolled["peakConcurrent"]) == (0, 1)
    assert publish(client, "m3") == ack("m3")
    assert usage(quota_server, "q_rollover")["messagesUsed"] == 1
