"""Conformance over real sockets: the exact frames of a working session.

PROTOCOL.md sections 1-4: welcome, ack, error, message, direct, presence, pong;
wildcard subscriptions and scope filtering; per-app namespaces. "Nothing else arrived"
is always checked with `Client.sync()` (a ping barrier), never with a sleep.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from serverproc import ServerProcess, served
from wsclient import (
    DEMO_BEARER,
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

MAX_FRAME = 65536


def ack(rid: str) -> dict:
    return {"type": "ack", "requestId": rid}


def presence(channel: str, joined=(), left=()) -> dict:
    return {"type": "presence", "channel": channel, "joined": list(joined),
            "left": list(left)}


def subscribe(client: Client, channel: str, **fields) -> dict:
    """Subscribe with a requestId; assert the ack; return the presence snapshot."""
    assert client.request({"type": "subscribe", "channel": channel, "requestId": "sub",
                           **fields}) == ack("sub")
    return client.recv()


def subscribe_quietly(client: Client, channel: str, **fields) -> None:
    """Subscribe a connection without the presence action: the ack and nothing else."""
    assert client.request({"type": "subscribe", "channel": channel, "requestId": "sub",
                           **fields}) == ack("sub")
    assert client.sync() == []


def listener(pool: ClientPool) -> Client:
    """A connection without the presence action: it sees messages and nothing else."""
    return pool.token(make_token(unique("listener"), permissions=["subscribe"]))


def publish(client: Client, channel: str, data) -> None:
    assert client.request({"type": "publish", "channel": channel, "data": data,
                           "requestId": "pub"}) == ack("pub")


def message(channel: str, sender: str, data, **extra) -> dict:
    return {"type": "message", "channel": channel, "from": sender, "data": data, **extra}


# -- welcome -------------------------------------------------------------------------------


def test_welcome_for_a_publishable_key(clients):
    welcome = clients.key().welcome
    assert set(welcome) == {"type", "peerId", "expiresAt", "serverTime", "maxMessageSize"}
    assert (welcome["expiresAt"], welcome["maxMessageSize"]) == (None, MAX_FRAME)
    assert uuid.UUID(welcome["peerId"]).version == 4
    assert isinstance(welcome["serverTime"], int)
    # Unix milliseconds, not seconds: a unit check against the same host's clock.
    assert abs(welcome["serverTime"] - time.time() * 1000) < 60_000


def test_each_key_connection_gets_a_fresh_peer_id(clients):
    assert clients.key().peer_id != clients.key().peer_id


def test_welcome_for_a_token_with_metadata(clients):
    peer, exp = unique("ann"), int(time.time()) + 600
    metadata = {"role": "admin", "n": [1, 2]}
    token = make_token(peer, exp=exp, metadata=metadata, peerMetadata={"name": "Ann"})
    welcome = clients.token(token).welcome
    assert isinstance(welcome.pop("serverTime"), int)
    assert welcome == {"type": "welcome", "peerId": peer, "expiresAt": exp,
                       "maxMessageSize": MAX_FRAME, "metadata": metadata}


def test_welcome_for_a_token_without_metadata_has_no_metadata(clients):
    peer = unique("bob")
    welcome = clients.token(make_token(peer, peerMetadata={"name": "Bob"})).welcome
    assert set(welcome) == {"type", "peerId", "expiresAt", "serverTime", "maxMessageSize"}
    assert welcome["peerId"] == peer


def test_welcome_for_a_rest_minted_token(clients, demo_server):
    peer = unique("cy")
    status, body = demo_server.http("POST", "/v1/tokens",
                                    {"peerId": peer, "metadata": {"plan": "pro"}},
                                    token=DEMO_BEARER)
    assert status == 200, body
    assert 3590 <= body["expiresAt"] - time.time() <= 3600  # default expiresInSec 3600
    welcome = clients.token(body["token"]).welcome
    assert (welcome["peerId"], welcome["expiresAt"], welcome["metadata"]) == (
        peer, body["expiresAt"], {"plan": "pro"})


# -- replies: ack, error, pong -------------------------------------------------------------------


@pytest.mark.parametrize("op", ["publish", "subscribe", "unsubscribe"])
def test_ack_echoes_the_request_id(clients, op):
    client = clients.token(make_token(unique("p"), permissions=["subscribe", "publish"]))
    frame = {"type": op, "channel": unique("ack"), "data": 1, "requestId": "req-\u00e9 1"}
    assert client.request(frame) == ack("req-\u00e9 1")
    assert client.sync() == []


def test_no_ack_without_request_id(clients):
    client = clients.token(make_token(unique("p"), permissions=["subscribe", "publish"]))
    channel = unique("quiet")
    for op in ("subscribe", "publish", "unsubscribe"):
        client.send({"type": op, "channel": channel, "data": 1})
    assert client.sync() == []


def test_subscribe_without_request_id_sends_only_the_snapshot(clients):
    client, channel = clients.key(), unique("snap")
    client.send({"type": "subscribe", "channel": channel})
    assert client.sync() == [presence(channel)]


def test_error_without_request_id_has_exactly_type_code_message(clients):
    client = clients.key()
    client.send({"type": "publish", "channel": ""})
    frame = client.recv()
    assert set(frame) == {"type", "code", "message"}
    assert without_message(frame) == {"type": "error", "code": "invalid_channel"}


def test_ping_gets_pong(clients):
    client = clients.key()
    assert client.request({"type": "ping"}) == {"type": "pong"}


def test_ping_with_request_id_gets_only_pong(clients):
    client = clients.key()
    assert client.request({"type": "ping", "requestId": "p1"}) == {"type": "pong"}
    assert client.sync() == []


def test_unknown_fields_are_ignored(clients):
    client = clients.key()
    frame = {"type": "publish", "channel": unique("x"), "data": 1, "requestId": "r",
             "priority": "high", "ttl": 5}
    assert client.request(frame) == ack("r")


def test_unsubscribe_of_a_channel_never_subscribed_acks(clients):
    client = clients.key()
    assert client.request({"type": "unsubscribe", "channel": unique("never"),
                           "requestId": "u"}) == ack("u")


# -- message --------------------------------------------------------------------------------

DATA = {"null": None, "zero": 0, "float": 1.5, "false": False, "string": "h\u00e9llo",
        "empty list": [], "nested": {"a": [1, {"b": None}], "c": "\u2603"}}


@pytest.mark.parametrize("data", DATA.values(), ids=DATA.keys())
def test_message_frame_is_exact(clients, data):
    sender, receiver, channel = clients.key(), clients.key(), unique("msg")
    subscribe(receiver, channel)
    publish(sender, channel, data)
    assert receiver.recv() == message(channel, sender.peer_id, data)
    assert receiver.sync() == []


def test_publisher_own_connection_never_receives_its_message(clients):
    sender, receiver, channel = clients.key(), clients.key(), unique("own")
    subscribe(sender, channel)
    subscribe(receiver, channel)
    assert sender.recv() == presence(channel, joined=[{"peerId": receiver.peer_id}])
    publish(sender, channel, "hi")
    assert sender.sync() == []
    assert receiver.recv() == message(channel, sender.peer_id, "hi")


def test_other_connections_of_the_publishing_peer_receive_it(clients):
    peer, channel = unique("dee"), unique("same")
    token = make_token(peer)
    first, second = clients.token(token), clients.token(token)
    subscribe(first, channel)
    subscribe(second, channel)
    publish(first, channel, {"n": 1})
    assert second.recv() == message(channel, peer, {"n": 1})
    assert first.sync() == []


def test_from_metadata_only_for_subscribers_who_asked(clients):
    peer, channel = unique("eve"), unique("meta")
    sender = clients.token(make_token(peer, peerMetadata={"name": "Eve"}))
    asked, plain = listener(clients), listener(clients)
    subscribe_quietly(asked, channel, includeSenderMetadata=True)
    subscribe_quietly(plain, channel)
    publish(sender, channel, 1)
    assert asked.recv() == message(channel, peer, 1, fromMetadata={"name": "Eve"})
    assert plain.recv() == message(channel, peer, 1)


def test_no_from_metadata_when_the_sender_has_none(clients):
    sender, asked, channel = clients.key(), clients.key(), unique("nometa")
    subscribe(asked, channel, includeSenderMetadata=True)
    publish(sender, channel, 1)
    assert asked.recv() == message(channel, sender.peer_id, 1)


def test_last_include_sender_metadata_wins(clients):
    peer, channel = unique("fay"), unique("last")
    sender = clients.token(make_token(peer, peerMetadata={"name": "Fay"}))
    receiver = clients.key()
    subscribe(receiver, channel, includeSenderMetadata=True)
    subscribe(receiver, channel, includeSenderMetadata=False)
    publish(sender, channel, 1)
    assert receiver.recv() == message(channel, peer, 1)
    subscribe(receiver, channel, includeSenderMetadata=True)
    publish(sender, channel, 2)
    assert receiver.recv() == message(channel, peer, 2, fromMetadata={"name": "Fay"})


def test_unsubscribed_connection_stops_receiving(clients):
    sender, receiver, channel = clients.key(), clients.key(), unique("unsub")
    subscribe(receiver, channel)
    assert receiver.request({"type": "unsubscribe", "channel": channel,
                             "requestId": "u"}) == ack("u")
    publish(sender, channel, 1)
    assert receiver.sync() == []


def test_messages_from_one_publisher_arrive_in_order(clients):
    sender, receiver, channel = clients.key(), clients.key(), unique("fifo")
    subscribe(receiver, channel)
    for i in range(50):
        sender.send({"type": "publish", "channel": channel, "data": i})
    assert [receiver.recv()["data"] for _ in range(50)] == list(range(50))


def test_rest_publish_comes_from_system(clients, demo_server):
    first, second, channel = listener(clients), listener(clients), unique("rest")
    subscribe_quietly(first, channel)
    subscribe_quietly(second, channel)
    status, body = demo_server.http("POST", f"/v1/channels/{channel}/publish",
                                    {"data": {"k": 1}}, token=DEMO_BEARER)
    assert (status, body) == (200, {"channel": channel, "delivered": 2})
    assert first.recv() == message(channel, "system", {"k": 1})
    assert second.recv() == message(channel, "system", {"k": 1})


def test_rest_publish_with_from_and_peer_metadata(clients, demo_server):
    receiver, channel = clients.key(), unique("rest")
    subscribe(receiver, channel, includeSenderMetadata=True)
    status, _ = demo_server.http("POST", f"/v1/channels/{channel}/publish",
                                 {"data": 1, "from": "bot", "peerMetadata": {"v": 2}},
                                 token=DEMO_BEARER)
    assert status == 200
    assert receiver.recv() == message(channel, "bot", 1, fromMetadata={"v": 2})


def test_rest_publish_to_a_url_encoded_channel_with_slash(clients, demo_server):
    receiver, channel = clients.key(), unique("rest") + "/room"
    subscribe(receiver, channel)
    status, body = demo_server.http("POST", f"/v1/channels/{quote(channel, safe='')}/publish",
                                    {"data": 1}, token=DEMO_BEARER)
    assert (status, body) == (200, {"channel": channel, "delivered": 1})


# -- direct ---------------------------------------------------------------------------------


def test_direct_reaches_every_connection_of_the_peer(clients):
    peer = unique("gil")
    token = make_token(peer)
    sender, first, second = clients.key(), clients.token(token), clients.token(token)
    assert sender.request({"type": "send", "to": peer, "data": [1], "requestId": "d"}) == \
        ack("d")
    expected = {"type": "direct", "from": sender.peer_id, "data": [1]}
    assert (first.recv(), second.recv()) == (expected, expected)
    assert sender.sync() == []


def test_direct_carries_the_sender_peer_metadata(clients):
    peer = unique("hal")
    sender = clients.token(make_token(peer, peerMetadata={"name": "Hal"}))
    target = clients.key()
    assert sender.request({"type": "send", "to": target.peer_id, "data": None,
                           "requestId": "d"}) == ack("d")
    assert target.recv() == {"type": "direct", "from": peer, "data": None,
                             "fromMetadata": {"name": "Hal"}}


# -- presence -------------------------------------------------------------------------------


def test_presence_snapshot_and_joined_delta(clients):
    first, second, channel = clients.key(), clients.key(), unique("pres")
    assert subscribe(first, channel) == presence(channel)
    assert subscribe(second, channel) == presence(channel, joined=[{"peerId": first.peer_id}])
    assert first.recv() == presence(channel, joined=[{"peerId": second.peer_id}])
    assert (first.sync(), second.sync()) == ([], [])


def test_presence_entries_carry_peer_metadata(clients):
    peer, channel = unique("ivy"), unique("pres")
    watcher = clients.key()
    subscribe(watcher, channel)
    member = clients.token(make_token(peer, peerMetadata={"name": "Ivy"}))
    assert subscribe(member, channel) == presence(channel,
                                                  joined=[{"peerId": watcher.peer_id}])
    entry = {"peerId": peer, "metadata": {"name": "Ivy"}}
    assert watcher.recv() == presence(channel, joined=[entry])
    late = clients.key()
    assert subscribe(late, channel)["joined"] == [{"peerId": watcher.peer_id}, entry]
    assert watcher.recv() == presence(channel, joined=[{"peerId": late.peer_id}])
    member.request({"type": "unsubscribe", "channel": channel, "requestId": "u"})
    assert watcher.recv() == presence(channel, left=[entry])


def test_unsubscribe_announces_left(clients):
    first, second, channel = clients.key(), clients.key(), unique("pres")
    subscribe(first, channel)
    subscribe(second, channel)
    first.recv()  # joined delta
    assert second.request({"type": "unsubscribe", "channel": channel,
                           "requestId": "u"}) == ack("u")
    assert first.recv() == presence(channel, left=[{"peerId": second.peer_id}])


def test_disconnect_announces_left(clients):
    first, second, channel = clients.key(), clients.key(), unique("pres")
    subscribe(first, channel)
    subscribe(second, channel)
    first.recv()  # joined delta
    second.close()
    assert first.recv() == presence(channel, left=[{"peerId": second.peer_id}])


def test_second_connection_of_a_peer_is_not_announced_again(clients):
    peer, channel = unique("jo"), unique("pres")
    token = make_token(peer)
    watcher, first, second = clients.key(), clients.token(token), clients.token(token)
    subscribe(watcher, channel)
    subscribe(first, channel)
    assert watcher.recv() == presence(channel, joined=[{"peerId": peer}])
    # The snapshot lists the others, never the subscriber's own peer.
    assert subscribe(second, channel) == presence(channel,
                                                  joined=[{"peerId": watcher.peer_id}])
    assert (watcher.sync(), first.sync()) == ([], [])


def test_left_only_when_the_last_connection_unsubscribes(clients):
    peer, channel = unique("kim"), unique("pres")
    token = make_token(peer)
    watcher, first, second = clients.key(), clients.token(token), clients.token(token)
    subscribe(watcher, channel)
    subscribe(first, channel)
    subscribe(second, channel)
    assert watcher.recv() == presence(channel, joined=[{"peerId": peer}])
    first.request({"type": "unsubscribe", "channel": channel, "requestId": "u"})
    assert watcher.sync() == []
    second.request({"type": "unsubscribe", "channel": channel, "requestId": "u"})
    assert watcher.recv() == presence(channel, left=[{"peerId": peer}])


def test_left_only_when_the_last_connection_disconnects(clients, demo_server):
    peer, channel = unique("lee"), unique("pres")
    token = make_token(peer)
    watcher, first, second = clients.key(), clients.token(token), clients.token(token)
    subscribe(watcher, channel)
    subscribe(first, channel)
    subscribe(second, channel)
    assert watcher.recv() == presence(channel, joined=[{"peerId": peer}])
    first.close()
    # Wait until the server has forgotten `first` (its disconnect is in the event log).
    wait_until(lambda: any(e["event"] == "disconnect" and e.get("peer") == peer
                           for e in demo_server.events()))
    assert watcher.sync() == []
    second.close()
    assert watcher.recv() == presence(channel, left=[{"peerId": peer}])


def test_repeat_subscribe_resends_the_snapshot_without_a_delta(clients):
    first, second, channel = clients.key(), clients.key(), unique("pres")
    subscribe(first, channel)
    subscribe(second, channel)
    first.recv()  # joined delta
    assert subscribe(second, channel) == presence(channel, joined=[{"peerId": first.peer_id}])
    assert first.sync() == []


def test_connection_without_presence_action_is_invisible(clients):
    peer, channel = unique("mo"), unique("pres")
    watcher = clients.key()
    subscribe(watcher, channel)
    hidden = clients.token(make_token(peer, permissions=["subscribe", "publish"]))
    subscribe_quietly(hidden, channel)  # no snapshot for it ...
    assert watcher.sync() == []  # ... and no joined for the others
    late = clients.key()
    assert subscribe(late, channel) == presence(channel, joined=[{"peerId": watcher.peer_id}])
    assert watcher.recv() == presence(channel, joined=[{"peerId": late.peer_id}])
    assert hidden.sync() == []  # it receives no deltas either
    publish(watcher, channel, "still delivered")
    assert hidden.recv() == message(channel, watcher.peer_id, "still delivered")


def test_readonly_key_gets_presence(clients):
    channel = "public/" + unique("ro")
    member, reader = clients.key(), clients.key(READONLY_KEY)
    subscribe(member, channel)
    assert subscribe(reader, channel) == presence(channel, joined=[{"peerId": member.peer_id}])
    assert member.recv() == presence(channel, joined=[{"peerId": reader.peer_id}])


def test_presence_delta_on_an_escaped_literal_channel(clients):
    base = unique("esc")
    first, second = clients.key(), clients.key()
    assert subscribe(first, base + "/\\*") == presence(base + "/*")
    subscribe(second, base + "/\\*")
    assert first.sync() == [presence(base + "/*", joined=[{"peerId": second.peer_id}])]


# -- wildcard subscriptions -----------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "delivered", "skipped"), [
    ("{b}/*", ["{b}/a", "{b}/"], ["{b}/a/b", "{b}", "{b}x/a"]),
    ("{b}/**", ["{b}/a", "{b}/a/b/c", "{b}/"], ["{b}", "{b}x/a"]),
    ("{b}/*/end", ["{b}/a/end", "{b}//end"], ["{b}/a/b/end", "{b}/a/end/x"]),
    ("{b}/a*", ["{b}/a", "{b}/abc"], ["{b}/ba", "{b}/a/b"]),
    ("{b}/\\*", ["{b}/*"], ["{b}/a", "{b}/"]),
    ("{b}/\\\\", ["{b}/\\"], ["{b}/a"]),
], ids=["star", "double star", "star in the middle", "prefix star", "escaped star",
        "escaped backslash"])
def test_wildcard_subscription_delivers_matching_channels(clients, pattern, delivered,
                                                          skipped):
    base = unique("wc")
    sender, receiver = clients.key(), clients.key()
    subscribe(receiver, pattern.format(b=base))
    for channel in [c.format(b=base) for c in skipped + delivered]:
        publish(sender, channel, channel)
    assert receiver.sync() == [message(c.format(b=base), sender.peer_id, c.format(b=base))
                               for c in delivered]


def test_one_copy_when_several_subscriptions_match(clients):
    base = unique("wc")
    sender, receiver = clients.key(), clients.key()
    for name in (f"{base}/a", f"{base}/*", f"{base}/**", "**"):
        subscribe(receiver, name)
    publish(sender, f"{base}/a", 1)
    assert receiver.sync() == [message(f"{base}/a", sender.peer_id, 1)]


def test_wildcard_delivery_is_filtered_by_the_key_scope(clients):
    base = unique("scope")
    sender, reader = clients.key(), clients.key(READONLY_KEY)
    # `public/**` as text matches the key pattern `public/*`, so it is authorized ...
    subscribe(reader, "public/**")
    publish(sender, f"public/{base}/deep", 1)  # ... but this channel is outside the scope
    publish(sender, f"public/{base}", 2)
    assert reader.sync() == [message(f"public/{base}", sender.peer_id, 2)]


def test_wildcard_delivery_is_filtered_by_the_token_scope(clients):
    base = unique("scope")
    sender = clients.key()
    reader = clients.token(make_token(unique("ned"), channels=[f"{base}/*"]))
    subscribe(reader, f"{base}/**")
    publish(sender, f"{base}/a/b", 1)
    publish(sender, f"{base}/a", 2)
    assert reader.sync() == [message(f"{base}/a", sender.peer_id, 2)]


# -- per-app namespaces ---------------------------------------------------------------------

TWO_APPS = """
[[apps]]
id = "app_one"

[[apps.keys]]
id = "pk_one"

[[apps.keys]]
id = "sk_id_one"
secret = "sk_secret_one"

[[apps]]
id = "app_two"

[[apps.keys]]
id = "pk_two"

[[apps.keys]]
id = "sk_id_two"
secret = "sk_secret_two"
"""


@pytest.fixture(scope="module")
def two_apps_server(tmp_path_factory) -> Iterator[ServerProcess]:
    with served(TWO_APPS, tmp_path_factory.mktemp("two-apps")) as server:
        yield server


@pytest.fixture
def apps(two_apps_server) -> Iterator[ClientPool]:
    with client_pool(two_apps_server.ws_url) as pool:
        yield pool


def app_token(app: str, sub: str) -> str:
    return make_token(sub, secret_id=f"sk_id_{app}", secret=f"sk_secret_{app}")


def test_same_peer_id_in_two_apps_are_two_peers(apps):
    peer, channel = unique("zed"), unique("room")
    one_sender = apps.token(app_token("one", "sender"))
    one, two = apps.token(app_token("one", peer)), apps.token(app_token("two", peer))
    assert subscribe(one, channel) == presence(channel)
    assert subscribe(two, channel) == presence(channel)  # app one's peer is not there
    assert one.sync() == []  # and app two's peer is not announced to app one
    publish(one_sender, channel, "for app one")
    assert one.recv() == message(channel, "sender", "for app one")
    assert two.sync() == []


def test_send_stays_in_its_app(apps):
    peer = unique("zed")
    one, two = apps.token(app_token("one", peer)), apps.token(app_token("two", peer))
    sender = apps.key("pk_one")
    assert sender.request({"type": "send", "to": peer, "data": 1, "requestId": "d"}) == \
        ack("d")
    assert one.recv() == {"type": "direct", "from": sender.peer_id, "data": 1}
    assert two.sync() == []
    lonely = apps.token(app_token("one", unique("solo")))
    frame = {"type": "send", "to": lonely.peer_id, "data": 1, "requestId": "e"}
    assert without_message(apps.key("pk_two").request(frame)) == expected_error(
        "peer_not_found", "e")


def test_kick_stays_in_its_app(apps, two_apps_server):
    peer = unique("zed")
    one, two = apps.token(app_token("one", peer)), apps.token(app_token("two", peer))
    status, body = two_apps_server.http("DELETE", f"/v1/peers/{peer}",
                                        token="sk_id_one:sk_secret_one")
    assert (status, body) == (200, {"peerId": peer, "closed": 1})
    assert one.recv_until_closed() == ([], 4020)
    assert two.sync() == []
