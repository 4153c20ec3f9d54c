"""The Redis backend over real sockets: several instances behind one private Redis."""

from __future__ import annotations

import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest
from wsclient import Client, client_pool

_ids = itertools.count(1)


def ask(client: Client, frame: dict) -> dict:
    """Send a request with a fresh requestId; its ack or error (other frames skipped)."""
    rid = f"r{next(_ids)}"
    client.send({**frame, "requestId": rid})
    for _ in range(200):
        reply = client.recv()
        if reply.get("requestId") == rid:
            return reply
    raise AssertionError("no reply")


def next_of(client: Client, kind: str, timeout: float = 5.0) -> dict:
    """The next frame of this type (others skipped), within `timeout`."""
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        frame = client.recv(timeout=max(0.01, deadline - time.monotonic()))
        if frame["type"] == kind:
            return frame
    raise AssertionError(f"no {kind} frame")


def config(redis_url: str, *, plan: str = "", server: str = "") -> str:
    return f"""
[server]
backend = "redis"
redis_url = "{redis_url}"
redis_prefix = "test"
redis_peer_ttl_s = 0.6
{server}

[[apps]]
id = "app_demo"
[apps.plan]
{plan}
[[apps.keys]]
id = "pk_live_demo"
[[apps.keys]]
id = "sk_id_demo"
secret = "sk_secret_demo"
"""


def start_pair(server_factory, cfg: str) -> list:
    """Instances i0 and i1 with config `cfg`, started side by side."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda i: server_factory(cfg, "--instance-id", f"i{i}"),
                             range(2)))


@pytest.fixture
def pair(server_factory, redis_server):
    """Two instances, i0 and i1, sharing one private Redis."""
    return start_pair(server_factory, config(redis_server.url))


@pytest.fixture
def clients():
    """clients(server) -> a welcomed demo-key Client; all closed after the test."""
    with ExitStack() as stack:
        pools = {}

        def open_client(server):
            if server.ws_url not in pools:
                pools[server.ws_url] = stack.enter_context(client_pool(server.ws_url))
            return pools[server.ws_url].key()

        yield open_client


def test_welcome_names_the_instance(pair, clients):
    for i, server in enumerate(pair):
        assert clients(server).welcome["metadata"] == {"instanceId": f"i{i}"}


def test_publish_on_one_instance_reaches_subscribers_on_the_other(pair, clients):
    a, b = pair
    pub, exact, wild = clients(a), clients(b), clients(b)
    assert ask(exact, {"type": "subscribe", "channel": "room/1"})["type"] == "ack"
    assert ask(wild, {"type": "subscribe", "channel": "room/*"})["type"] == "ack"
    assert ask(pub, {"type": "publish", "channel": "room/1", "data": {"n": 1}})["type"] == "ack"
    expected = {"type": "message", "channel": "room/1", "from": pub.peer_id, "data": {"n": 1}}
    assert next_of(exact, "message") == expected
    assert next_of(wild, "message") == expected


def test_send_reaches_a_peer_on_another_instance(pair, clients):
    a, b = pair
    sender, target = clients(a), clients(b)
    assert ask(sender, {"type": "send", "to": target.peer_id, "data": "hi"})["type"] == "ack"
    assert next_of(target, "direct") == {"type": "direct", "from": sender.peer_id, "data": "hi"}
    reply = ask(sender, {"type": "send", "to": "nobody", "data": 1})
    assert reply["code"] == "peer_not_found"
    assert reply["message"] == "peer nobody is not online"


def test_send_without_cross_instance_routing_says_not_on_this_instance(
        server_factory, redis_server, clients):
    cfg = config(redis_server.url, server="cross_instance_send = false")
    a, b = start_pair(server_factory, cfg)
    sender, target = clients(a), clients(b)
    reply = ask(sender, {"type": "send", "to": target.peer_id, "data": 1})
    assert reply["code"] == "peer_not_found"
    assert reply["message"] == f"peer {target.peer_id} is not online on this instance"


def test_presence_spans_instances(pair, clients):
    a, b = pair
    x, y = clients(a), clients(b)
    ask(x, {"type": "subscribe", "channel": "lobby"})
    assert next_of(x, "presence") == {"type": "presence", "channel": "lobby",
                                      "joined": [], "left": []}
    ask(y, {"type": "subscribe", "channel": "lobby"})
    assert next_of(y, "presence")["joined"] == [{"peerId": x.peer_id}]
    assert next_of(x, "presence") == {"type": "presence", "channel": "lobby",
                                      "joined": [{"peerId": y.peer_id}], "left": []}
    status, body = b.http("GET", "/v1/channels/lobby/peers", token="sk_id_demo:sk_secret_demo")
    assert status == 200
    assert sorted(p["peerId"] for p in body["peers"]) == sorted([x.peer_id, y.peer_id])
    ask(y, {"type": "unsubscribe", "channel": "lobby"})
    assert next_of(x, "presence") == {"type": "presence", "channel": "lobby",
                                      "joined": [], "left": [{"peerId": y.peer_id}]}


def test_quotas_are_shared_across_instances(server_factory, redis_server, clients):
    cfg = config(redis_server.url, plan="max_messages_per_period = 3\n"
                                        "max_concurrent_connections = 2")
    a, b = start_pair(server_factory, cfg)
    x, y = clients(a), clients(b)
    codes = [ask(c, {"type": "publish", "channel": "q", "data": 1}).get("code", "ok")
             for c in (x, y, x, y)]
    assert codes == ["ok", "ok", "ok", "over_message_quota"]
    with client_pool(b.ws_url) as pool:
        assert pool.rejected("key=pk_live_demo") == ([], 4010)
    status, usage = a.http("GET", "/v1/usage", token="sk_id_demo:sk_secret_demo")
    assert status == 200
    assert (usage["messagesUsed"], usage["concurrentNow"]) == (4, 2)


def test_redis_outage_answers_backend_error_and_recovers_within_2s(pair, redis_server,
                                                                   clients):
    a, b = pair
    pub, sub = clients(a), clients(b)
    ask(sub, {"type": "subscribe", "channel": "c"})
    redis_server.stop()
    assert ask(pub, {"type": "publish", "channel": "c", "data": 1})["code"] == "backend_error"
    assert ask(pub, {"type": "subscribe", "channel": "d"})["code"] == "backend_error"
    # local-only work goes on and the connection stays open
    assert pub.sync() == []
    assert ask(pub, {"type": "publish", "channel": ""})["code"] == "invalid_channel"
    stats = a.stats()
    assert stats["backend"]["up"] is False
    assert stats["totals"]["errors"]["backend_error"] == 2
    redis_server.start()  # empty: every instance must write its state back
    restarted = time.monotonic()
    for _ in range(100):
        reply = ask(pub, {"type": "publish", "channel": "c", "data": 2})
        if reply["type"] == "ack":
            break
        assert time.monotonic() - restarted < 2.0, "no recovery within 2 s"
        time.sleep(0.02)
    recovered = time.monotonic() - restarted
    assert recovered < 2.0
    print(f"recovered {recovered * 1000:.0f} ms after Redis came back")
    # the other instance re-subscribed too: deliveries cross instances again
    for _ in range(100):
        ask(pub, {"type": "publish", "channel": "c", "data": 3})
        frames = [f for f in sub.sync() if f["type"] == "message"]
        if frames:
            assert frames[0]["data"] in (2, 3)
            break
        assert time.monotonic() - restarted < 4.0, "cross-instance delivery did not return"
        time.sleep(0.02)
    for server in pair:
        assert server.proc.poll() is None  # nothing crashed


def test_a_crashed_instance_peers_disappear(pair, clients):
    a, b = pair
    x, y = clients(a), clients(b)
    ask(x, {"type": "subscribe", "channel": "lobby"})
    next_of(x, "presence")
    ask(y, {"type": "subscribe", "channel": "lobby"})
    assert next_of(x, "presence")["joined"] == [{"peerId": y.peer_id}]
    b.proc.kill()
    b.proc.wait()
    # the janitor announces the left presence once b's heartbeat expires
    assert next_of(x, "presence", timeout=10) == {
        "type": "presence", "channel": "lobby", "joined": [], "left": [{"peerId": y.peer_id}]}
    assert ask(x, {"type": "send", "to": y.peer_id, "data": 1})["code"] == "peer_not_found"


def test_events_carry_the_instance(pair, clients):
    a, _ = pair
    clients(a)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events = a.events()
        if any(e["event"] == "connect" for e in events):
            break
        time.sleep(0.1)  # the event log is flushed once a second
    assert {e["instance"] for e in events} == {"i0"}
    assert json.dumps(events)
