"""Conformance over real sockets: every close code, and the frames before it.

PROTOCOL.md sections 1, 2 and 6. Rejections at connect send no frame at all; closes
of a live connection may be preceded by exactly the frames the protocol names
(`going_away` for 1001).
"""

from __future__ import annotations

import base64
import json
import signal
import time
from collections.abc import Iterator
from urllib.parse import quote

import jwt
import pytest
from serverproc import ServerProcess, served
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from wsclient import (
    DEMO_BEARER,
    DEMO_KEY,
    ClientPool,
    client_pool,
    expected_error,
    make_token,
    unique,
    wait_until,
    without_message,
)

MAX_FRAME = 65536


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def unsigned_token(sub: str) -> str:
    """An `alg: none` JWT (no signature), as an attacker would forge it."""
    header = {"alg": "none", "typ": "JWT", "kid": "sk_id_demo"}
    return f"{_b64(header)}.{_b64({'sub': sub, 'exp': int(time.time()) + 600})}."


# -- 4001: authentication failed at connect ----------------------------------------------

def auth_failures() -> dict[str, str]:
    now = int(time.time())
    good = make_token("alice")
    return {
        "unknown key": "key=pk_live_nope",
        "empty key": "key=",
        "secret key id as key": "key=sk_id_demo",
        "secret key id:secret as key": f"key={DEMO_BEARER}",
        "key given twice": f"key={DEMO_KEY}&key={DEMO_KEY}",
        "both key and token": f"key={DEMO_KEY}&token={good}",
        "neither key nor token": "",
        "only an unrelated parameter": "peer=alice",
        "empty token": "token=",
        "malformed token": "token=not.a.jwt",
        "token of one segment": "token=abc",
        "bad signature": "token=" + make_token("alice", secret="not_the_secret"),
        "unknown kid": "token=" + make_token("alice", secret_id="sk_id_nope"),
        "kid is a publishable key": "token=" + make_token("alice", secret_id=DEMO_KEY),
        "no kid": "token=" + make_token("alice", secret_id=None),
        "alg none": "token=" + unsigned_token("alice"),
        "alg HS512": "token=" + make_token("alice", algorithm="HS512"),
        "no sub": "token=" + make_token(None),
        "empty sub": "token=" + make_token(""),
        "sub of 129 bytes": "token=" + make_token("a" * 129),
        "sub not printable ASCII": "token=" + make_token("al\u00efce"),
        "exp null": "token=" + make_token("alice", exp=None),
        "exp not a number": "token=" + make_token("alice", exp="tomorrow"),
        # far ahead: the cases are built at collection, minutes before a long suite runs
        "nbf beyond the skew": "token=" + make_token("alice", nbf=now + 86400),
        "channels not a list": "token=" + make_token("alice", channels="room/*"),
        "channels with an empty name": "token=" + make_token("alice", channels=[""]),
        "unknown permission": "token=" + make_token("alice", permissions=["admin"]),
        "metadata not an object": "token=" + make_token("alice", metadata=[1]),
        "peerMetadata over 4 KB": "token=" + make_token("alice",
                                                       peerMetadata={"x": "y" * 4100}),
    }


AUTH_FAILURES = auth_failures()


@pytest.mark.parametrize("query", AUTH_FAILURES.values(), ids=AUTH_FAILURES.keys())
def test_auth_failure_closes_4001_without_frames(clients, query):
    assert clients.rejected(query) == ([], 4001)


def test_token_without_exp_claim_is_4001(clients):
    # make_token always sets exp; write this one by hand.
    token = jwt.encode({"sub": "alice"}, "sk_secret_demo", algorithm="HS256",
                       headers={"kid": "sk_id_demo"})
    assert clients.rejected(f"token={token}") == ([], 4001)


def test_token_with_metadata_near_the_8_kb_limit_is_welcomed(clients):
    metadata = {"blob": "m" * 7000}  # 7 KB of JSON, under the 8 KB limit
    client = clients.token(make_token("alice-meta", metadata=metadata))
    assert client.welcome["metadata"] == metadata


def test_token_with_metadata_over_8_kb_closes_4001(clients):
    token = make_token("alice-meta", metadata={"blob": "m" * 8200})
    assert clients.rejected(f"token={token}") == ([], 4001)


def test_nbf_within_the_clock_skew_is_accepted(clients):
    client = clients.token(make_token("alice-nbf", nbf=int(time.time()) + 3))
    assert client.peer_id == "alice-nbf"


def test_other_paths_are_404_at_upgrade(demo_server):
    base = demo_server.ws_url.removesuffix("/v1")
    with pytest.raises(InvalidStatus) as info:
        connect(f"{base}/v2?key={DEMO_KEY}", open_timeout=5, legacy=True)
    assert info.value.response.status_code == 404


# -- 4002: token expired --------------------------------------------------------------------


@pytest.mark.parametrize("exp_in", [-10.0, -0.5, 0.1],
                         ids=["expired 10 s ago", "expired 0.5 s ago", "expires in 100 ms"])
def test_expired_token_at_connect_closes_4002_without_welcome(clients, exp_in):
    token = make_token("alice-exp", ttl=0, exp=time.time() + exp_in)
    assert clients.rejected(f"token={token}") == ([], 4002)


def test_token_expiry_closes_4002_250_ms_before_exp(clients, demo_server):
    """Time-based by protocol: one bounded wait of at most ~1.75 s."""
    peer = unique("short")
    status, body = demo_server.http("POST", "/v1/tokens",
                                    {"peerId": peer, "expiresInSec": 2}, token=DEMO_BEARER)
    assert status == 200, body
    exp = body["expiresAt"]
    client = clients.token(body["token"])
    assert (client.welcome["peerId"], client.welcome["expiresAt"]) == (peer, exp)
    assert client.recv_until_closed(timeout=3) == ([], 4002)
    closed_at = time.time()
    # The server closes at exp - 0.25 s; the close cannot arrive before that (50 ms
    # tolerance for timer granularity) and arrives before exp.
    assert exp - 0.30 <= closed_at < exp


# -- 1009: frame too big ----------------------------------------------------------------------


def publish_frame_of(size: int, request_id: str) -> str:
    head = json.dumps({"type": "publish", "channel": "big", "requestId": request_id,
                       "data": ""})[:-2]  # up to the opening quote of `data`
    frame = head + "x" * (size - len(head) - 2) + '"}'
    assert len(frame.encode()) == size
    return frame


def test_frame_of_exactly_65536_bytes_is_accepted(clients):
    client = clients.key()
    client.send_raw(publish_frame_of(MAX_FRAME, "edge"))
    assert client.recv() == {"type": "ack", "requestId": "edge"}


def test_frame_over_65536_bytes_closes_1009(clients):
    client = clients.key()
    client.send_raw(publish_frame_of(MAX_FRAME + 1, "big"))
    assert client.recv_until_closed() == ([], 1009)


def test_frame_size_is_checked_before_json(clients):
    client = clients.key()
    client.send_raw("{" * (MAX_FRAME + 1))
    assert client.recv_until_closed() == ([], 1009)


def test_binary_frame_over_65536_bytes_closes_1009(clients):
    client = clients.key()
    client.send_raw(b"x" * (MAX_FRAME + 1))
    assert client.recv_until_closed() == ([], 1009)


# -- 4020: admin kick ---------------------------------------------------------------------------


def test_kick_closes_every_connection_of_the_peer_4020(clients, demo_server):
    peer = unique("kicked")
    token = make_token(peer)
    first, second, bystander = clients.token(token), clients.token(token), clients.key()
    status, body = demo_server.http("DELETE", f"/v1/peers/{quote(peer)}", token=DEMO_BEARER)
    assert (status, body) == (200, {"peerId": peer, "closed": 2})
    assert first.recv_until_closed() == ([], 4020)
    assert second.recv_until_closed() == ([], 4020)
    assert bystander.sync() == []


def test_kick_announces_left_to_the_channel(clients, demo_server):
    peer, channel = unique("kicked"), unique("room")
    target, watcher = clients.token(make_token(peer)), clients.key()
    for c in (watcher, target):
        assert c.request({"type": "subscribe", "channel": channel, "requestId": "s"})[
            "type"] == "ack"
        c.recv()  # snapshot
    assert watcher.recv()["joined"] == [{"peerId": peer}]
    status, _ = demo_server.http("DELETE", f"/v1/peers/{peer}", token=DEMO_BEARER)
    assert status == 200
    assert target.recv_until_closed() == ([], 4020)
    assert watcher.recv() == {"type": "presence", "channel": channel, "joined": [],
                              "left": [{"peerId": peer}]}


def test_kick_of_a_peer_without_connections_closes_none(demo_server):
    peer = unique("nobody")
    status, body = demo_server.http("DELETE", f"/v1/peers/{peer}", token=DEMO_BEARER)
    assert (status, body) == (200, {"peerId": peer, "closed": 0})


def test_kick_needs_the_secret_key(clients, demo_server):
    client = clients.key()
    for token in (None, "sk_id_demo:wrong", DEMO_KEY):
        status, body = demo_server.http("DELETE", f"/v1/peers/{client.peer_id}",
                                        token=token)
        assert (status, body["error"]) == (401, "unauthorized")
    assert client.sync() == []


# -- 4003, 4010, 4012: policy server ------------------------------------------------------------

POLICY_CONFIG = """
[server]
close_on_unauthorized = true

[[apps]]
id = "app_policy"

[[apps.keys]]
id = "pk_policy"
channel_patterns = ["public/*"]

[[apps.keys]]
id = "sk_id_policy"
secret = "sk_secret_policy"
channel_patterns = ["public/*"]

[[apps]]
id = "app_single"
plan = { max_concurrent_connections = 1 }

[[apps.keys]]
id = "pk_single"

[[apps.keys]]
id = "sk_id_single"
secret = "sk_secret_single"

[[apps]]
id = "app_suspended"
suspended = true

[[apps.keys]]
id = "pk_suspended"

[[apps.keys]]
id = "sk_id_suspended"
secret = "sk_secret_suspended"
"""


@pytest.fixture(scope="module")
def policy_server(tmp_path_factory) -> Iterator[ServerProcess]:
    with served(POLICY_CONFIG, tmp_path_factory.mktemp("policy")) as server:
        yield server


@pytest.fixture
def policy(policy_server) -> Iterator[ClientPool]:
    with client_pool(policy_server.ws_url) as pool:
        yield pool


@pytest.mark.parametrize("frame", [
    {"type": "subscribe", "channel": "private/x", "requestId": "u"},
    {"type": "publish", "channel": "private/x", "data": 1, "requestId": "u"},
    {"type": "subscribe", "channel": "**", "requestId": "u"},
], ids=["subscribe", "publish", "wildcard broader than the scope"])
def test_close_on_unauthorized_closes_4003_without_error_frame(policy, frame):
    client = policy.key("pk_policy")
    client.send(frame)
    assert client.recv_until_closed() == ([], 4003)


def test_close_on_unauthorized_keeps_other_errors_soft(policy):
    token = make_token("bob", secret_id="sk_id_policy", secret="sk_secret_policy",
                       permissions=["subscribe"])
    client = policy.token(token)
    frames = [
        ({"type": "subscribe", "channel": "_system/x", "requestId": "r"}, "channel_reserved"),
        ({"type": "publish", "channel": "public/x", "data": 1, "requestId": "p"},
         "action_not_permitted"),
        ({"type": "subscribe", "channel": "", "requestId": "i"}, "invalid_channel"),
    ]
    for frame, code in frames:
        reply = client.request(frame)
        assert without_message(reply) == expected_error(code, frame["requestId"])
    assert client.request({"type": "subscribe", "channel": "public/x", "requestId": "ok"}) == {
        "type": "ack", "requestId": "ok"}


def test_over_concurrent_limit_closes_4010_and_is_not_counted(policy, policy_server):
    bearer = "sk_id_single:sk_secret_single"
    first = policy.key("pk_single")
    assert policy.rejected("key=pk_single") == ([], 4010)
    token = make_token("carol", secret_id="sk_id_single", secret="sk_secret_single")
    assert policy.rejected(f"token={token}") == ([], 4010)

    def usage() -> dict:
        status, body = policy_server.http("GET", "/v1/usage", token=bearer)
        assert status == 200, body
        return body

    assert (usage()["concurrentNow"], usage()["overageConnections"]) == (1, 0)
    first.close()
    wait_until(lambda: usage()["concurrentNow"] == 0)
    assert policy.key("pk_single").welcome["type"] == "welcome"  # the slot is free again


def test_suspended_app_closes_4012_for_keys(policy):
    assert policy.rejected("key=pk_suspended") == ([], 4012)


def test_suspended_app_closes_4012_for_tokens(policy):
    token = make_token("dave", secret_id="sk_id_suspended", secret="sk_secret_suspended")
    assert policy.rejected(f"token={token}") == ([], 4012)


# -- 4011: token bucket --------------------------------------------------------------------------

BURST = 5
BUCKET_CONFIG = f"""
[limits]
rate_per_second = 0.001
burst = {BURST}
"""


@pytest.fixture(scope="module")
def bucket_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """A bucket of 5 frames that practically never refills (0.001 frames/s)."""
    with served(BUCKET_CONFIG, tmp_path_factory.mktemp("bucket")) as server:
        yield server


@pytest.fixture
def bucket(bucket_server) -> Iterator[ClientPool]:
    with client_pool(bucket_server.ws_url) as pool:
        yield pool


def test_burst_plus_one_frames_closes_4011(bucket):
    client = bucket.key()
    for _ in range(BURST + 1):
        client.send({"type": "ping"})
    assert client.recv_until_closed() == ([{"type": "pong"}] * BURST, 4011)


@pytest.mark.parametrize("last", [
    "not json", b"binary", {"type": "nope", "requestId": "x"},
    {"type": "publish", "channel": "", "requestId": "x"},
    {"type": "publish", "channel": "_system/x", "data": 1, "requestId": "x"},
    {"type": "publish", "channel": "a", "data": 1, "requestId": "x"},
], ids=["invalid JSON", "binary", "unknown type", "invalid channel", "reserved", "valid"])
def test_token_bucket_is_checked_before_everything(bucket, last):
    client = bucket.key()
    for _ in range(BURST):
        client.send({"type": "ping"})
    if isinstance(last, str | bytes):
        client.send_raw(last)
    else:
        client.send(last)
    assert client.recv_until_closed() == ([{"type": "pong"}] * BURST, 4011)


def test_rejected_frames_spend_tokens_too(bucket):
    client = bucket.key()
    for _ in range(BURST + 1):
        client.send_raw("not json")
    frames, code = client.recv_until_closed()
    assert ([without_message(f) for f in frames], code) == (
        [expected_error("malformed_message")] * BURST, 4011)


def test_each_connection_has_its_own_bucket(bucket):
    first, second = bucket.key(), bucket.key()
    for _ in range(BURST + 1):
        first.send({"type": "ping"})
    assert first.recv_until_closed()[1] == 4011
    assert second.sync() == []


# -- 1001: simulated deploy and shutdown ---------------------------------------------------------


def test_deploy_sends_going_away_then_closes_1001(server_factory):
    server = server_factory()
    with client_pool(server.ws_url) as pool:
        first, second = pool.key(), pool.token(make_token("erin"))
        status, body = server.http("POST", "/sim/v1/deploy",
                                   {"fraction": 1.0, "retryAfterMs": 1500})
        assert (status, body) == (200, {"closed": 2, "retryAfterMs": 1500, "fraction": 1.0})
        going_away = {"type": "going_away", "retryAfterMs": 1500}
        assert first.recv_until_closed() == ([going_away], 1001)
        assert second.recv_until_closed() == ([going_away], 1001)
        assert pool.key().welcome["type"] == "welcome"  # the server itself keeps running


def test_sigint_sends_going_away_then_closes_1001_and_exits_0(server_factory):
    server = server_factory()
    with client_pool(server.ws_url) as pool:
        first, second = pool.key(), pool.key()
        server.proc.send_signal(signal.SIGINT)
        going_away = {"type": "going_away", "retryAfterMs": 1000}
        assert first.recv_until_closed() == ([going_away], 1001)
        assert second.recv_until_closed() == ([going_away], 1001)
    assert server.proc.wait(timeout=15) == 0
