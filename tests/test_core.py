"""The sans-I/O core's rules as plain function calls (no sockets, virtual time)."""

from __future__ import annotations

import dataclasses

import jwt
import pytest
from coredriver import Core

from server.actions import CloseAt
from server.config import Config, Limits, Plan, default_config, parse_config

NOW = 1_000.0


def token(now: float = NOW, **claims) -> str:
    body = {"sub": "alice", "exp": int(now) + 3600, **claims}
    return jwt.encode(body, "sk_secret_demo", algorithm="HS256", headers={"kid": "sk_id_demo"})


def with_limits(**kw) -> Config:
    return dataclasses.replace(default_config(), limits=Limits(**kw))


def with_plan(**kw) -> Config:
    cfg = default_config()
    app = dataclasses.replace(cfg.apps[0], plan=Plan(**kw))
    return dataclasses.replace(cfg, apps=(app,))


# -- welcome and credentials ---------------------------------------------------------------

def test_welcome_frame_for_a_publishable_key():
    core = Core()
    conn = core.connect(key="pk_live_demo")
    [welcome] = core.take(conn)
    assert welcome == {"type": "welcome", "peerId": conn.peer_id, "expiresAt": None,
                       "serverTime": 1_000_000, "maxMessageSize": 65536}


def test_peer_ids_are_seeded():
    a = [Core().connect(key="pk_live_demo").peer_id for _ in range(2)]
    assert a[0] == a[1]
    cfg = default_config()
    other = Core(dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, seed=7)))
    assert other.connect(key="pk_live_demo").peer_id != a[0]


def test_welcome_for_a_token_carries_exp_and_metadata_and_schedules_4002():
    core = Core()
    conn = core.connect(token=token(metadata={"room": 1}))
    [welcome] = core.take(conn)
    assert welcome["peerId"] == "alice"
    assert welcome["expiresAt"] == int(NOW) + 3600
    assert welcome["metadata"] == {"room": 1}
    assert core.timers == [CloseAt(NOW + 3600 - 0.25, 4002, "token expired")]


@pytest.mark.parametrize(("params", "code"), [
    ({"key": "pk_nope"}, 4001),
    ({"key": "sk_id_demo"}, 4001),  # a secret key id is not a publishable key
    ({}, 4001),
    ({"token": "not.a.jwt"}, 4001),
    ({"token": token(exp=int(NOW) - 1)}, 4002),
    ({"token": token(exp=int(NOW))}, 4002),  # inside the 250 ms lead
    ({"token": token(nbf=int(NOW) + 60)}, 4001),
    ({"token": token(sub="")}, 4001),
    ({"token": token(sub="é")}, 4001),
    ({"token": token(permissions=["fly"])}, 4001),
    ({"token": token(metadata={"x": "y" * 9000})}, 4001),
    ({"token": token(peerMetadata={"x": "y" * 5000})}, 4001),
])
def test_auth_failures_close_without_welcome(params, code):
    assert Core().connect(**params).code == code


def test_token_nbf_within_clock_skew_is_accepted():
    assert Core().connect(token=token(nbf=int(NOW) + 4)).peer_id == "alice"


def test_token_without_exp_is_rejected():
    raw = jwt.encode({"sub": "a"}, "sk_secret_demo", algorithm="HS256",
                     headers={"kid": "sk_id_demo"})
    assert Core().connect(token=raw).code == 4001


@pytest.mark.parametrize("alg", ["HS384", "none"])
def test_only_hs256_is_accepted(alg):
    key = None if alg == "none" else "sk_secret_demo"
    raw = jwt.encode({"sub": "a", "exp": int(NOW) + 60}, key, algorithm=alg,
                     headers={"kid": "sk_id_demo"})
    assert Core().connect(token=raw).code == 4001


def test_bad_signature_and_unknown_kid():
    bad_sig = jwt.encode({"sub": "a", "exp": int(NOW) + 60}, "wrong", algorithm="HS256",
                         headers={"kid": "sk_id_demo"})
    unknown = jwt.encode({"sub": "a", "exp": int(NOW) + 60}, "sk_secret_demo",
                         algorithm="HS256", headers={"kid": "sk_id_other"})
    assert Core().connect(token=bad_sig).code == 4001
    assert Core().connect(token=unknown).code == 4001


def test_suspended_app_and_concurrency_cap():
    cfg = default_config()
    suspended = dataclasses.replace(cfg, apps=(dataclasses.replace(cfg.apps[0],
                                                                   suspended=True),))
    assert Core(suspended).connect(key="pk_live_demo").code == 4012
    core = Core(with_plan(max_concurrent_connections=1))
    first = core.connect(key="pk_live_demo")
    assert core.connect(key="pk_live_demo").code == 4010
    core.disconnect(first)
    assert core.connect(key="pk_live_demo").peer_id


# -- validation order ---------------------------------------------------------------------

@pytest.mark.parametrize(("frame", "error"), [
    ("{", {"code": "malformed_message"}),
    ("[1]", {"code": "malformed_message"}),
    ({"type": 3, "requestId": "r"}, {"code": "malformed_message"}),
    ({"type": "fly", "requestId": "r"}, {"code": "unknown_type", "requestId": "r"}),
    ({"type": "fly", "requestId": ""}, {"code": "unknown_type"}),
    ({"type": "publish", "channel": "a", "data": 1, "requestId": ""},
     {"code": "malformed_message"}),
    ({"type": "publish", "channel": "a", "data": 1, "requestId": "r" * 129},
     {"code": "malformed_message"}),
    ({"type": "publish", "channel": "a", "data": 1, "requestId": 7},
     {"code": "malformed_message"}),
    # invalid channel wins over missing data
    ({"type": "publish", "channel": "", "requestId": "r"},
     {"code": "invalid_channel", "requestId": "r"}),
    ({"type": "publish", "channel": "a", "requestId": "r"},
     {"code": "missing_data", "requestId": "r"}),
    ({"type": "send", "data": 1, "requestId": "r"}, {"code": "invalid_peer_id", "requestId": "r"}),
    ({"type": "send", "to": "x", "requestId": "r"}, {"code": "missing_data", "requestId": "r"}),
    ({"type": "subscribe", "channel": "_Metered/x", "requestId": "r"},
     {"code": "channel_reserved", "requestId": "r"}),
    ({"type": "send", "to": "nobody", "data": None, "requestId": "r"},
     {"code": "peer_not_found", "requestId": "r"}),
])
def test_first_failing_check_wins(frame, error):
    core = Core()
    conn = core.connect(key="pk_live_demo")
    core.take(conn)
    [reply] = core.send(conn, frame)
    assert reply["type"] == "error"
    assert {k: v for k, v in reply.items() if k in ("code", "requestId")} == error
    assert isinstance(reply["message"], str) and reply["message"]


def test_reserved_wins_over_permission_and_scope():
    core = Core()
    conn = core.connect(key="pk_live_readonly")
    core.take(conn)
    [reply] = core.send(conn, {"type": "publish", "channel": "_system/x", "data": 1,
                               "requestId": "r"})
    assert reply["code"] == "channel_reserved"


def test_permission_wins_over_scope():
    core = Core()
    conn = core.connect(key="pk_live_readonly")
    core.take(conn)
    [reply] = core.send(conn, {"type": "publish", "channel": "private/x", "data": 1,
                               "requestId": "r"})
    assert reply["code"] == "action_not_permitted"
    [reply] = core.send(conn, {"type": "subscribe", "channel": "private/x", "requestId": "s"})
    assert reply == {"type": "error", "code": "channel_not_authorized",
                     "message": "not authorized: private/x", "requestId": "s"}


def test_token_bucket_is_checked_before_everything():
    core = Core(with_limits(rate_per_second=1, burst=3))
    conn = core.connect(key="pk_live_demo")
    core.take(conn)
    for _ in range(3):
        assert core.send(conn, "garbage")[0]["code"] == "malformed_message"
    assert core.send(conn, "garbage") == []
    assert core.closed[conn.id] == 4011
    assert core.send(conn, {"type": "ping"}) == []  # nothing after the close decision


def test_errors_without_request_id_are_uncorrelated_and_no_ack_is_sent():
    core = Core()
    conn = core.connect(key="pk_live_demo")
    core.take(conn)
    assert core.send(conn, {"type": "publish", "channel": "a", "data": 1}) == []
    [err] = core.send(conn, {"type": "publish", "channel": "a"})
    assert "requestId" not in err and err["code"] == "missing_data"


def test_ping_gets_pong_without_ack():
    core = Core()
    conn = core.connect(key="pk_live_demo")
    core.take(conn)
    assert core.send(conn, {"type": "ping", "requestId": "p"}) == [{"type": "pong"}]


def test_unknown_fields_are_ignored_and_null_data_is_data():
    core = Core()
    conn = core.connect(key="pk_live_demo")
    core.take(conn)
    assert core.send(conn, {"type": "publish", "channel": "a", "data": None, "x": [1],
                            "requestId": "r"}) == [{"type": "ack", "requestId": "r"}]


# -- subscriptions, presence, delivery ---------------------------------------------------

def test_subscribe_acks_then_sends_snapshot_and_announces():
    core = Core()
    a, b = core.connect(key="pk_live_demo"), core.connect(key="pk_live_demo")
    core.take(a), core.take(b)
    assert core.send(a, {"type": "subscribe", "channel": "room", "requestId": "1"}) == [
        {"type": "ack", "requestId": "1"},
        {"type": "presence", "channel": "room", "joined": [], "left": []}]
    core.take(a)
    assert core.send(b, {"type": "subscribe", "channel": "room", "requestId": "2"}) == [
        {"type": "ack", "requestId": "2"},
        {"type": "presence", "channel": "room", "joined": [{"peerId": a.peer_id}], "left": []}]
    assert core.take(a) == [{"type": "presence", "channel": "room",
                             "joined": [{"peerId": b.peer_id}], "left": []}]
    core.send(b, {"type": "unsubscribe", "channel": "room", "requestId": "3"})
    assert core.take(a) == [{"type": "presence", "channel": "room", "joined": [],
                             "left": [{"peerId": b.peer_id}]}]


def test_presence_counts_per_peer_not_per_connection():
    core = Core()
    watcher = core.connect(key="pk_live_demo")
    core.send(watcher, {"type": "subscribe", "channel": "room"})
    meta = {"name": "Alice"}
    a1 = core.connect(token=token(peerMetadata=meta))
    a2 = core.connect(token=token(peerMetadata=meta))
    core.take(watcher)
    core.send(a1, {"type": "subscribe", "channel": "room"})
    core.send(a2, {"type": "subscribe", "channel": "room"})
    assert core.take(watcher) == [{"type": "presence", "channel": "room",
                                   "joined": [{"peerId": "alice", "metadata": meta}],
                                   "left": []}]
    core.disconnect(a1)
    assert core.take(watcher) == []
    core.disconnect(a2)
    assert core.take(watcher) == [{"type": "presence", "channel": "room", "joined": [],
                                   "left": [{"peerId": "alice", "metadata": meta}]}]


def test_connection_without_presence_action_is_neither_told_nor_announced():
    core = Core()
    reader = core.connect(token=token(sub="reader", permissions=["subscribe"]))
    other = core.connect(key="pk_live_demo")
    core.send(other, {"type": "subscribe", "channel": "room"})
    core.take(reader), core.take(other)
    assert core.send(reader, {"type": "subscribe", "channel": "room", "requestId": "r"}) == [
        {"type": "ack", "requestId": "r"}]
    assert core.take(other) == []


def test_repeat_subscribe_is_idempotent_and_last_metadata_flag_wins():
    core = Core()
    sub = core.connect(key="pk_live_demo")
    pub = core.connect(token=token(peerMetadata={"n": 1}))
    core.send(sub, {"type": "subscribe", "channel": "c"})
    core.send(sub, {"type": "subscribe", "channel": "c", "includeSenderMetadata": True,
                    "requestId": "again"})
    core.take(sub)
    core.send(pub, {"type": "publish", "channel": "c", "data": "x"})
    assert core.take(sub) == [{"type": "message", "channel": "c", "from": "alice",
                               "data": "x", "fromMetadata": {"n": 1}}]
    assert len(sub.subscriptions) == 1


def test_publisher_connection_is_excluded_but_its_other_connections_receive():
    core = Core()
    a1, a2 = core.connect(token=token()), core.connect(token=token())
    for c in (a1, a2):
        core.send(c, {"type": "subscribe", "channel": "c"})
    core.take(a1), core.take(a2)
    assert core.send(a1, {"type": "publish", "channel": "c", "data": 1, "requestId": "p"}) == [
        {"type": "ack", "requestId": "p"}]
    assert core.take(a2) == [{"type": "message", "channel": "c", "from": "alice", "data": 1}]


def test_wildcard_subscriptions_get_one_copy_with_the_concrete_channel():
    core = Core()
    sub, pub = core.connect(key="pk_live_demo"), core.connect(key="pk_live_demo")
    for name in ("room/*", "room/**", "room/1", "**"):
        core.send(sub, {"type": "subscribe", "channel": name})
    core.take(sub)
    core.send(pub, {"type": "publish", "channel": "room/1", "data": 1})
    core.send(pub, {"type": "publish", "channel": "room/1/x", "data": 2})
    core.send(pub, {"type": "publish", "channel": "hall", "data": 3})
    assert [(m["channel"], m["data"]) for m in core.take(sub)] == [
        ("room/1", 1), ("room/1/x", 2), ("hall", 3)]


def test_wildcard_delivery_is_filtered_by_the_subscriber_scope():
    core = Core()
    sub = core.connect(token=token(channels=["*", "public/**"]))
    pub = core.connect(key="pk_live_demo")
    # The pattern text "**" matches the token pattern "*" (no slash in it), so the
    # subscription is authorized; each delivery through it is checked again.
    assert core.send(sub, {"type": "subscribe", "channel": "**", "requestId": "w"})[0] == {
        "type": "ack", "requestId": "w"}
    assert core.send(sub, {"type": "subscribe", "channel": "x/**", "requestId": "v"})[0][
        "code"] == "channel_not_authorized"
    core.take(sub)
    core.send(pub, {"type": "publish", "channel": "lobby", "data": 1})
    core.send(pub, {"type": "publish", "channel": "secret/x", "data": 2})
    core.send(pub, {"type": "publish", "channel": "public/a/b", "data": 3})
    assert [m["data"] for m in core.take(sub)] == [1, 3]


def test_escaped_star_is_a_concrete_channel():
    core = Core()
    sub, pub = core.connect(key="pk_live_demo"), core.connect(key="pk_live_demo")
    core.send(sub, {"type": "subscribe", "channel": "a\\*b"})
    core.take(sub)
    core.send(pub, {"type": "publish", "channel": "axb", "data": 1})
    core.send(pub, {"type": "publish", "channel": "a*b", "data": 2})
    assert [m["data"] for m in core.take(sub)] == [2]


def test_channel_limit_counts_distinct_subscriptions():
    core = Core(with_limits(max_subscriptions=2))
    conn = core.connect(key="pk_live_demo")
    core.take(conn)
    core.send(conn, {"type": "subscribe", "channel": "a"})
    core.send(conn, {"type": "subscribe", "channel": "b"})
    core.send(conn, {"type": "subscribe", "channel": "a"})  # repeat: fine
    [err] = core.send(conn, {"type": "subscribe", "channel": "c", "requestId": "r"})
    assert err["code"] == "channel_limit_exceeded"
    core.send(conn, {"type": "unsubscribe", "channel": "a"})
    assert core.send(conn, {"type": "subscribe", "channel": "c", "requestId": "r2"})[0] == {
        "type": "ack", "requestId": "r2"}


def test_unsubscribe_of_unknown_channel_acks():
    core = Core()
    conn = core.connect(key="pk_live_demo")
    core.take(conn)
    assert core.send(conn, {"type": "unsubscribe", "channel": "never", "requestId": "u"}) == [
        {"type": "ack", "requestId": "u"}]


def test_direct_reaches_every_connection_of_the_peer_with_metadata():
    core = Core()
    a1, a2 = core.connect(token=token()), core.connect(token=token())
    sender = core.connect(token=token(sub="bob", peerMetadata={"n": "Bob"}))
    core.take(a1), core.take(a2)
    assert core.send(sender, {"type": "send", "to": "alice", "data": [1],
                              "requestId": "d"}) == [{"type": "ack", "requestId": "d"}]
    expected = [{"type": "direct", "from": "bob", "data": [1], "fromMetadata": {"n": "Bob"}}]
    assert core.take(a1) == expected and core.take(a2) == expected


def test_apps_are_separate_namespaces():
    cfg = parse_config({"apps": [
        {"id": "one", "keys": [{"id": "pk_one"}]},
        {"id": "two", "keys": [{"id": "pk_two"}]}]})
    core = Core(cfg)
    a, b = core.connect(key="pk_one"), core.connect(key="pk_two")
    core.send(b, {"type": "subscribe", "channel": "room"})
    core.take(b)
    core.send(a, {"type": "publish", "channel": "room", "data": 1})
    assert core.take(b) == []
    [err] = core.send(a, {"type": "send", "to": b.peer_id, "data": 1, "requestId": "x"})
    assert err["code"] == "peer_not_found"


# -- quota --------------------------------------------------------------------------------

def test_quota_counts_attempts_including_failed_sends():
    core = Core(with_plan(max_messages_per_period=2))
    conn = core.connect(key="pk_live_demo")
    core.take(conn)
    assert core.send(conn, {"type": "send", "to": "ghost", "data": 1, "requestId": "1"})[0][
        "code"] == "peer_not_found"
    assert core.send(conn, {"type": "publish", "channel": "a", "data": 1, "requestId": "2"})[
        0] == {"type": "ack", "requestId": "2"}
    assert core.send(conn, {"type": "publish", "channel": "a", "data": 1, "requestId": "3"})[
        0]["code"] == "over_message_quota"
    assert core.ledgers.ledgers["app_demo"].messages_used == 3
    # invalid frames never reach the quota check
    core.send(conn, {"type": "publish", "channel": "", "data": 1})
    assert core.ledgers.ledgers["app_demo"].messages_used == 3


def test_quota_rolls_over_with_the_period():
    core = Core(with_plan(max_messages_per_period=1, period_seconds=10))
    conn = core.connect(key="pk_live_demo")
    core.take(conn)
    core.send(conn, {"type": "publish", "channel": "a", "data": 1})
    assert core.send(conn, {"type": "publish", "channel": "a", "data": 1, "requestId": "x"})[
        0]["code"] == "over_message_quota"
    core.now += 10
    assert core.send(conn, {"type": "publish", "channel": "a", "data": 1, "requestId": "y"}) == [
        {"type": "ack", "requestId": "y"}]


# -- counters and events ------------------------------------------------------------------

def test_errors_are_counted_and_logged_with_op_and_request_id():
    core = Core()
    conn = core.connect(key="pk_live_demo")
    core.send(conn, {"type": "publish", "channel": "_system/a", "data": 1, "requestId": "r"})
    assert core.service.stats.app("app_demo").errors["channel_reserved"] == 1
    [event] = core.events.of_kind("error")
    assert event == {"t": NOW, "event": "error", "conn": conn.id, "peer": conn.peer_id,
                     "app": "app_demo", "op": "publish", "code": "channel_reserved",
                     "requestId": "r"}
    [connect] = core.events.of_kind("connect")
    assert connect["keyType"] == "publishable" and connect["peer"] == conn.peer_id
