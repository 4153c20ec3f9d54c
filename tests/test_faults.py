"""Every fault kind observed over real sockets, plus runtime control and determinism."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time

import pytest
from websockets.exceptions import ConnectionClosed
from wsclient import DEMO_BEARER, client_pool, wait_until

_ids = itertools.count(1)
FAST = "[limits]\nrate_per_second = 1000000.0\nburst = 1000000.0\n"


def ask(client, frame):
    rid = f"r{next(_ids)}"
    client.send({**frame, "requestId": rid})
    for _ in range(500):
        reply = client.recv()
        if reply.get("requestId") == rid:
            return reply
    raise AssertionError("no reply")


def faults_config(*tables: str, extra: str = "") -> str:
    return extra + "".join(f"\n[[faults]]\n{t}\n" for t in tables)


def set_origin_now(server) -> None:
    status, _ = server.http("POST", "/sim/v1/clock", {"origin": int(time.time() * 1000)})
    assert status == 200


def add_fault(server, spec) -> dict:
    status, body = server.http("POST", "/sim/v1/faults", spec)
    assert status == 201, body
    return body


def test_error_fault_answers_the_configured_code(server_factory):
    server = server_factory(faults_config('kind = "error"\ncode = "internal_error"\n'
                                          'ops = ["publish"]'))
    with client_pool(server.ws_url) as pool:
        c = pool.key()
        reply = ask(c, {"type": "publish", "channel": "x", "data": 1})
        assert (reply["type"], reply["code"]) == ("error", "internal_error")
        assert reply["message"] == "injected internal_error (fault f1)"
        assert ask(c, {"type": "subscribe", "channel": "x"})["type"] == "ack"  # not targeted
    assert server.stats()["totals"]["errors"] == {"internal_error": 1}


def test_error_fault_is_deterministic_for_a_seed(server_factory):
    cfg = faults_config('kind = "error"\nprobability = 0.5')

    def outcomes(seed: str) -> list[str]:
        server = server_factory(cfg, "--seed", seed)
        with client_pool(server.ws_url) as pool:
            c = pool.key()
            return [ask(c, {"type": "publish", "channel": "x", "data": i}).get("code", "ok")
                    for i in range(40)]

    first, again, other = outcomes("7"), outcomes("7"), outcomes("8")
    assert first == again
    assert first != other
    assert 5 < first.count("backend_error") < 35


def test_latency_before_ack_holds_the_ack_not_the_delivery(server_factory):
    server = server_factory(faults_config('kind = "latency"\nms = 300\nwhere = "before_ack"\n'
                                          'ops = ["publish"]'))
    with client_pool(server.ws_url) as pool:
        pub, sub = pool.key(), pool.key()
        ask(sub, {"type": "subscribe", "channel": "c"})
        sub.sync()
        sent = time.monotonic()
        pub.send({"type": "publish", "channel": "c", "data": 1, "requestId": "p"})
        assert sub.recv()["type"] == "message"
        delivered = time.monotonic() - sent
        assert pub.recv() == {"type": "ack", "requestId": "p"}
        acked = time.monotonic() - sent
    assert acked >= 0.3
    assert delivered < acked


def test_latency_before_delivery_holds_both(server_factory):
    server = server_factory(faults_config(
        'kind = "latency"\ndistribution = "uniform"\nmin_ms = 200\nmax_ms = 250\n'
        'ops = ["publish"]'))
    with client_pool(server.ws_url) as pool:
        pub, sub = pool.key(), pool.key()
        ask(sub, {"type": "subscribe", "channel": "c"})
        sub.sync()
        sent = time.monotonic()
        pub.send({"type": "publish", "channel": "c", "data": 1})
        assert sub.recv()["type"] == "message"
        assert time.monotonic() - sent >= 0.2


def test_outage_window_fails_routed_operations_then_ends(server_factory):
    server = server_factory()
    with client_pool(server.ws_url) as pool:
        c = pool.key()
        set_origin_now(server)
        add_fault(server, {"kind": "outage", "start_s": 0, "end_s": 0.5})
        assert ask(c, {"type": "publish", "channel": "x", "data": 1})["code"] == "backend_error"
        assert ask(c, {"type": "send", "to": "p", "data": 1})["code"] == "backend_error"
        assert ask(c, {"type": "publish", "channel": "_system/x", "data": 1})[
            "code"] == "channel_reserved"  # validation still answers first
        assert c.sync() == []  # ping/pong: local work goes on
        deadline = time.monotonic() + 3
        while ask(c, {"type": "publish", "channel": "x", "data": 1})["type"] != "ack":
            assert time.monotonic() < deadline, "outage did not end"
            time.sleep(0.05)


def test_loss_drops_deliveries_but_acks_the_publish(server_factory):
    server = server_factory(faults_config('kind = "loss"\nprobability = 1.0'))
    with client_pool(server.ws_url) as pool:
        pub, sub = pool.key(), pool.key()
        ask(sub, {"type": "subscribe", "channel": "c"})
        sub.sync()
        assert ask(pub, {"type": "publish", "channel": "c", "data": 1})["type"] == "ack"
        assert sub.sync() == []
    stats = server.stats()["totals"]["messages"]
    assert (stats["published"], stats["delivered"]) == (1, 0)


def test_duplicate_sends_two_copies_and_counts_them(server_factory):
    server = server_factory(faults_config('kind = "duplicate"\nprobability = 1.0'))
    with client_pool(server.ws_url) as pool:
        pub, sub = pool.key(), pool.key()
        ask(sub, {"type": "subscribe", "channel": "c"})
        sub.sync()
        ask(pub, {"type": "publish", "channel": "c", "data": 1})
        frames = sub.sync()
        assert [f["data"] for f in frames] == [1, 1]
    assert server.stats()["totals"]["messages"]["delivered"] == 2


def test_loss_targets_only_matching_channels(server_factory):
    server = server_factory(faults_config('kind = "loss"\nprobability = 1.0\n'
                                          'channels = "lossy/*"'))
    with client_pool(server.ws_url) as pool:
        pub, sub = pool.key(), pool.key()
        ask(sub, {"type": "subscribe", "channel": "**"})
        sub.sync()
        ask(pub, {"type": "publish", "channel": "lossy/a", "data": 1})
        ask(pub, {"type": "publish", "channel": "fine/a", "data": 2})
        assert [f["data"] for f in sub.sync() if f["type"] == "message"] == [2]


@pytest.mark.parametrize(("spec", "expected"), [
    ({"kind": "deploy", "retry_after_ms": 1500}, ([{"type": "going_away",
                                                   "retryAfterMs": 1500}], 1001)),
    ({"kind": "close", "close_code": 4020}, ([], 4020)),
    ({"kind": "disconnect"}, ([], None)),  # no close frame at all
])
def test_connection_strikes(server_factory, spec, expected):
    server = server_factory()
    with client_pool(server.ws_url) as pool:
        victims = [pool.key() for _ in range(4)]
        set_origin_now(server)
        add_fault(server, {**spec, "at_s": 0.2})
        for victim in victims:
            assert victim.recv_until_closed() == expected
        survivor = pool.key()
        assert survivor.sync() == []  # still accepting and serving
    closes = server.stats()["totals"]["closes"]
    assert closes == {str(expected[1] or 1006): 4}


def test_strike_fraction_and_channel_targeting(server_factory):
    server = server_factory()
    with client_pool(server.ws_url) as pool:
        in_room = [pool.key() for _ in range(10)]
        others = [pool.key() for _ in range(3)]
        for c in in_room:
            ask(c, {"type": "subscribe", "channel": "room/1"})
        set_origin_now(server)
        add_fault(server, {"kind": "close", "close_code": 4020, "fraction": 0.5,
                           "channels": "room/*", "at_s": 0.1})
        wait_until(lambda: server.stats()["totals"]["closes"].get("4020"))
        assert sum(is_closed(c) for c in in_room) == 5
        assert not any(is_closed(c) for c in others)
    assert server.stats()["totals"]["closes"] == {"4020": 5}


def is_closed(client) -> bool:
    """True when the server closed this client (its ping gets no pong)."""
    try:
        client.sync()
    except ConnectionClosed:
        return True
    return False


def test_slow_consumer_is_closed_with_1008(server_factory):
    server = server_factory(faults_config('kind = "slow_consumer"\nmax_buffer_bytes = 65536',
                                          extra=FAST))
    with client_pool(server.ws_url) as pool:
        slow, pub = pool.key(), pool.key()
        ask(slow, {"type": "subscribe", "channel": "firehose"})
        big = "x" * 60_000
        for _ in range(400):  # ~24 MB offered to a client that does not read
            reply = ask(pub, {"type": "publish", "channel": "firehose", "data": big})
            assert reply["type"] == "ack"
            if server.stats()["totals"]["closes"].get("1008"):
                break
        assert server.stats()["totals"]["closes"] == {"1008": 1}
        _, code = slow.recv_until_closed(timeout=30)
        assert code == 1008
        assert pub.sync() == []


def test_connect_faults(server_factory):
    server = server_factory(faults_config('kind = "error"\nops = ["connect"]'))
    with client_pool(server.ws_url) as pool:
        assert pool.rejected("key=pk_live_demo") == ([], 1011)
    server.http("DELETE", "/sim/v1/faults")
    add_fault(server, {"kind": "latency", "ms": 300, "ops": ["connect"]})
    with client_pool(server.ws_url) as pool:
        started = time.monotonic()
        pool.key()
        assert time.monotonic() - started >= 0.3


def test_runtime_fault_control(server_factory):
    server = server_factory(faults_config('kind = "outage"\nstart_s = 1000'))
    status, body = server.http("GET", "/sim/v1/faults")
    assert status == 200
    assert [f["id"] for f in body["faults"]] == ["f1"]
    added = add_fault(server, {"kind": "error", "probability": 0.1, "id": "mine"})
    assert added["id"] == "mine" and added["hits"] == 0
    status, body = server.http("POST", "/sim/v1/faults", {"kind": "error", "probability": 3})
    assert (status, body) == (400, {"error": "invalid_fault",
                                    "message": "fault.probability: must be <= 1, got 3"})
    status, body = server.http("POST", "/sim/v1/faults", {"kind": "latency", "ms": 1,
                                                          "colour": "red"})
    assert (status, body["message"]) == (400, "fault.colour: unknown field for this kind")
    assert server.http("DELETE", "/sim/v1/faults/mine") == (200, {"deleted": "mine"})
    status, body = server.http("DELETE", "/sim/v1/faults/mine")
    assert (status, body["error"]) == (404, "not_found")
    assert server.http("DELETE", "/sim/v1/faults") == (200, {"deleted": 1})
    assert server.http("GET", "/sim/v1/faults")[1]["faults"] == []
    status, body = server.http("POST", "/sim/v1/clock", {"origin": "soon"})
    assert (status, body["error"]) == (400, "invalid_request")


def test_fault_control_honours_the_sim_token(server_factory):
    server = server_factory(None, "--sim-token", "s3cret")
    assert server.http("GET", "/sim/v1/faults")[0] == 401
    assert server.http("GET", "/sim/v1/faults", token="s3cret")[0] == 200
    assert server.http("GET", "/sim/v1/faults", token=DEMO_BEARER)[0] == 401


def test_invalid_faults_in_config_name_the_field(tmp_path):

    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[faults]]\nkind = "latency"\ndistribution = "lognormal"\n')
    proc = subprocess.run([sys.executable, "-m", "sim.cli", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr == ("rtmsim: faults[0].median_ms: is required for a lognormal "
                           "distribution\n")


def test_a_pause_stalls_the_event_loop_then_serves_what_waited(server_factory):
    server = server_factory(FAST)
    with client_pool(server.ws_url) as pool:
        c = pool.key()
        set_origin_now(server)
        add_fault(server, {"kind": "pause", "at_s": 0.0, "seconds": 1.0})
        # Round trips back to back until 2.5 s have passed (bounded in count too): the
        # one that meets the stall waits it out, and every one is answered.
        waits, sent = [], 0
        start = time.monotonic()
        while time.monotonic() - start < 2.5 and sent < 5000:
            t = time.monotonic()
            assert ask(c, {"type": "publish", "channel": "p", "data": sent})["type"] == "ack"
            waits.append(time.monotonic() - t)
            sent += 1
        assert max(waits) >= 0.8  # the stall is 1 s; the first request may meet its end
        assert sum(w >= 0.8 for w in waits) == 1
    stats = server.stats()
    assert stats["totals"]["messages"]["published"] == sent
    assert [f["hits"] for f in stats["faults"]["active"]] == [1]
