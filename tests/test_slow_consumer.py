"""The outbound bound (`limits.max_outbound_bytes`): a peer that stops reading is closed
with 1008 "slow consumer" on every write path, and the server's memory stays bounded.

The slow peer is websockets' Sans-I/O client on a blocking socket with a small receive
buffer: after its subscribe is acked the test stops reading it, so whatever the server
sends piles up in the server's transport, as with a stalled client.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.uri import parse_uri
from wsclient import DEMO_BEARER, client_pool, unique, wait_until

FAST = "[limits]\nrate_per_second = 1000000.0\nburst = 1000000.0\n"
BIG = "x" * 60_000  # 60 KB of data per message, as in the report that found the hole
MAX_FLOOD = 600  # 36 MB offered at most: nine times the default 4 MiB bound
RSS_GROWTH_LIMIT_KB = 64 * 1024


class StalledPeer:
    """A subscriber that reads its first replies, then never reads again."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(10)
        self.sock.connect((parts.hostname, parts.port))
        self.proto = ClientProtocol(parse_uri(url), max_size=None)
        self.proto.send_request(self.proto.connect())
        self._flush()
        self.welcome = self.recv_json()

    def _flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                self.sock.sendall(data)

    def _read(self) -> bool:
        """Feed one read to the protocol; False once the socket has ended."""
        data = self.sock.recv(1 << 16)
        if not data:
            self.proto.receive_eof()
            return False
        self.proto.receive_data(data)
        self._flush()
        return True

    def _frames(self) -> Iterator[bytes]:
        """The payloads of the data frames received, reading as needed, until EOF."""
        while True:
            for event in self.proto.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    yield event.data
            if not self._read():
                for event in self.proto.events_received():
                    if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                        yield event.data
                return

    def recv_json(self) -> dict:
        return json.loads(next(self._frames()))

    def send(self, frame: dict) -> None:
        self.proto.send_text(json.dumps(frame).encode())
        self._flush()

    def drain_to_close(self) -> tuple[int, Close | None]:
        """Read everything the server queued; (messages read, its close frame)."""
        messages = sum(1 for _ in self._frames())
        return messages, self.proto.close_rcvd

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server(server_factory):
    return server_factory(FAST)


def _stalled_subscriber(server, channel: str) -> StalledPeer:
    peer = StalledPeer(server.url(key="pk_live_demo"))
    peer.send({"type": "subscribe", "channel": channel, "requestId": "s"})
    assert peer.recv_json() == {"type": "ack", "requestId": "s"}
    return peer


def _closed_1008(server) -> bool:
    return server.stats()["totals"]["closes"].get("1008", 0) > 0


def _flood(server, offer) -> int:
    """Offer 60 KB messages until the server has closed the stalled peer; how many."""
    for n in range(1, MAX_FLOOD + 1):
        offer(n)
        if n % 10 == 0 and _closed_1008(server):
            return n
    raise AssertionError(f"no 1008 after {MAX_FLOOD} messages of 60 KB")


def _publish(pub, channel: str, n: int) -> None:
    reply = pub.request({"type": "publish", "channel": channel, "data": BIG,
                         "requestId": str(n)})
    assert reply == {"type": "ack", "requestId": str(n)}


def test_a_stalled_subscriber_is_closed_1008_and_memory_stays_bounded(server):
    channel = unique("firehose")
    rss_before = server.stats()["process"]["rss_kb"]
    with client_pool(server.ws_url) as pool:
        pub, reader = pool.key(), pool.key()
        reader.send({"type": "subscribe", "channel": channel, "requestId": "s"})
        assert reader.recv() == {"type": "ack", "requestId": "s"}
        slow = _stalled_subscriber(server, channel)
        offered = 0
        received: list[int] = []

        def offer(n: int) -> None:
            nonlocal offered
            reply = pub.request({"type": "publish", "channel": channel,
                                 "data": {"n": n, "pad": BIG}, "requestId": str(n)})
            assert reply["type"] == "ack"
            offered = n
            while len(received) < n:  # the reading subscriber keeps up, message by message
                frame = reader.recv()
                if frame["type"] == "message":  # (and presence: the slow peer's join)
                    received.append(frame["data"]["n"])

        _flood(server, offer)
        rss_after = server.stats()["process"]["rss_kb"]
        assert received == list(range(1, offered + 1))  # nothing lost, nothing reordered
        assert rss_after - rss_before < RSS_GROWTH_LIMIT_KB
        stats = server.stats()["totals"]
        assert stats["closes"] == {"1008": 1}
        read, close = slow.drain_to_close()
        slow.close()
        assert (close.code, close.reason) == (1008, "slow consumer")
        assert 0 < read < offered  # it was cut off part way, not at once
        # The reader still gets everything after the slow peer is gone.
        last = offered + 1
        offer(last)
        assert received[-1] == last

    def closes() -> list[tuple[int, str]]:
        return [(e["code"], e["reason"]) for e in server.events() if e["event"] == "close"]

    assert wait_until(closes) == [(1008, "slow consumer")]


def test_rest_publishes_are_bounded_too(server):
    channel = unique("rest-firehose")
    slow = _stalled_subscriber(server, channel)
    path = "/v1/channels/" + channel.replace("/", "%2F") + "/publish"

    def offer(n: int) -> None:
        status, body = server.http("POST", path, {"data": BIG[:30_000]}, token=DEMO_BEARER)
        assert status == 200, body

    _flood(server, offer)
    _, close = slow.drain_to_close()
    slow.close()
    assert (close.code, close.reason) == (1008, "slow consumer")


def test_direct_sends_are_bounded_too(server):
    slow = StalledPeer(server.url(key="pk_live_demo"))
    to = slow.welcome["peerId"]
    with client_pool(server.ws_url) as pool:
        sender = pool.key()

        def offer(n: int) -> None:
            reply = sender.request({"type": "send", "to": to, "data": BIG, "requestId": str(n)})
            assert reply["type"] in ("ack", "error")

        _flood(server, offer)
    _, close = slow.drain_to_close()
    slow.close()
    assert (close.code, close.reason) == (1008, "slow consumer")


def test_a_closed_slow_consumer_that_never_reads_is_cut_within_the_close_timeout(server):
    """websockets' close waits for its buffer to drain; the node bounds that wait."""
    channel = unique("never-read")
    slow = _stalled_subscriber(server, channel)
    with client_pool(server.ws_url) as pool:
        pub = pool.key()
        _flood(server, lambda n: _publish(pub, channel, n))
    assert wait_until(lambda: server.stats()["totals"]["connections"]["now"] == 0,
                      timeout=25)
    slow.close()


def _read_before_1008(server) -> int:
    channel = unique("bound")
    slow = _stalled_subscriber(server, channel)
    with client_pool(server.ws_url) as pool:
        pub = pool.key()
        _flood(server, lambda n: _publish(pub, channel, n))
    read, close = slow.drain_to_close()
    slow.close()
    assert close.code == 1008
    return read


def test_the_bound_is_configurable(server_factory):
    """200 KB instead of 4 MiB: about 65 fewer 60 KB messages queued before the close
    (the kernel's socket buffers hold the same on both runs)."""
    default = _read_before_1008(server_factory(FAST))
    small = _read_before_1008(server_factory(FAST + "max_outbound_bytes = 200000\n"))
    assert small < default - 40
