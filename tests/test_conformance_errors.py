"""Conformance over real sockets: every soft-drop error code and the validation order.

PROTOCOL.md sections 3 and 5. Each test sends frames on a real connection and pins
the exact error frame (everything but the human `message`) and that the connection
stays open. Quota errors live in test_conformance_quota.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serverproc import ServerProcess, served
from wsclient import (
    READONLY_KEY,
    Client,
    ClientPool,
    client_pool,
    expected_error,
    make_token,
    unique,
    wait_until,
    without_message,
)


def error_of(client: Client, frame) -> dict:
    """Send `frame` (JSON value or raw str/bytes); the error frame minus `message`."""
    if isinstance(frame, str | bytes):
        client.send_raw(frame)
    else:
        client.send(frame)
    return without_message(client.recv())


# -- malformed_message -----------------------------------------------------------------

MALFORMED = {
    "invalid JSON": "{\"type\": \"ping\"",
    "not JSON at all": "hello",
    "JSON array": "[{\"type\": \"ping\"}]",
    "JSON string": "\"ping\"",
    "JSON number": "42",
    "JSON null": "null",
    "type missing": {"channel": "a"},
    "type is a number": {"type": 5},
    "type is null": {"type": None},
    "type is a list": {"type": ["ping"]},
    "requestId empty": {"type": "ping", "requestId": ""},
    "requestId 129 ASCII bytes": {"type": "ping", "requestId": "r" * 129},
    "requestId 129 UTF-8 bytes in 43 chars": {"type": "ping", "requestId": "\u20ac" * 43},
    "requestId a number": {"type": "ping", "requestId": 7},
    "requestId true": {"type": "ping", "requestId": True},
    "requestId an object": {"type": "ping", "requestId": {"id": "x"}},
    "requestId a list": {"type": "ping", "requestId": ["x"]},
    "binary frame": b"{\"type\": \"ping\"}",
}


@pytest.mark.parametrize("frame", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_message_is_reported_without_request_id(clients, frame):
    client = clients.key()
    assert error_of(client, frame) == expected_error("malformed_message")
    assert client.sync() == []  # soft drop: the connection stays open


@pytest.mark.parametrize("request_id", ["r" * 128, "\u20ac" * 42 + "ab", "x"],
                         ids=["128 ASCII bytes", "128 UTF-8 bytes", "1 byte"])
def test_request_id_of_1_to_128_bytes_is_echoed(clients, request_id):
    client = clients.key()
    frame = {"type": "publish", "channel": unique("rid"), "data": 1, "requestId": request_id}
    assert client.request(frame) == {"type": "ack", "requestId": request_id}


# -- unknown_type ----------------------------------------------------------------------


def test_unknown_type_echoes_request_id(clients):
    client = clients.key()
    frame = {"type": "subscribe_all", "requestId": "u-1"}
    assert error_of(client, frame) == expected_error("unknown_type", "u-1")


def test_unknown_type_without_request_id_is_uncorrelated(clients):
    client = clients.key()
    assert error_of(client, {"type": "PING"}) == expected_error("unknown_type")
    assert client.sync() == []


# -- invalid_channel -------------------------------------------------------------------

MISSING = object()
BAD_CHANNELS = {
    "missing": MISSING,
    "null": None,
    "empty": "",
    "a number": 12,
    "257 ASCII bytes": "c" * 257,
    "258 UTF-8 bytes in 129 chars": "\u00e9" * 129,
    "U+0000": "room\x00a",
    "U+001F": "room\x1fa",
    "newline": "room\na",
    "U+007F": "room\x7fa",
    "U+0080": "room\x80a",
    "U+009F": "room\x9fa",
}


@pytest.mark.parametrize("op", ["subscribe", "unsubscribe", "publish"])
@pytest.mark.parametrize("channel", BAD_CHANNELS.values(), ids=BAD_CHANNELS.keys())
def test_invalid_channel(clients, op, channel):
    client = clients.key()
    frame = {"type": op, "requestId": "c-1", "data": "x"}
    if channel is not MISSING:
        frame["channel"] = channel
    assert error_of(client, frame) == expected_error("invalid_channel", "c-1")


GOOD_CHANNELS = {
    "256 ASCII bytes": "c" * 256,
    "256 UTF-8 bytes": "\u00e9" * 128,
    "U+00A0 is not a control char": "room\u00a0a",
    "emoji": "room/\U0001f600",
}


@pytest.mark.parametrize("channel", GOOD_CHANNELS.values(), ids=GOOD_CHANNELS.keys())
def test_channel_name_limits_accept_boundary_names(clients, channel):
    client = clients.key()
    frame = {"type": "subscribe", "channel": channel, "requestId": "ok"}
    assert client.request(frame) == {"type": "ack", "requestId": "ok"}


# -- invalid_peer_id -------------------------------------------------------------------

BAD_PEERS = {
    "missing": MISSING,
    "null": None,
    "empty": "",
    "a number": 42,
    "129 bytes": "p" * 129,
    "non-ASCII": "p\u00e9er",
    "control char": "peer\x01",
    "DEL": "peer\x7f",
    "tab": "peer\tx",
}


@pytest.mark.parametrize("to", BAD_PEERS.values(), ids=BAD_PEERS.keys())
def test_invalid_peer_id(clients, to):
    client = clients.key()
    frame = {"type": "send", "data": 1, "requestId": "p-1"}
    if to is not MISSING:
        frame["to"] = to
    assert error_of(client, frame) == expected_error("invalid_peer_id", "p-1")


@pytest.mark.parametrize("to", ["p" * 128, "a peer with spaces ~!"], ids=["128 bytes",
                                                                           "printable"])
def test_valid_but_absent_peer_id_is_peer_not_found(clients, to):
    client = clients.key()
    frame = {"type": "send", "to": to, "data": 1, "requestId": "p-2"}
    assert error_of(client, frame) == expected_error("peer_not_found", "p-2")


# -- peer_not_found --------------------------------------------------------------------


def test_send_to_a_peer_that_left_is_peer_not_found(clients):
    sender, target = clients.key(), clients.key()
    to = target.peer_id
    assert sender.request({"type": "send", "to": to, "data": 1, "requestId": "s1"}) == {
        "type": "ack", "requestId": "s1"}
    target.close()

    def gone():
        reply = sender.request({"type": "send", "to": to, "data": 1, "requestId": "s2"})
        return reply if reply["type"] == "error" else None

    # The server forgets the peer once it has processed the close: poll, bounded.
    assert without_message(wait_until(gone)) == expected_error("peer_not_found", "s2")


# -- missing_data ----------------------------------------------------------------------


def test_publish_without_data_is_missing_data(clients):
    client = clients.key()
    frame = {"type": "publish", "channel": unique("md"), "requestId": "d-1"}
    assert error_of(client, frame) == expected_error("missing_data", "d-1")


def test_send_without_data_is_missing_data(clients):
    sender, target = clients.key(), clients.key()
    frame = {"type": "send", "to": target.peer_id, "requestId": "d-2"}
    assert error_of(sender, frame) == expected_error("missing_data", "d-2")
    assert target.sync() == []


def test_null_data_is_data(clients):
    client = clients.key()
    frame = {"type": "publish", "channel": unique("md"), "data": None, "requestId": "d-3"}
    assert client.request(frame) == {"type": "ack", "requestId": "d-3"}


# -- channel_not_authorized ------------------------------------------------------------

OUTSIDE_READONLY = {
    "other prefix": "private/x",
    "star does not cross slash": "public/a/b",
    "prefix alone": "public",
    "wildcard text broader than the scope": "**",
    "case-sensitive": "Public/x",
}


@pytest.mark.parametrize("channel", OUTSIDE_READONLY.values(), ids=OUTSIDE_READONLY.keys())
def test_readonly_key_subscribing_outside_its_patterns(clients, channel):
    client = clients.key(READONLY_KEY)
    frame = {"type": "subscribe", "channel": channel, "requestId": "a-1"}
    assert error_of(client, frame) == expected_error("channel_not_authorized", "a-1")
    assert client.sync() == []


def test_token_channels_narrow_the_key_scope_for_subscribe(clients):
    client = clients.token(make_token(unique("peer"), channels=["room/*"]))
    frame = {"type": "subscribe", "channel": "lobby", "requestId": "a-2"}
    assert error_of(client, frame) == expected_error("channel_not_authorized", "a-2")


def test_token_channels_narrow_the_key_scope_for_publish(clients):
    client = clients.token(make_token(unique("peer"), channels=["room/*"]))
    frame = {"type": "publish", "channel": "lobby", "data": 1, "requestId": "a-3"}
    assert error_of(client, frame) == expected_error("channel_not_authorized", "a-3")
    inside = {"type": "publish", "channel": "room/1", "data": 1, "requestId": "a-4"}
    assert client.request(inside) == {"type": "ack", "requestId": "a-4"}


# -- channel_reserved ------------------------------------------------------------------

RESERVED = ["_metered/x", "_internal/x", "_system/x", "_SYSTEM/x", "_Metered/a/b",
            "_iNtErNaL/"]


@pytest.mark.parametrize("op", ["subscribe", "publish"])
@pytest.mark.parametrize("channel", RESERVED)
def test_reserved_prefix_is_channel_reserved(clients, op, channel):
    client = clients.key()
    frame = {"type": op, "channel": channel, "data": 1, "requestId": "r-1"}
    assert error_of(client, frame) == expected_error("channel_reserved", "r-1")


@pytest.mark.parametrize("channel", ["_system", "_systemx/a", "x/_system/y", "system/x",
                                     "__system/x"])
def test_names_that_only_resemble_a_reserved_prefix_are_ordinary(clients, channel):
    client = clients.key()
    frame = {"type": "subscribe", "channel": channel, "requestId": "r-2"}
    assert client.request(frame) == {"type": "ack", "requestId": "r-2"}


# -- channel_limit_exceeded ------------------------------------------------------------

MAX_SUBSCRIPTIONS = 100


def subscribe_many(client, names: list[str]) -> None:
    """Subscribe to every name (pipelined); each gets its ack and presence snapshot."""
    for i, name in enumerate(names):
        client.send({"type": "subscribe", "channel": name, "requestId": f"s{i}"})
    for i, name in enumerate(names):
        assert client.recv() == {"type": "ack", "requestId": f"s{i}"}
        snapshot = client.recv()
        assert snapshot["type"] == "presence" and snapshot["channel"] == name, snapshot


def test_101st_subscription_is_channel_limit_exceeded(clients):
    client = clients.key()
    base = unique("lim")
    names = [f"{base}/{i}" for i in range(MAX_SUBSCRIPTIONS)]
    subscribe_many(client, names)
    frame = {"type": "subscribe", "channel": f"{base}/extra", "requestId": "over"}
    assert error_of(client, frame) == expected_error("channel_limit_exceeded", "over")


def test_repeat_subscribe_at_the_limit_is_idempotent(clients):
    client = clients.key()
    base = unique("lim")
    names = [f"{base}/{i}" for i in range(MAX_SUBSCRIPTIONS)]
    subscribe_many(client, names)
    subscribe_many(client, names[:1])  # a repeat acks again and does not count
    frame = {"type": "subscribe", "channel": f"{base}/extra", "requestId": "over"}
    assert error_of(client, frame) == expected_error("channel_limit_exceeded", "over")


def test_unsubscribing_frees_a_slot(clients):
    client = clients.key()
    base = unique("lim")
    names = [f"{base}/{i}" for i in range(MAX_SUBSCRIPTIONS)]
    subscribe_many(client, names)
    assert client.request({"type": "unsubscribe", "channel": names[0], "requestId": "u"}) == {
        "type": "ack", "requestId": "u"}
    subscribe_many(client, [f"{base}/extra"])


def test_a_full_connection_still_reports_earlier_checks_first(clients):
    client = clients.token(make_token(unique("peer"), channels=["lim/*", "_system/*"],
                                      permissions=["subscribe"]))
    names = [f"lim/{i}" for i in range(MAX_SUBSCRIPTIONS)]
    for i, name in enumerate(names):  # no presence action: acks only
        client.send({"type": "subscribe", "channel": name, "requestId": f"s{i}"})
    for i in range(MAX_SUBSCRIPTIONS):
        assert client.recv() == {"type": "ack", "requestId": f"s{i}"}
    checks = [("", "invalid_channel"), ("_system/x", "channel_reserved"),
              ("other", "channel_not_authorized"), ("lim/extra", "channel_limit_exceeded")]
    seen = [error_of(client, {"type": "subscribe", "channel": c, "requestId": c or "e"})
            for c, _ in checks]
    assert seen == [expected_error(code, c or "e") for c, code in checks]


# -- action_not_permitted --------------------------------------------------------------


def test_readonly_key_publishing_is_action_not_permitted(clients):
    client = clients.key(READONLY_KEY)
    frame = {"type": "publish", "channel": "public/x", "data": 1, "requestId": "n-1"}
    assert error_of(client, frame) == expected_error("action_not_permitted", "n-1")


def test_readonly_key_sending_is_action_not_permitted(clients):
    client, target = clients.key(READONLY_KEY), clients.key()
    frame = {"type": "send", "to": target.peer_id, "data": 1, "requestId": "n-2"}
    assert error_of(client, frame) == expected_error("action_not_permitted", "n-2")
    assert target.sync() == []


@pytest.mark.parametrize(("permissions", "frame"), [
    (["subscribe"], {"type": "publish", "channel": "x", "data": 1}),
    (["publish"], {"type": "subscribe", "channel": "x"}),
    (["subscribe", "publish", "presence"], {"type": "send", "to": "someone", "data": 1}),
], ids=["publish", "subscribe", "send"])
def test_token_permissions_narrow_the_key_actions(clients, permissions, frame):
    client = clients.token(make_token(unique("peer"), permissions=permissions))
    frame = {**frame, "requestId": "n-3"}
    assert error_of(client, frame) == expected_error("action_not_permitted", "n-3")


SCOPED_CONFIG = """
[[apps]]
id = "app_scoped"

[[apps.keys]]
id = "pk_scoped"
channel_patterns = ["public/*"]
actions = ["subscribe", "presence"]

[[apps.keys]]
id = "sk_id_scoped"
secret = "sk_secret_scoped"
channel_patterns = ["public/*"]
actions = ["subscribe", "presence"]
"""


@pytest.fixture(scope="module")
def scoped_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """An app whose secret key is narrower than the tokens it signs."""
    with served(SCOPED_CONFIG, tmp_path_factory.mktemp("scoped")) as server:
        yield server


@pytest.fixture
def scoped(scoped_server) -> Iterator[ClientPool]:
    with client_pool(scoped_server.ws_url) as pool:
        yield pool


def scoped_token(**claims) -> str:
    return make_token(unique("peer"), secret_id="sk_id_scoped", secret="sk_secret_scoped",
                      **claims)


def test_token_cannot_widen_the_key_actions(scoped):
    client = scoped.token(scoped_token(
        permissions=["subscribe", "publish", "presence", "send"]))
    frame = {"type": "publish", "channel": "public/x", "data": 1, "requestId": "w-1"}
    assert error_of(client, frame) == expected_error("action_not_permitted", "w-1")


def test_token_cannot_widen_the_key_channels(scoped):
    client = scoped.token(scoped_token(channels=["**"]))
    frame = {"type": "subscribe", "channel": "private/x", "requestId": "w-2"}
    assert error_of(client, frame) == expected_error("channel_not_authorized", "w-2")
    inside = {"type": "subscribe", "channel": "public/x", "requestId": "w-3"}
    assert client.request(inside) == {"type": "ack", "requestId": "w-3"}
    assert client.recv() == {"type": "presence", "channel": "public/x", "joined": [],
                             "left": []}


# -- backend_error / internal_error (injected through /sim/v1/faults) --------------------


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory) -> Iterator[ServerProcess]:
    """The demo config on its own server, so injected faults touch no other test."""
    with served(None, tmp_path_factory.mktemp("faults")) as server:
        yield server


@pytest.fixture
def faulty(fault_server) -> Iterator[tuple[ServerProcess, ClientPool]]:
    with client_pool(fault_server.ws_url) as pool:
        yield fault_server, pool
    status, _ = fault_server.http("DELETE", "/sim/v1/faults")
    assert status == 200


def inject(server: ServerProcess, **spec) -> None:
    status, body = server.http("POST", "/sim/v1/faults", spec)
    assert status == 201, body


ROUTED = {
    "subscribe": {"type": "subscribe", "channel": "f/1"},
    "publish": {"type": "publish", "channel": "f/1", "data": 1},
    "send": {"type": "send", "to": "PEER", "data": 1},
}


@pytest.mark.parametrize("code", ["backend_error", "internal_error"])
@pytest.mark.parametrize("op", ROUTED)
def test_injected_routing_error(faulty, op, code):
    server, pool = faulty
    client, target = pool.key(), pool.key()
    inject(server, kind="error", code=code, probability=1.0, ops=[op])
    frame = {**ROUTED[op], "requestId": "f-1"}
    if op == "send":
        frame["to"] = target.peer_id
    assert error_of(client, frame) == expected_error(code, "f-1")
    assert (client.sync(), target.sync()) == ([], [])  # soft drop, nothing delivered


def test_backend_outage_fails_routed_operations_only(faulty):
    server, pool = faulty
    client = pool.key()
    inject(server, kind="outage")
    frame = {"type": "publish", "channel": "f/2", "data": 1, "requestId": "o-1"}
    assert error_of(client, frame) == expected_error("backend_error", "o-1")
    assert client.request({"type": "ping"}) == {"type": "pong"}  # local work goes on
    status, _ = server.http("DELETE", "/sim/v1/faults")
    assert status == 200
    assert client.request({**frame, "requestId": "o-2"}) == {"type": "ack", "requestId": "o-2"}


def test_validation_errors_win_over_injected_faults(faulty):
    server, pool = faulty
    client = pool.key()
    inject(server, kind="error", code="backend_error", probability=1.0)
    frame = {"type": "publish", "channel": "", "data": 1, "requestId": "v"}
    assert error_of(client, frame) == expected_error("invalid_channel", "v")


# -- validation order: the first failing check wins -------------------------------------

ORDER = {
    "string type before anything": (
        None, {"type": 1, "channel": "", "requestId": ""}, "malformed_message", None),
    "known type before requestId shape": (
        None, {"type": "nope", "requestId": ""}, "unknown_type", None),
    "requestId shape before fields": (
        None, {"type": "subscribe", "channel": "", "requestId": 7}, "malformed_message",
        None),
    "invalid channel before missing data": (
        None, {"type": "publish", "channel": "", "requestId": "o"}, "invalid_channel", "o"),
    "invalid peer before missing data": (
        None, {"type": "send", "to": "", "requestId": "o"}, "invalid_peer_id", "o"),
    "missing data before reserved": (
        None, {"type": "publish", "channel": "_system/x", "requestId": "o"}, "missing_data",
        "o"),
    "missing data before permission (publish)": (
        READONLY_KEY, {"type": "publish", "channel": "public/x", "requestId": "o"},
        "missing_data", "o"),
    "missing data before permission (send)": (
        READONLY_KEY, {"type": "send", "to": "someone", "requestId": "o"}, "missing_data",
        "o"),
    "reserved before unauthorized (subscribe)": (
        READONLY_KEY, {"type": "subscribe", "channel": "_system/x", "requestId": "o"},
        "channel_reserved", "o"),
    "reserved before permission (publish)": (
        READONLY_KEY, {"type": "publish", "channel": "_SYSTEM/x", "data": 1,
                       "requestId": "o"}, "channel_reserved", "o"),
    "permission before scope": (
        READONLY_KEY, {"type": "publish", "channel": "private/x", "data": 1,
                       "requestId": "o"}, "action_not_permitted", "o"),
}


@pytest.mark.parametrize(("key", "frame", "code", "rid"), ORDER.values(), ids=ORDER.keys())
def test_validation_order(clients, key, frame, code, rid):
    client = clients.key(key) if key else clients.key()
    assert error_of(client, frame) == expected_error(code, rid)

