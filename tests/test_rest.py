"""The REST control plane (PROTOCOL.md section 8) and `/sim/v1`, over real HTTP.

Every test talks to a real `rtmsim serve` process. Tests that need exact counters use
their own app in `multi_server` (counters and ledgers are per app) or a fresh server;
`demo_server` serves the checks that do not depend on what other tests did.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from typing import Any

import jwt
import pytest
from serverproc import ServerProcess, start_server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

DEMO_SECRET = "sk_id_demo:sk_secret_demo"
RECV_TIMEOUT_S = 5
MAX_FRAMES = 50  # no helper reads more than this many frames looking for one

MULTI_CONFIG = """
[[apps]]
id = "app_quota"
[apps.plan]
max_messages_per_period = 2
[[apps.keys]]
id = "pk_quota"
[[apps.keys]]
id = "sk_id_quota"
secret = "sk_secret_quota"

[[apps]]
id = "app_over"
[apps.plan]
name = "pay-as-you-go"
max_messages_per_period = 1
max_concurrent_connections = 1
overages_allowed = true
overages_enabled = true
balance = 1.0
overage_price_per_message = 0.25
overage_price_per_connection = 0.125
[[apps.keys]]
id = "pk_over"
[[apps.keys]]
id = "sk_id_over"
secret = "sk_secret_over"

[[apps]]
id = "app_usage"
[apps.plan]
name = "hourly"
period_seconds = 3600
max_concurrent_connections = 50
max_messages_per_period = 1000
[[apps.keys]]
id = "pk_usage"
[[apps.keys]]
id = "sk_id_usage"
secret = "sk_secret_usage"

[[apps]]
id = "app_stats"
[[apps.keys]]
id = "pk_stats"
[[apps.keys]]
id = "sk_id_stats"
secret = "sk_secret_stats"

[[apps]]
id = "app_kick"
[[apps.keys]]
id = "sk_id_kick"
secret = "sk_secret_kick"

[[apps]]
id = "app_kick_other"
[[apps.keys]]
id = "sk_id_kick_other"
secret = "sk_secret_kick_other"
"""

USAGE_FIELDS = {"appId", "periodStartUnix", "periodEndUnix", "concurrentNow",
                "peakConcurrent", "messagesUsed", "overageMessages", "overageConnections",
                "balance", "plan"}
PLAN_FIELDS = {"name", "maxConcurrentConnections", "maxMessagesPerPeriod", "overagesAllowed",
               "overagesEnabled"}
COUNTER_FIELDS = {"connections", "frames_in", "frames_out", "errors", "closes", "messages"}


@pytest.fixture(scope="module")
def multi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with an app per test that needs exact per-app counters."""
    server = start_server(MULTI_CONFIG, tmp=tmp_path_factory.mktemp("multi"))
    yield server
    server.stop()


# -- WebSocket helpers ------------------------------------------------------------------

def recv_json(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=RECV_TIMEOUT_S))


@contextmanager
def ws_client(server: ServerProcess, **params: str) -> Iterator[tuple[ClientConnection, dict]]:
    """A connected client and its `welcome` frame."""
    with connect(server.url(**params), open_timeout=RECV_TIMEOUT_S, close_timeout=2) as ws:
        welcome = recv_json(ws)
        assert welcome["type"] == "welcome", welcome
        yield ws, welcome


def request(ws: ClientConnection, frame: dict[str, Any], rid: str) -> dict[str, Any]:
    """Send a frame with `requestId` and return the ack/error that answers it."""
    ws.send(json.dumps({**frame, "requestId": rid}))
    for _ in range(MAX_FRAMES):
        reply = recv_json(ws)
        if reply.get("requestId") == rid:
            return reply
    raise AssertionError(f"no reply to {rid}")


def subscribe(ws: ClientConnection, channel: str, rid: str = "sub", **extra: Any) -> dict:
    """Subscribe and return the presence snapshot that follows the ack."""
    assert request(ws, {"type": "subscribe", "channel": channel, **extra}, rid) == {
        "type": "ack", "requestId": rid}
    snapshot = recv_json(ws)
    assert snapshot["type"] == "presence", snapshot
    return snapshot


def next_of_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    for _ in range(MAX_FRAMES):
        frame = recv_json(ws)
        if frame["type"] == kind:
            return frame
    raise AssertionError(f"no {kind} frame")


def close_code_after(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    """Read until the server closes; (frames read before the close, close code)."""
    frames = []
    try:
        for _ in range(MAX_FRAMES):
            frames.append(recv_json(ws))
    except ConnectionClosed as exc:
        return frames, exc.rcvd.code if exc.rcvd else None
    raise AssertionError(f"connection still open after {frames}")


def mint(server: ServerProcess, secret: str = DEMO_SECRET, **body: Any) -> dict[str, Any]:
    status, reply = server.http("POST", "/v1/tokens", body, token=secret)
    assert status == 200, reply
    return reply


def usage(server: ServerProcess, secret: str) -> dict[str, Any]:
    status, body = server.http("GET", "/v1/usage", token=secret)
    assert status == 200, body
    return body


# -- POST /v1/tokens ------------------------------------------------------------------

def test_token_defaults(demo_server):
    before = int(time.time())
    reply = mint(demo_server, peerId="alice")
    after = int(time.time())
    assert set(reply) == {"token", "expiresAt"}
    assert before + 3600 <= reply["expiresAt"] <= after + 3600
    header = jwt.get_unverified_header(reply["token"])
    assert header["alg"] == "HS256"
    assert header["kid"] == "sk_id_demo"
    claims = jwt.decode(reply["token"], "sk_secret_demo", algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] == reply["expiresAt"]
    # No channels/permissions/metadata claims: the key's scope applies (PROTOCOL 1).
    assert not {"channels", "permissions", "metadata", "peerMetadata"} & set(claims)


def test_token_connects_with_its_peer_id_expiry_and_metadata(demo_server):
    metadata = {"plan": "gold", "n": 1}
    reply = mint(demo_server, peerId="tok-conn", metadata=metadata, expiresInSec=600)
    with ws_client(demo_server, token=reply["token"]) as (ws, welcome):
        assert welcome["peerId"] == "tok-conn"
        assert welcome["expiresAt"] == reply["expiresAt"]
        assert welcome["metadata"] == metadata
        assert request(ws, {"type": "publish", "channel": "any/where", "data": 1}, "p") == {
            "type": "ack", "requestId": "p"}


def test_token_without_metadata_has_no_welcome_metadata(demo_server):
    reply = mint(demo_server, peerId="tok-plain")
    with ws_client(demo_server, token=reply["token"]) as (_, welcome):
        assert welcome["peerId"] == "tok-plain"
        assert "metadata" not in welcome


def test_token_channels_limit_the_connection(demo_server):
    reply = mint(demo_server, peerId="tok-chan", channels=["room/*"])
    assert jwt.decode(reply["token"], "sk_secret_demo", algorithms=["HS256"])[
        "channels"] == ["room/*"]
    with ws_client(demo_server, token=reply["token"]) as (ws, _):
        assert request(ws, {"type": "publish", "channel": "room/1", "data": 1}, "ok") == {
            "type": "ack", "requestId": "ok"}
        reply = request(ws, {"type": "publish", "channel": "lobby", "data": 1}, "no")
        assert reply["code"] == "channel_not_authorized"


def test_token_permissions_limit_the_connection(demo_server):
    reply = mint(demo_server, peerId="tok-perm", permissions=["subscribe"])
    with ws_client(demo_server, token=reply["token"]) as (ws, _):
        assert request(ws, {"type": "subscribe", "channel": "p"}, "s") == {
            "type": "ack", "requestId": "s"}
        reply = request(ws, {"type": "publish", "channel": "p", "data": 1}, "p")
        assert reply["type"] == "error"
        assert reply["code"] == "action_not_permitted"


@pytest.mark.parametrize("ttl", [1800, 86400])
def test_token_expires_in_sec(demo_server, ttl):
    before = int(time.time())
    reply = mint(demo_server, peerId="tok-ttl", expiresInSec=ttl)
    assert before + ttl <= reply["expiresAt"] <= int(time.time()) + ttl


@pytest.mark.parametrize("ttl", [86401, 0, -5, 1.5, "60", True, None])
def test_token_invalid_expires_in_sec(demo_server, ttl):
    status, body = demo_server.http("POST", "/v1/tokens",
                                    {"peerId": "x", "expiresInSec": ttl}, token=DEMO_SECRET)
    assert (status, body["error"]) == (400, "invalid_request")
    assert "expiresInSec" in body["message"]


def _object_of_size(n: int) -> dict[str, str]:
    """A JSON object whose compact encoding is exactly n bytes."""
    obj = {"k": "x" * (n - len('{"k":""}'))}
    assert len(json.dumps(obj, separators=(",", ":"))) == n
    return obj


@pytest.mark.parametrize(("field", "limit"), [("metadata", 8192), ("peerMetadata", 4096)])
def test_token_metadata_size_limit(demo_server, field, limit):
    ok = demo_server.http("POST", "/v1/tokens", {"peerId": "m", field: _object_of_size(limit)},
                          token=DEMO_SECRET)
    assert ok[0] == 200, ok[1]
    status, body = demo_server.http("POST", "/v1/tokens",
                                    {"peerId": "m", field: _object_of_size(limit + 1)},
                                    token=DEMO_SECRET)
    assert (status, body["error"]) == (400, "invalid_request")
    assert body["message"] == f"{field}: larger than {limit} bytes"


@pytest.mark.parametrize("field", ["metadata", "peerMetadata"])
def test_token_metadata_must_be_an_object(demo_server, field):
    status, body = demo_server.http("POST", "/v1/tokens", {"peerId": "m", field: [1]},
                                    token=DEMO_SECRET)
    assert (status, body) == (400, {"error": "invalid_request",
                                    "message": f"{field}: must be an object"})


@pytest.mark.parametrize("peer_id", [None, "", "x" * 129, "caf\u00e9", "a\nb", "a\tb", 42,
                                     ["a"]])
def test_token_invalid_peer_id(demo_server, peer_id):
    body = {} if peer_id is None else {"peerId": peer_id}
    status, reply = demo_server.http("POST", "/v1/tokens", body, token=DEMO_SECRET)
    assert (status, reply["error"]) == (400, "invalid_peer_id")
    assert reply["message"].startswith("peerId: ")


def test_token_peer_id_of_128_printable_ascii(demo_server):
    peer_id = "~" + "a" * 126 + " "
    reply = mint(demo_server, peerId=peer_id)
    with ws_client(demo_server, token=reply["token"]) as (_, welcome):
        assert welcome["peerId"] == peer_id


@pytest.mark.parametrize(("field", "value"), [
    ("channels", "room/*"), ("channels", [""]), ("channels", [1]),
    ("permissions", ["fly"]), ("permissions", "publish"),
])
def test_token_invalid_scope(demo_server, field, value):
    status, body = demo_server.http("POST", "/v1/tokens", {"peerId": "x", field: value},
                                    token=DEMO_SECRET)
    assert (status, body["error"]) == (400, "invalid_request")
    assert body["message"].startswith(f"{field}: ")


# -- GET /v1/channels/{channel}/peers -----------------------------------------------------

def test_peers_of_an_empty_channel(demo_server):
    status, body = demo_server.http("GET", "/v1/channels/room%2Fnobody-here/peers",
                                    token=DEMO_SECRET)
    assert (status, body) == (200, {"channel": "room/nobody-here", "peers": []})


def test_peers_with_metadata_after_subscribers_join(demo_server):
    alice = mint(demo_server, peerId="peers-alice", peerMetadata={"name": "Alice"})["token"]
    bob = mint(demo_server, peerId="peers-bob")["token"]
    with (ws_client(demo_server, token=alice) as (a, _),
          ws_client(demo_server, token=bob) as (b, _),
          ws_client(demo_server, key="pk_live_demo") as (c, c_welcome)):
        subscribe(a, "room/1")
        subscribe(b, "room/1")
        subscribe(c, "room/1")
        status, body = demo_server.http("GET", "/v1/channels/room%2F1/peers",
                                        token=DEMO_SECRET)
        assert status == 200
        assert body["channel"] == "room/1"
        assert sorted(body["peers"], key=lambda p: p["peerId"]) == sorted([
            {"peerId": "peers-alice", "metadata": {"name": "Alice"}},
            {"peerId": "peers-bob"},
            {"peerId": c_welcome["peerId"]},
        ], key=lambda p: p["peerId"])
        # The unencoded `/` path is a different route: it does not exist.
        status, body = demo_server.http("GET", "/v1/channels/room/1/peers", token=DEMO_SECRET)
        assert (status, body["error"]) == (404, "not_found")


def test_peers_counts_a_peer_once_across_connections(demo_server):
    token = mint(demo_server, peerId="peers-twice")["token"]
    with ws_client(demo_server, token=token) as (a, _), \
            ws_client(demo_server, token=token) as (b, _):
        subscribe(a, "room/twice")
        subscribe(b, "room/twice")
        status, body = demo_server.http("GET", "/v1/channels/room%2Ftwice/peers",
                                        token=DEMO_SECRET)
        assert (status, body) == (200, {"channel": "room/twice",
                                        "peers": [{"peerId": "peers-twice"}]})


@pytest.mark.parametrize(("path_channel", "status", "code"), [
    ("a%01b", 400, "invalid_channel"),
    ("a%7Fb", 400, "invalid_channel"),
    ("x" * 257, 400, "invalid_channel"),
    ("_metered%2Fx", 403, "channel_reserved"),
    ("_SYSTEM%2Fx", 403, "channel_reserved"),
    ("_internal%2Fa%2Fb", 403, "channel_reserved"),
])
def test_peers_of_an_invalid_or_reserved_channel(demo_server, path_channel, status, code):
    got, body = demo_server.http("GET", f"/v1/channels/{path_channel}/peers",
                                 token=DEMO_SECRET)
    assert (got, body["error"]) == (status, code)
    assert set(body) == {"error", "message"}


def test_peers_of_a_256_byte_channel(demo_server):
    channel = "x" * 256
    status, body = demo_server.http("GET", f"/v1/channels/{channel}/peers", token=DEMO_SECRET)
    assert (status, body) == (200, {"channel": channel, "peers": []})


def test_peers_are_per_app(multi_server):
    kick = mint(multi_server, "sk_id_kick:sk_secret_kick", peerId="app-scoped")["token"]
    with ws_client(multi_server, token=kick) as (ws, _):
        subscribe(ws, "shared")
        status, body = multi_server.http("GET", "/v1/channels/shared/peers",
                                         token="sk_id_kick_other:sk_secret_kick_other")
        assert (status, body) == (200, {"channel": "shared", "peers": []})
        status, body = multi_server.http("GET", "/v1/channels/shared/peers",
                                         token="sk_id_kick:sk_secret_kick")
        assert (status, body) == (200, {"channel": "shared",
                                        "peers": [{"peerId": "app-scoped"}]})


# -- POST /v1/channels/{channel}/publish ----------------------------------------------------

def test_publish_delivers_to_every_subscriber(demo_server):
    with ExitStack() as stack:
        subs = [stack.enter_context(ws_client(demo_server, key="pk_live_demo"))[0]
                for _ in range(3)]
        (idle, _) = stack.enter_context(ws_client(demo_server, key="pk_live_demo"))
        for ws in subs:
            subscribe(ws, "news/today")
        status, body = demo_server.http("POST", "/v1/channels/news%2Ftoday/publish",
                                        {"data": {"headline": "hi"}}, token=DEMO_SECRET)
        assert (status, body) == (200, {"channel": "news/today", "delivered": 3})
        for ws in subs:
            assert next_of_type(ws, "message") == {
                "type": "message", "channel": "news/today", "from": "system",
                "data": {"headline": "hi"}}
        # The idle client got nothing: its next frame answers its own ping.
        idle.send(json.dumps({"type": "ping"}))
        assert recv_json(idle) == {"type": "pong"}


def test_publish_to_a_channel_without_subscribers(demo_server):
    status, body = demo_server.http("POST", "/v1/channels/empty-room/publish", {"data": 1},
                                    token=DEMO_SECRET)
    assert (status, body) == (200, {"channel": "empty-room", "delivered": 0})


def test_publish_from_and_peer_metadata(demo_server):
    with ws_client(demo_server, key="pk_live_demo") as (plain, _), \
            ws_client(demo_server, key="pk_live_demo") as (meta, _):
        subscribe(plain, "meta-room")
        subscribe(meta, "meta-room", includeSenderMetadata=True)
        status, body = demo_server.http(
            "POST", "/v1/channels/meta-room/publish",
            {"data": None, "from": "bot-7", "peerMetadata": {"role": "bot"}},
            token=DEMO_SECRET)
        assert (status, body) == (200, {"channel": "meta-room", "delivered": 2})
        assert next_of_type(plain, "message") == {
            "type": "message", "channel": "meta-room", "from": "bot-7", "data": None}
        assert next_of_type(meta, "message") == {
            "type": "message", "channel": "meta-room", "from": "bot-7", "data": None,
            "fromMetadata": {"role": "bot"}}


@pytest.mark.parametrize("body", [{}, {"from": "bot"}])
def test_publish_without_data(demo_server, body):
    status, reply = demo_server.http("POST", "/v1/channels/x/publish", body,
                                     token=DEMO_SECRET)
    assert (status, reply["error"]) == (400, "missing_data")
    assert set(reply) == {"error", "message"}


def test_publish_with_an_empty_body_is_missing_data(demo_server):
    status, reply = demo_server.http("POST", "/v1/channels/x/publish", raw=b"",
                                     token=DEMO_SECRET)
    assert (status, reply["error"]) == (400, "missing_data")


@pytest.mark.parametrize("sender", ["", "x" * 129, "caf\u00e9", 7])
def test_publish_invalid_from(demo_server, sender):
    status, reply = demo_server.http("POST", "/v1/channels/x/publish",
                                     {"data": 1, "from": sender}, token=DEMO_SECRET)
    assert (status, reply["error"]) == (400, "invalid_peer_id")


def test_publish_peer_metadata_over_4kb(demo_server):
    status, reply = demo_server.http(
        "POST", "/v1/channels/x/publish",
        {"data": 1, "peerMetadata": _object_of_size(4097)}, token=DEMO_SECRET)
    assert (status, reply) == (400, {"error": "invalid_request",
                                     "message": "peerMetadata: larger than 4096 bytes"})


@pytest.mark.parametrize(("path_channel", "status", "code"), [
    ("_metered%2Fnews", 403, "channel_reserved"),
    ("a%00", 400, "invalid_channel"),
])
def test_publish_to_an_invalid_or_reserved_channel(demo_server, path_channel, status, code):
    got, body = demo_server.http("POST", f"/v1/channels/{path_channel}/publish", {"data": 1},
                                 token=DEMO_SECRET)
    assert (got, body["error"]) == (status, code)


def test_publish_over_quota(multi_server):
    secret = "sk_id_quota:sk_secret_quota"
    for _ in range(2):
        status, body = multi_server.http("POST", "/v1/channels/q/publish", {"data": 1},
                                         token=secret)
        assert (status, body) == (200, {"channel": "q", "delivered": 0})
    status, body = multi_server.http("POST", "/v1/channels/q/publish", {"data": 1},
                                     token=secret)
    assert (status, body["error"]) == (429, "over_message_quota")
    assert set(body) == {"error", "message"}
    # The rejected attempt counts too (PROTOCOL 7); a socket publish is now refused as well.
    assert usage(multi_server, secret)["messagesUsed"] == 3
    with ws_client(multi_server, key="pk_quota") as (ws, _):
        reply = request(ws, {"type": "publish", "channel": "q", "data": 1}, "p")
        assert reply["code"] == "over_message_quota"
    assert usage(multi_server, secret)["messagesUsed"] == 4
    app = multi_server.stats()["apps"]["app_quota"]
    assert app["errors"] == {"over_message_quota": 2}
    assert app["messages"]["published"] == 2


def test_publish_deeply_nested_data_to_a_subscriber(server_factory):
    server = server_factory()
    depth = 300
    raw = ('{"data":' + "[" * depth + "]" * depth + "}").encode()
    with ws_client(server, key="pk_live_demo") as (ws, _):
        subscribe(ws, "deep-rest")
        status, body = server.http("POST", "/v1/channels/deep-rest/publish", raw=raw,
                                   token=DEMO_SECRET)
        assert (status, body) == (200, {"channel": "deep-rest", "delivered": 1})


# -- DELETE /v1/peers/{peerId} ----------------------------------------------------------

def test_kick_closes_every_connection_of_the_peer_with_4020(multi_server):
    secret = "sk_id_kick:sk_secret_kick"
    token = mint(multi_server, secret, peerId="kick-me")["token"]
    bystander = mint(multi_server, secret, peerId="kick-bystander")["token"]
    other_app = mint(multi_server, "sk_id_kick_other:sk_secret_kick_other",
                     peerId="kick-me")["token"]
    with (ws_client(multi_server, token=token) as (a, _),
          ws_client(multi_server, token=token) as (b, _),
          ws_client(multi_server, token=bystander) as (c, _),
          ws_client(multi_server, token=other_app) as (d, _)):
        status, body = multi_server.http("DELETE", "/v1/peers/kick-me", token=secret)
        assert (status, body) == (200, {"peerId": "kick-me", "closed": 2})
        assert close_code_after(a) == ([], 4020)
        assert close_code_after(b) == ([], 4020)
        for ws in (c, d):  # another peer, and the same peerId in another app, stay
            ws.send(json.dumps({"type": "ping"}))
            assert recv_json(ws) == {"type": "pong"}
    assert multi_server.stats()["apps"]["app_kick"]["closes"] == {"4020": 2}


def test_kick_an_unknown_peer_is_success(demo_server):
    status, body = demo_server.http("DELETE", "/v1/peers/nobody-at-all", token=DEMO_SECRET)
    assert (status, body) == (200, {"peerId": "nobody-at-all", "closed": 0})


def test_kick_an_encoded_peer_id(demo_server):
    token = mint(demo_server, peerId="a b/c")["token"]
    with ws_client(demo_server, token=token) as (ws, _):
        status, body = demo_server.http("DELETE", "/v1/peers/a%20b%2Fc", token=DEMO_SECRET)
        assert (status, body) == (200, {"peerId": "a b/c", "closed": 1})
        assert close_code_after(ws) == ([], 4020)


def test_kick_an_invalid_peer_id(demo_server):
    status, body = demo_server.http("DELETE", "/v1/peers/a%01b", token=DEMO_SECRET)
    assert (status, body["error"]) == (400, "invalid_peer_id")


# -- GET /v1/usage ------------------------------------------------------------------------

def test_usage_fields(multi_server):
    before = int(time.time())
    body = usage(multi_server, "sk_id_usage:sk_secret_usage")
    assert set(body) == USAGE_FIELDS
    assert set(body["plan"]) == PLAN_FIELDS
    assert body["appId"] == "app_usage"
    assert body["periodStartUnix"] <= before
    assert body["periodEndUnix"] - body["periodStartUnix"] == 3600
    assert body["plan"] == {"name": "hourly", "maxConcurrentConnections": 50,
                            "maxMessagesPerPeriod": 1000, "overagesAllowed": False,
                            "overagesEnabled": False}
    assert (body["overageMessages"], body["overageConnections"], body["balance"]) == (0, 0, 0)


def test_usage_counts_connections_and_messages(multi_server):
    secret = "sk_id_usage:sk_secret_usage"
    start = usage(multi_server, secret)
    assert (start["concurrentNow"], start["peakConcurrent"], start["messagesUsed"]) == (0, 0, 0)
    with ws_client(multi_server, key="pk_usage") as (watcher, _):
        subscribe(watcher, "usage-watch")
        with ws_client(multi_server, key="pk_usage") as (a, a_welcome), \
                ws_client(multi_server, key="pk_usage") as (b, _):
            now = usage(multi_server, secret)
            assert (now["concurrentNow"], now["peakConcurrent"]) == (3, 3)
            subscribe(a, "usage-watch")
            next_of_type(watcher, "presence")  # a joined
            for i in range(3):
                assert request(b, {"type": "publish", "channel": "c", "data": i}, f"p{i}")[
                    "type"] == "ack"
            assert request(b, {"type": "send", "to": a_welcome["peerId"], "data": 0},
                           "s")["type"] == "ack"
            # Invalid requests never reach the quota check: not counted.
            assert request(b, {"type": "publish", "channel": "", "data": 0}, "bad")[
                "code"] == "invalid_channel"
            assert request(b, {"type": "publish", "channel": "c"}, "nodata")[
                "code"] == "missing_data"
            status, _ = multi_server.http("POST", "/v1/channels/c/publish", {"data": 1},
                                          token=secret)
            assert status == 200
            assert usage(multi_server, secret)["messagesUsed"] == 5
            b.close()
        # `left` reaches the watcher after the server released both connections.
        assert next_of_type(watcher, "presence")["left"] == [{"peerId": a_welcome["peerId"]}]
        after = usage(multi_server, secret)
        assert (after["concurrentNow"], after["peakConcurrent"], after["messagesUsed"]) == (
            1, 3, 5)


def test_usage_overages_and_balance(multi_server):
    secret = "sk_id_over:sk_secret_over"
    for _ in range(3):
        status, _ = multi_server.http("POST", "/v1/channels/o/publish", {"data": 1},
                                      token=secret)
        assert status == 200
    body = usage(multi_server, secret)
    assert (body["messagesUsed"], body["overageMessages"], body["balance"]) == (3, 2, 0.5)
    with ws_client(multi_server, key="pk_over"), ws_client(multi_server, key="pk_over"):
        body = usage(multi_server, secret)
        assert (body["concurrentNow"], body["peakConcurrent"]) == (2, 2)
        assert (body["overageConnections"], body["balance"]) == (1, 0.375)
    assert body["plan"] == {"name": "pay-as-you-go", "maxConcurrentConnections": 1,
                            "maxMessagesPerPeriod": 1, "overagesAllowed": True,
                            "overagesEnabled": True}


# -- auth and generic errors ------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/v1/tokens", {"peerId": "x"}),
    ("GET", "/v1/channels/a/peers", None),
    ("POST", "/v1/channels/a/publish", {"data": 1}),
    ("DELETE", "/v1/peers/x", None),
    ("GET", "/v1/usage", None),
]
BAD_AUTH = {
    "no header": {},
    "wrong secret": {"Authorization": "Bearer sk_id_demo:sk_secret_nope"},
    "secret id only": {"Authorization": "Bearer sk_id_demo"},
    "empty secret": {"Authorization": "Bearer sk_id_demo:"},
    "publishable key": {"Authorization": "Bearer pk_live_demo"},
    "publishable key with colon": {"Authorization": "Bearer pk_live_demo:"},
    "unknown key": {"Authorization": "Bearer sk_id_nope:sk_secret_demo"},
    "basic scheme": {"Authorization": "Basic sk_id_demo:sk_secret_demo"},
    "no scheme": {"Authorization": "sk_id_demo:sk_secret_demo"},
    "bearer only": {"Authorization": "Bearer"},
    "secret as id": {"Authorization": "Bearer sk_secret_demo:sk_id_demo"},
}


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize("headers", BAD_AUTH.values(), ids=BAD_AUTH.keys())
def test_auth_failure_is_401_unauthorized(demo_server, method, path, body, headers):
    status, reply = demo_server.http(method, path, body, headers=headers)
    assert status == 401
    assert reply["error"] == "unauthorized"
    assert set(reply) <= {"error", "message"}


def test_auth_failure_kicks_nobody(demo_server):
    with ws_client(demo_server, key="pk_live_demo") as (ws, welcome):
        status, _ = demo_server.http("DELETE", f"/v1/peers/{welcome['peerId']}",
                                     headers=BAD_AUTH["wrong secret"])
        assert status == 401
        ws.send(json.dumps({"type": "ping"}))
        assert recv_json(ws) == {"type": "pong"}


def test_body_over_32kb_is_413(demo_server):
    status, body = demo_server.http("POST", "/v1/tokens",
                                    {"peerId": "x", "pad": "x" * (32 * 1024)},
                                    token=DEMO_SECRET)
    assert (status, body["error"]) == (413, "payload_too_large")
    assert set(body) == {"error", "message"}


def test_body_of_exactly_32kb_is_accepted(demo_server):
    prefix = '{"peerId":"x","pad":"'
    raw = (prefix + "x" * (32 * 1024 - len(prefix) - 2) + '"}').encode()
    assert len(raw) == 32 * 1024
    status, body = demo_server.http("POST", "/v1/tokens", raw=raw, token=DEMO_SECRET)
    assert status == 200, body


@pytest.mark.parametrize(("path", "raw", "message"), [
    ("/v1/tokens", b"{not json", "body is not valid JSON"),
    ("/v1/tokens", b"[1, 2]", "body must be a JSON object"),
    ("/v1/channels/a/publish", b"{\"data\": ", "body is not valid JSON"),
    ("/v1/channels/a/publish", b"\"data\"", "body must be a JSON object"),
    ("/v1/channels/a/publish", b"\xff\xfe", "body is not valid JSON"),
])
def test_invalid_json_body_is_400(demo_server, path, raw, message):
    status, body = demo_server.http("POST", path, raw=raw, token=DEMO_SECRET)
    assert (status, body) == (400, {"error": "invalid_request", "message": message})


@pytest.mark.parametrize("path", ["/", "/v2/usage", "/v1/nope", "/v1/channels/a/peers/x",
                                  "/sim/v1/nope", "/v1/channels//peers"])
def test_unknown_path_is_404_json(demo_server, path):
    status, body = demo_server.http("GET", path, token=DEMO_SECRET)
    assert (status, body) == (404, {"error": "not_found", "message": "Not Found"})


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/tokens"), ("POST", "/v1/usage"),
                                              ("PUT", "/v1/peers/x"),
                                              ("GET", "/sim/v1/deploy")])
def test_wrong_method_is_405_json(demo_server, method, path):
    status, body = demo_server.http(method, path, token=DEMO_SECRET)
    assert (status, body) == (405, {"error": "method_not_allowed",
                                    "message": "Method Not Allowed"})


# -- /sim/v1/stats -----------------------------------------------------------------------

def test_sim_stats_fields(demo_server):
    body = demo_server.stats()
    assert {"totals", "apps", "instance", "serverTime", "usage"} <= set(body)
    assert abs(body["serverTime"] - time.time() * 1000) < 60_000
    for counters in (body["totals"], *body["apps"].values()):
        assert set(counters) == COUNTER_FIELDS
        assert set(counters["connections"]) == {"now", "peak", "total"}
        assert set(counters["messages"]) == {"published", "sent", "delivered"}
    assert set(body["usage"]) == {"app_demo"}
    assert set(body["usage"]["app_demo"]) == USAGE_FIELDS


def test_sim_stats_match_what_clients_saw(multi_server):
    with ws_client(multi_server, key="pk_stats") as (a, _), \
            ws_client(multi_server, key="pk_stats") as (b, b_welcome):
        subscribe(a, "s")
        for i in range(3):
            assert request(b, {"type": "publish", "channel": "s", "data": i}, f"p{i}")[
                "type"] == "ack"
        got = [next_of_type(a, "message")["data"] for _ in range(3)]
        assert got == [0, 1, 2]
        b.send("not json")
        assert recv_json(b)["code"] == "malformed_message"
        assert request(b, {"type": "fly"}, "u")["code"] == "unknown_type"
        b.send(json.dumps({"type": "ping"}))
        assert recv_json(b) == {"type": "pong"}
        status, body = multi_server.http("POST", "/v1/channels/s/publish", {"data": "rest"},
                                         token="sk_id_stats:sk_secret_stats")
        assert (status, body["delivered"]) == (200, 1)
        assert next_of_type(a, "message")["data"] == "rest"
        status, _ = multi_server.http("DELETE", f"/v1/peers/{b_welcome['peerId']}",
                                      token="sk_id_stats:sk_secret_stats")
        assert status == 200
        assert close_code_after(b) == ([], 4020)
        stats = multi_server.stats()
    app = stats["apps"]["app_stats"]
    assert app["connections"]["peak"] == 2
    assert app["connections"]["total"] == 2
    assert app["frames_in"] == {"subscribe": 1, "publish": 3, "invalid": 1, "unknown": 1,
                                "ping": 1}
    assert app["frames_out"] == {"welcome": 2, "ack": 4, "presence": 1, "message": 4,
                                 "error": 2, "pong": 1}
    assert app["errors"] == {"malformed_message": 1, "unknown_type": 1}
    assert app["closes"] == {"4020": 1}
    assert app["messages"] == {"published": 4, "sent": 0, "delivered": 4}
    assert stats["usage"]["app_stats"]["messagesUsed"] == 4
    totals = stats["totals"]
    assert totals["frames_in"]["publish"] >= 3
    assert totals["closes"]["4020"] >= 1


# -- /sim/v1/deploy ----------------------------------------------------------------------

def test_deploy_closes_the_fraction_with_going_away(server_factory):
    server = server_factory()
    with ExitStack() as stack:
        clients = [stack.enter_context(ws_client(server, key="pk_live_demo"))[0]
                   for _ in range(10)]
        status, body = server.http("POST", "/sim/v1/deploy",
                                   {"retryAfterMs": 1234, "fraction": 0.5})
        assert (status, body) == (200, {"closed": 5, "retryAfterMs": 1234, "fraction": 0.5})
        closed = kept = 0
        for ws in clients:
            with suppress(ConnectionClosed):
                ws.send(json.dumps({"type": "ping"}))
            try:
                first = recv_json(ws)
            except ConnectionClosed as exc:  # pragma: no cover - going_away must come first
                raise AssertionError(f"closed {exc.rcvd} without going_away") from None
            if first == {"type": "pong"}:
                kept += 1
                continue
            assert first == {"type": "going_away", "retryAfterMs": 1234}
            assert close_code_after(ws) == ([], 1001)
            closed += 1
        assert (closed, kept) == (5, 5)
        with ws_client(server, key="pk_live_demo") as (fresh, _):
            assert request(fresh, {"type": "publish", "channel": "a", "data": 1}, "p") == {
                "type": "ack", "requestId": "p"}
    assert server.stats()["apps"]["app_demo"]["closes"] == {"1001": 5}


def test_deploy_defaults_to_everyone(server_factory):
    server = server_factory()
    with ws_client(server, key="pk_live_demo") as (a, _), \
            ws_client(server, key="pk_live_demo") as (b, _):
        status, body = server.http("POST", "/sim/v1/deploy", raw=b"")
        assert (status, body) == (200, {"closed": 2, "retryAfterMs": 1000, "fraction": 1.0})
        for ws in (a, b):
            assert close_code_after(ws) == ([{"type": "going_away", "retryAfterMs": 1000}],
                                            1001)


@pytest.mark.parametrize("body", [
    {"fraction": 0}, {"fraction": 1.5}, {"fraction": -0.5}, {"fraction": "half"},
    {"fraction": True}, {"fraction": None}, {"retryAfterMs": -1}, {"retryAfterMs": 1.5},
    {"retryAfterMs": "100"}, {"retryAfterMs": False}, [0.5], "deploy",
])
def test_deploy_invalid_body_is_400_and_closes_nothing(demo_server, body):
    with ws_client(demo_server, key="pk_live_demo") as (ws, _):
        status, reply = demo_server.http("POST", "/sim/v1/deploy", body)
        assert (status, reply["error"]) == (400, "invalid_request")
        ws.send(json.dumps({"type": "ping"}))
        assert recv_json(ws) == {"type": "pong"}


def test_deploy_invalid_json_is_400(demo_server):
    status, reply = demo_server.http("POST", "/sim/v1/deploy", raw=b"{fraction: 1}")
    assert (status, reply) == (400, {"error": "invalid_request",
                                     "message": "body is not valid JSON"})


# -- --sim-token ------------------------------------------------------------------------

def test_sim_token_guards_sim_endpoints_only(server_factory):
    server = server_factory(None, "--sim-token", "T0ken")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "T0ken"},
                    {"Authorization": "Bearer " + DEMO_SECRET}):
        status, body = server.http("GET", "/sim/v1/stats", headers=headers)
        assert (status, body["error"]) == (401, "unauthorized")
    with ws_client(server, key="pk_live_demo") as (ws, _):
        status, body = server.http("POST", "/sim/v1/deploy", {"fraction": 1.0})
        assert (status, body["error"]) == (401, "unauthorized")
        ws.send(json.dumps({"type": "ping"}))
        assert recv_json(ws) == {"type": "pong"}  # the refused deploy closed nothing
        status, body = server.http("GET", "/sim/v1/stats", token="T0ken")
        assert status == 200
        assert body["totals"]["connections"]["now"] == 1
        # /v1 still takes the app's secret key, and not the sim token.
        assert server.http("GET", "/v1/usage", token=DEMO_SECRET)[0] == 200
        assert server.http("GET", "/v1/usage", token="T0ken")[0] == 401
        status, body = server.http("POST", "/sim/v1/deploy", {"retryAfterMs": 5},
                                   token="T0ken")
        assert (status, body["closed"]) == (200, 1)
        assert close_code_after(ws) == ([{"type": "going_away", "retryAfterMs": 5}], 1001)


def test_sim_endpoints_open_without_sim_token(demo_server):
    status, _ = demo_server.http("GET", "/sim/v1/stats")
    assert status == 200


# -- event log ---------------------------------------------------------------------------

def test_event_log_records_rest_calls(server_factory):
    server = server_factory()
    assert server.http("GET", "/v1/usage", token=DEMO_SECRET)[0] == 200
    assert server.http("GET", "/v1/usage")[0] == 401
    assert server.http("GET", "/v1/channels/room%2F1/peers", token=DEMO_SECRET)[0] == 200
    assert server.http("GET", "/nope")[0] == 404
    assert server.http("POST", "/sim/v1/deploy", {"fraction": 2})[0] == 400
    assert server.stop() == 0  # flushes the event log
    rest = [{k: e.get(k) for k in ("method", "path", "status", "app")}
            for e in server.events() if e["event"] == "rest"]
    assert rest == [
        {"method": "GET", "path": "/v1/usage", "status": 200, "app": "app_demo"},
        {"method": "GET", "path": "/v1/usage", "status": 401, "app": None},
        {"method": "GET", "path": "/v1/channels/room/1/peers", "status": 200,
         "app": "app_demo"},
        {"method": "GET", "path": "/nope", "status": 404, "app": None},
        {"method": "POST", "path": "/sim/v1/deploy", "status": 400, "app": None},
    ]


def test_server_log_has_no_tracebacks(demo_server, multi_server):
    """Runs last in this module: nothing above made a handler fail unexpectedly."""
    for server in (demo_server, multi_server):
        assert not [line for line in server.output if "Traceback" in line]
    assert demo_server.proc.poll() is None
    assert multi_server.proc.poll() is None
