"""Conformance over real sockets: what the server records matches what the client saw.

The event log (`--events`, JSON lines) must let one client's story be rebuilt:
connect, each error (code, requestId, op), each success, the close (code) and the
disconnect. `/sim/v1/stats` counts errors and closes by code, equal to the frames
and close codes the clients received. The log is flushed about once a second, so
reads poll for a condition (bounded), never sleep.
"""

from __future__ import annotations

from collections import Counter

from serverproc import ServerProcess
from wsclient import (
    Client,
    client_pool,
    make_token,
    unique,
    wait_until,
)

MAX_FRAME = 65536
EVENT_WAIT_S = 5.0  # the log flushes every ~1 s


def story_of(server: ServerProcess, peer: str, last: str = "disconnect") -> list[dict]:
    """The events of one peer, once its `last` event is in the log."""
    def events() -> list[dict] | None:
        mine = [e for e in server.events() if e.get("peer") == peer]
        return mine if any(e["event"] == last for e in mine) else None

    return wait_until(events, timeout=EVENT_WAIT_S)


def pick(event: dict, *fields: str) -> tuple:
    return (event["event"], *(event.get(f) for f in fields))


def test_event_log_tells_one_clients_story(clients, demo_server):
    client = clients.key()
    client.send({"type": "subscribe", "channel": "", "requestId": "r1"})
    client.send({"type": "publish", "channel": unique("story"), "data": 1, "requestId": "r2"})
    client.send({"type": "publish", "channel": unique("story")})  # missing_data, no id
    assert [f["type"] for f in (client.recv(), client.recv(), client.recv())] == [
        "error", "ack", "error"]
    client.send_raw("x" * (MAX_FRAME + 1))
    assert client.recv_until_closed() == ([], 1009)

    story = story_of(demo_server, client.peer_id)
    assert [pick(e, "app", "key", "keyType") for e in story[:1]] == [
        ("connect", "app_demo", "pk_live_demo", "publishable")]
    assert [pick(e, "code", "requestId", "op") for e in story[1:4]] == [
        ("error", "invalid_channel", "r1", "subscribe"),
        ("ok", None, "r2", "publish"),
        ("error", "missing_data", None, "publish"),
    ]
    # The disconnect's code is what the socket ended with as the server saw it: the
    # library fails the connection after a 1009 without awaiting the echo (1006).
    assert [pick(e, "code") for e in story[4:5]] == [("close", 1009)]
    assert [e["event"] for e in story[5:]] == ["disconnect"]
    assert len({e["conn"] for e in story}) == 1  # one connection id ties the story
    times = [e["t"] for e in story]
    assert times == sorted(times)


def test_event_log_records_a_kick_of_a_token_connection(clients, demo_server):
    peer = unique("kicked")
    client = clients.token(make_token(peer))
    status, _ = demo_server.http("DELETE", f"/v1/peers/{peer}",
                                 token="sk_id_demo:sk_secret_demo")
    assert status == 200
    assert client.recv_until_closed() == ([], 4020)
    story = story_of(demo_server, peer)
    assert [pick(e, "keyType", "code") for e in story] == [
        ("connect", "token", None), ("close", None, 4020), ("disconnect", None, 4020)]


STATS_CONFIG = """
[limits]
max_subscriptions = 2

[[apps]]
id = "app_stats"
plan = { max_messages_per_period = 3 }

[[apps.keys]]
id = "pk_stats"
channel_patterns = ["room/*"]

[[apps.keys]]
id = "pk_stats_ro"
channel_patterns = ["room/*"]
actions = ["subscribe"]
"""


def error_code(client: Client, frame) -> str:
    if isinstance(frame, str | bytes):
        client.send_raw(frame)
    else:
        client.send(frame)
    reply = client.recv()
    assert reply["type"] == "error", reply
    return reply["code"]


def test_stats_errors_and_closes_by_code_equal_what_clients_saw(server_factory):
    server = server_factory(STATS_CONFIG)
    for spec in ({"kind": "error", "code": "backend_error", "channels": "room/fb"},
                 {"kind": "error", "code": "internal_error", "channels": "room/fi"}):
        status, body = server.http("POST", "/sim/v1/faults", spec)
        assert status == 201, body
    seen: Counter[str] = Counter()
    closes: Counter[int] = Counter()
    with client_pool(server.ws_url) as pool:
        client, readonly = pool.key("pk_stats"), pool.key("pk_stats_ro")
        frames = [
            "not json", b"binary", {"type": "nope"}, {"type": "publish", "channel": ""},
            {"type": "send", "to": ""}, {"type": "subscribe", "channel": "other"},
            {"type": "subscribe", "channel": "_system/x"},
            {"type": "subscribe", "channel": "room/fb"},
            {"type": "subscribe", "channel": "room/fi"},
            {"type": "publish", "channel": "room/1"},
            {"type": "send", "to": "ghost", "data": 1},  # message 1 of 3
        ]
        seen.update(error_code(client, f) for f in frames)
        for i in (1, 2):
            assert client.request({"type": "subscribe", "channel": f"room/{i}",
                                   "requestId": "s"})["type"] == "ack"
            client.recv()  # presence snapshot
        seen[error_code(client, {"type": "subscribe", "channel": "room/3"})] += 1
        for _ in range(3):  # messages 2, 3, then over the quota
            client.send({"type": "publish", "channel": "room/1", "data": 1})
        seen[client.recv()["code"]] += 1
        seen[error_code(readonly, {"type": "publish", "channel": "room/1", "data": 1})] += 1
        client.send_raw("x" * (MAX_FRAME + 1))
        closes[client.recv_until_closed()[1]] += 1
        closes[pool.rejected("key=pk_nope")[1]] += 1

    assert set(seen) == {"malformed_message", "unknown_type", "invalid_channel",
                         "invalid_peer_id", "channel_not_authorized", "channel_reserved",
                         "channel_limit_exceeded", "peer_not_found", "missing_data",
                         "action_not_permitted", "over_message_quota", "backend_error",
                         "internal_error"}
    assert closes == {1009: 1, 4001: 1}
    stats = wait_until(lambda: (s := server.stats())["totals"]["connections"]["now"] == 0
                       and s)
    app = stats["apps"]["app_stats"]
    assert app["errors"] == dict(seen)
    assert app["closes"] == {"1009": 1}
    assert stats["apps"]["-"]["closes"] == {"4001": 1}  # rejected before an app is known
    assert stats["totals"]["errors"] == dict(seen)
    assert stats["totals"]["closes"] == {"1009": 1, "4001": 1}


def test_event_log_records_rejections(server_factory):
    server = server_factory()
    with client_pool(server.ws_url) as pool:
        assert pool.rejected("key=pk_nope") == ([], 4001)
        expired = make_token("late", ttl=-10)
        assert pool.rejected(f"token={expired}") == ([], 4002)

    def rejects() -> list[dict] | None:
        found = [e for e in server.events() if e["event"] == "reject"]
        return found if len(found) == 2 else None

    assert [pick(e, "app", "peer", "code") for e in wait_until(rejects,
                                                               timeout=EVENT_WAIT_S)] == [
        # an expired but valid token names its app and peer, so the reconnect is graded
        ("reject", None, None, 4001), ("reject", "app_demo", "late", 4002)]
