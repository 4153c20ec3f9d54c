"""The protocol client outside Locust (real threads, no gevent) against real servers.

Locust runs it under gevent in test_swarm.py; here every outcome it can report is
provoked directly: acks, error codes, uncorrelated errors, close codes at connect and
mid-connection, going_away, timeouts, our own close, pipelined requests.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from serverproc import ServerProcess

import loadtests.client as client_module
from loadtests.client import SEEN_IDS, RealtimeClient
from loadtests.reporting import Reporter

DEMO_KEY = "pk_live_demo"


class Recorder(Reporter):
    """Keeps what the client reports, and signals closes for tests to wait on."""

    def __init__(self) -> None:
        super().__init__(user="t")
        self.requests: list[tuple[str, str, float, dict[str, Any]]] = []
        self.deliveries: list[tuple[str, float | None, dict[str, Any]]] = []
        self.notes: list[tuple[str, str]] = []
        self.closed = threading.Event()
        self.delivered = threading.Event()

    def request(self, op: str, outcome: str, latency_ms: float, **kw: Any) -> None:
        self.requests.append((op, outcome, latency_ms, kw))

    def delivery(self, kind: str, latency_ms: float | None, **kw: Any) -> None:
        self.deliveries.append((kind, latency_ms, kw))
        self.delivered.set()

    def note(self, op: str, outcome: str, **fields: Any) -> None:
        self.notes.append((op, outcome))
        if op == "close":
            self.closed.set()

    def outcomes(self, op: str) -> list[str]:
        return [outcome for o, outcome, _, _ in self.requests if o == op]


def client(server: ServerProcess, *, key: str = DEMO_KEY, timeout: float = 5.0
           ) -> tuple[RealtimeClient, Recorder]:
    recorder = Recorder()
    return RealtimeClient(server.ws_url, key=key, reporter=recorder, timeout=timeout), recorder


def test_connect_publish_deliver(demo_server):
    sub, sub_rec = client(demo_server)
    pub, pub_rec = client(demo_server)
    try:
        assert sub.connect().ok and pub.connect().ok
        assert sub.peer_id and sub.peer_id != pub.peer_id
        assert sub.subscribe("room/1").ok
        result = pub.publish("room/1", "hello")
        assert result.ok and result.latency_ms > 0
        assert sub_rec.delivered.wait(5)
    finally:
        sub.close()
        pub.close()
    (_, outcome, latency, fields), = [r for r in pub_rec.requests if r[0] == "publish"]
    assert outcome == "ok" and fields["channel"] == "room/1"
    assert latency == result.latency_ms  # reported as returned, unrounded
    msg_id = fields["msg_id"]
    (kind, delivery_ms, where), = sub_rec.deliveries
    assert (kind, where["msg_id"], where["channel"]) == ("message", msg_id, "room/1")
    assert 0 <= delivery_ms < 5000
    assert sub.received == 1 and sub.duplicates == 0 and sub.reordered == 0
    assert ("disconnect", "client") in sub_rec.notes


def test_error_code_is_the_outcome_and_the_connection_stays(demo_server):
    c, rec = client(demo_server)
    c.connect()
    try:
        result = c.publish("_system/x", 1)
        assert (result.ok, result.outcome, result.close_code) == (False, "channel_reserved",
                                                                  None)
        assert c.is_open and c.subscribe("room/2").ok
    finally:
        c.close()
    assert rec.outcomes("publish") == ["channel_reserved"]


@pytest.mark.parametrize(("frame", "code"), [
    ("{not json", "malformed_message"),
    ('{"type":"teleport"}', "unknown_type"),
    (b"\x00\x01", "malformed_message"),  # bytes go out as a binary frame
])
def test_uncorrelated_errors_complete_raw_sends(demo_server, frame, code):
    c, _ = client(demo_server)
    c.connect()
    try:
        result = c.send_raw("bad", frame)
    finally:
        c.close()
    assert result.outcome == code


def test_rejected_connect_reports_the_close_code(demo_server):
    c, rec = client(demo_server, key="pk_live_nope")
    result = c.connect()
    assert (result.ok, result.outcome, result.close_code) == (False, "close 4001", 4001)
    assert not c.is_open
    assert c.publish("room/1", 1).outcome == "close 4001"  # nothing sent
    assert rec.outcomes("connect") == ["close 4001"]
    assert rec.outcomes("publish") == ["close 4001"]


def test_refused_connect():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    c = RealtimeClient(f"ws://127.0.0.1:{port}", key=DEMO_KEY, reporter=Recorder())
    assert c.connect().outcome == "refused"


def test_oversize_frame_earns_1009_and_later_requests_report_it(demo_server):
    c, rec = client(demo_server)
    c.connect()
    result = c.send_raw("oversize", '{"type":"publish","channel":"a","data":"'
                        + "x" * 70_000 + '"}')
    assert result.outcome == "close 1009"
    assert rec.closed.wait(5) and c.close_code == 1009
    assert c.publish("room/1", 1).outcome == "close 1009"
    assert ("close", "close 1009") in rec.notes


@pytest.mark.parametrize(("spec", "code", "retry_after"), [
    ({"kind": "close", "close_code": 4020}, 4020, None),
    ({"kind": "deploy", "retry_after_ms": 1500}, 1001, 1500),
    ({"kind": "disconnect"}, 1006, None),  # no close frame at all
])
def test_server_closes_are_reported_with_their_code(server_factory, spec, code, retry_after):
    server = server_factory()
    c, rec = client(server)
    assert c.connect().ok
    status, _ = server.http("POST", "/sim/v1/clock", {"origin": int(time.time() * 1000)})
    assert status == 200
    status, body = server.http("POST", "/sim/v1/faults", {**spec, "at_s": 0})
    assert status == 201, body
    assert rec.closed.wait(10)
    assert (c.close_code, c.going_away_ms, c.is_open) == (code, retry_after, False)
    assert c.publish("room/1", 1).outcome == f"close {code}"


def test_a_request_with_no_reply_times_out(server_factory):
    server = server_factory('\n[[faults]]\nkind = "latency"\nms = 3000\n'
                            'where = "before_ack"\n')
    c, rec = client(server, timeout=0.3)
    c.connect()
    try:
        result = c.publish("room/1", 1)
    finally:
        c.close()
    assert result.outcome == "timeout"
    assert 300 <= result.latency_ms < 2000  # the sweeper's tick is 50 ms
    assert rec.outcomes("publish") == ["timeout"]


def test_our_close_ends_the_connection_cleanly(demo_server):
    c, rec = client(demo_server)
    c.connect()
    ws = c.ws
    c.close()
    assert c.ws is None and c.close_code == 1000 and not c.is_open
    assert ws is not None and ws.close_code == 1000  # the server echoed our close
    assert rec.notes == [("disconnect", "client")]  # not reported as a server close
    assert c.publish("room/1", 1).outcome == "close 1000"


def test_fired_requests_are_each_reported_once(demo_server):
    c, rec = client(demo_server)
    c.connect()
    try:
        for i in range(200):
            assert c.fire("publish", {"type": "publish", "channel": "pipe/1", "data": i})
        c.drain(5.0)
    finally:
        c.close()
    assert rec.outcomes("publish") == ["ok"] * 200


class Interrupt(BaseException):
    """Stands in for the GreenletExit with which Locust stops a user."""


def test_a_request_interrupted_mid_flight_is_still_reported(server_factory, monkeypatch):
    server = server_factory('\n[[faults]]\nkind = "latency"\nms = 300\nops = ["publish"]\n'
                            'where = "before_ack"\n')
    c, rec = client(server)
    assert c.connect().ok

    def interrupted(event: Any, timeout: float) -> None:
        raise Interrupt

    monkeypatch.setattr(client_module.DEADLINES, "wait", interrupted)
    with pytest.raises(Interrupt):
        c.publish("room/1", 1)
    monkeypatch.undo()
    assert rec.outcomes("publish") == []  # the ack is 300 ms away
    c.drain(5.0)
    c.close()
    (_, outcome, latency, fields), = [r for r in rec.requests if r[0] == "publish"]
    assert outcome == "ok" and latency >= 300 and fields["msg_id"]
    assert server.stats()["totals"]["messages"]["published"] == 1  # both sides agree


def test_an_interrupted_request_that_never_gets_a_reply_reports_the_close(server_factory,
                                                                         monkeypatch):
    server = server_factory('\n[[faults]]\nkind = "latency"\nms = 5000\nops = ["publish"]\n'
                            'where = "before_ack"\n')
    c, rec = client(server)
    assert c.connect().ok
    monkeypatch.setattr(client_module.DEADLINES, "wait",
                        lambda event, timeout: (_ for _ in ()).throw(Interrupt()))
    with pytest.raises(Interrupt):
        c.publish("room/1", 1)
    monkeypatch.undo()
    c.drain(0.2)
    c.close()
    assert rec.outcomes("publish") == ["close 1000"]  # reported once, as our close


def test_a_url_that_is_not_websocket_is_its_own_outcome():
    c = RealtimeClient("http://127.0.0.1:1", key=DEMO_KEY, reporter=Recorder())
    assert c.connect().outcome == "invalid_url"



def test_the_live_duplicate_count_remembers_a_bounded_window_of_ids():
    # A long-lived subscriber must not keep every id it ever received (a soak grew its
    # load generator by 120 MB a minute): it forgets the oldest past SEEN_IDS.
    sub = RealtimeClient("ws://127.0.0.1:1")
    frame = {"type": "message", "channel": "room/1"}

    def deliver(n: int) -> None:
        sub._delivered("message", {**frame, "data": {"id": f"p:{n}", "pub": "p"}}, 10)

    for n in range(1, 3 * SEEN_IDS + 1):
        deliver(n)
    deliver(3 * SEEN_IDS)  # a copy of a recent message is still a duplicate
    assert sub.duplicates == 1 and sub.received == 3 * SEEN_IDS + 1
    assert len(sub._seen) == len(sub._seen_order) == SEEN_IDS
