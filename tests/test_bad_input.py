"""Bad input on the WebSocket port: the server answers it, keeps serving, never crashes.

Each test ends by checking that a fresh, well-behaved client still gets `welcome` and a
publish `ack`, and that the server process is alive. Every loop is bounded in count,
and every receive has a timeout.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from serverproc import ServerProcess
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect
from websockets.uri import parse_uri

RECV_TIMEOUT_S = 5
MAX_FRAMES = 50
KNOWN_TYPES = {"subscribe", "unsubscribe", "publish", "send", "ping"}
HIGH_RATE_CONFIG = """
[limits]
rate_per_second = 1000000.0
burst = 1000000.0
"""
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


# -- helpers ----------------------------------------------------------------------------

def recv_json(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=RECV_TIMEOUT_S))


@contextmanager
def ws_client(server: ServerProcess, url: str | None = None, **params: str
              ) -> Iterator[ClientConnection]:
    """A connected client whose `welcome` has been read."""
    target = url or server.url(**(params or {"key": "pk_live_demo"}))
    with connect(target, open_timeout=RECV_TIMEOUT_S, close_timeout=2) as ws:
        assert recv_json(ws)["type"] == "welcome"
        yield ws


def close_code_after(ws: ClientConnection, limit: int = MAX_FRAMES
                     ) -> tuple[list[Any], int | None]:
    """Read until the server closes; (frames before the close, close code)."""
    frames = []
    try:
        for _ in range(limit):
            frames.append(json.loads(ws.recv(timeout=RECV_TIMEOUT_S)))
    except ConnectionClosed as exc:
        return frames, exc.rcvd.code if exc.rcvd else None
    raise AssertionError(f"still open after {len(frames)} frames")


def assert_alive(ws: ClientConnection) -> None:
    ws.send('{"type":"ping"}')
    assert recv_json(ws) == {"type": "pong"}


def assert_healthy(server: ServerProcess) -> None:
    """The process runs and a fresh client gets welcome, then publish -> ack."""
    assert server.proc.poll() is None, "".join(server.output)
    with connect(server.url(key="pk_live_demo"), open_timeout=RECV_TIMEOUT_S) as ws:
        welcome = recv_json(ws)
        assert welcome["type"] == "welcome"
        assert welcome["maxMessageSize"] == 65536
        ws.send('{"type":"publish","channel":"health","data":1,"requestId":"h"}')
        assert recv_json(ws) == {"type": "ack", "requestId": "h"}


def is_request(text: str) -> bool:
    """True when `text` is a JSON object with a string `type` (a well-formed request)."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and isinstance(value.get("type"), str)


def ws_address(server: ServerProcess) -> tuple[str, int]:
    parts = urlsplit(server.ws_url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def publish_frame_of_size(size: int) -> str:
    head = '{"type":"publish","channel":"big","requestId":"big","data":"'
    frame = head + "x" * (size - len(head) - 2) + '"}'
    assert len(frame.encode()) == size
    return frame


# -- random frames (hypothesis) ------------------------------------------------------------

@FUZZ
@given(text=st.text(max_size=300))
def test_random_text_frames_get_malformed_message(demo_server, text):
    assume(not is_request(text))
    with ws_client(demo_server) as ws:
        ws.send(text)
        reply = recv_json(ws)
        assert reply["type"] == "error"
        assert reply["code"] == "malformed_message"
        assert "requestId" not in reply
        assert_alive(ws)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_random_bytes_as_text_frames(demo_server, raw):
    """Valid UTF-8 that is not a request -> malformed_message; invalid UTF-8 -> 1007."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    assume(text is None or not is_request(text))
    with ws_client(demo_server) as ws:
        ws.send(raw, text=True)
        if text is None:
            assert close_code_after(ws) == ([], 1007)
        else:
            assert recv_json(ws)["code"] == "malformed_message"
            assert_alive(ws)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_random_binary_frames_get_malformed_message(demo_server, raw):
    with ws_client(demo_server) as ws:
        ws.send(raw, text=False)
        assert recv_json(ws) == {"type": "error", "code": "malformed_message",
                                 "message": "binary frames are not accepted"}
        assert_alive(ws)


@FUZZ
@given(kind=st.text(min_size=0, max_size=80), rid=st.text(min_size=1, max_size=20))
def test_unknown_types_get_unknown_type_with_request_id(demo_server, kind, rid):
    assume(kind not in KNOWN_TYPES)
    with ws_client(demo_server) as ws:
        ws.send(json.dumps({"type": kind, "requestId": rid, "channel": "x"}))
        reply = recv_json(ws)
        assert (reply["type"], reply["code"], reply["requestId"]) == (
            "error", "unknown_type", rid)
        assert_alive(ws)


def test_after_fuzzing_the_server_is_healthy(demo_server):
    assert_healthy(demo_server)


# -- specific malformed frames ----------------------------------------------------------------

@pytest.mark.parametrize(("frame", "message"), [
    ("", "frame is not valid JSON"),
    ("{", "frame is not valid JSON"),
    ("null", "frame must be a JSON object"),
    ('[{"type":"ping"}]', "frame must be a JSON object"),
    ('"ping"', "frame must be a JSON object"),
    ("{}", "frame needs a string `type`"),
    ('{"type":null}', "frame needs a string `type`"),
    ('{"type":["ping"]}', "frame needs a string `type`"),
    ('{"type":"ping"} trailing', "frame is not valid JSON"),
    ("NaN", "frame is not valid JSON"),
])
def test_malformed_frame(demo_server, frame, message):
    with ws_client(demo_server) as ws:
        ws.send(frame)
        assert recv_json(ws) == {"type": "error", "code": "malformed_message",
                                 "message": message}
        assert_alive(ws)


@pytest.mark.parametrize("rid", ["", "x" * 129, "\u00e9" * 65, 7, ["r"], {"r": 1}])
def test_bad_request_id_is_malformed_message(demo_server, rid):
    with ws_client(demo_server) as ws:
        ws.send(json.dumps({"type": "publish", "channel": "r", "data": 1, "requestId": rid}))
        reply = recv_json(ws)
        assert (reply["type"], reply["code"]) == ("error", "malformed_message")
        assert "requestId" not in reply
        assert_alive(ws)


@pytest.mark.parametrize("rid", ["x" * 128, "\u00e9" * 64])
def test_request_id_of_128_bytes_is_accepted(demo_server, rid):
    with ws_client(demo_server) as ws:
        ws.send(json.dumps({"type": "publish", "channel": "r", "data": 1, "requestId": rid}))
        assert recv_json(ws) == {"type": "ack", "requestId": rid}


@pytest.mark.parametrize("raw", [
    b"\xff\xfe",  # never valid in UTF-8
    b'{"type":"ping","x":"\xc0\xaf"}',  # overlong encoding of "/"
    b'{"type":"ping","x":"\xed\xa0\x80"}',  # an encoded surrogate
    b'{"type":"ping","x":"\xe2\x82"}',  # truncated sequence
])
def test_invalid_utf8_text_frame_closes_1007_and_spares_others(demo_server, raw):
    with ws_client(demo_server) as bystander, \
            connect(demo_server.url(key="pk_live_demo"), open_timeout=RECV_TIMEOUT_S) as sender, \
            ws_client(demo_server) as abuser:
        sender_id = recv_json(sender)["peerId"]
        bystander.send('{"type":"subscribe","channel":"utf8-room","requestId":"s"}')
        assert recv_json(bystander) == {"type": "ack", "requestId": "s"}
        assert recv_json(bystander)["type"] == "presence"
        abuser.send(raw, text=True)
        assert close_code_after(abuser) == ([], 1007)
        sender.send('{"type":"publish","channel":"utf8-room","data":"still here",'
                    '"requestId":"p"}')
        assert recv_json(sender) == {"type": "ack", "requestId": "p"}
        assert recv_json(bystander) == {"type": "message", "channel": "utf8-room",
                                        "from": sender_id, "data": "still here"}
    assert_healthy(demo_server)


@pytest.mark.parametrize(("depth", "opener", "closer"), [
    (32_000, "[", "]"),  # 64,000 bytes: within the frame limit, beyond the parser's depth
    (10_000, '{"a":', "}"),
    (1_025, "[", "]"),
])
def test_deeply_nested_json_is_malformed_message(demo_server, depth, opener, closer):
    frame = opener * depth + ("1" if opener != "[" else "") + closer * depth
    assert len(frame.encode()) <= 65536
    with ws_client(demo_server) as ws:
        ws.send(frame)
        assert recv_json(ws) == {"type": "error", "code": "malformed_message",
                                 "message": "frame is not valid JSON"}
        assert_alive(ws)
    assert_healthy(demo_server)


def test_100000_levels_of_nesting_exceed_the_frame_limit(demo_server):
    with ws_client(demo_server) as ws:
        ws.send("[" * 100_000 + "]" * 100_000)  # 200,000 bytes
        assert close_code_after(ws) == ([], 1009)
    assert_healthy(demo_server)


def test_nested_request_data_is_acked_when_no_one_listens(demo_server):
    data = "[" * 300 + "]" * 300
    with ws_client(demo_server) as ws:
        ws.send('{"type":"publish","channel":"deep-nobody","requestId":"d","data":'
                + data + "}")
        assert recv_json(ws) == {"type": "ack", "requestId": "d"}


def test_nested_request_data_reaches_a_subscriber(server_factory):
    server = server_factory()
    depth = 300
    with ws_client(server) as sub, ws_client(server) as pub:
        sub.send('{"type":"subscribe","channel":"deep","requestId":"s"}')
        assert recv_json(sub) == {"type": "ack", "requestId": "s"}
        assert recv_json(sub)["type"] == "presence"
        pub.send('{"type":"publish","channel":"deep","requestId":"d","data":'
                 + "[" * depth + "]" * depth + "}")
        assert recv_json(pub) == {"type": "ack", "requestId": "d"}


# -- frame size ----------------------------------------------------------------------------

def test_1mb_frame_closes_1009(demo_server):
    with ws_client(demo_server) as bystander:
        with ws_client(demo_server) as ws:
            ws.send("x" * (1 << 20))
            assert close_code_after(ws) == ([], 1009)
        assert_alive(bystander)
    assert_healthy(demo_server)


def test_frame_of_65536_bytes_is_accepted(demo_server):
    with ws_client(demo_server) as ws:
        ws.send(publish_frame_of_size(65536))
        assert recv_json(ws) == {"type": "ack", "requestId": "big"}


def test_frame_of_65537_bytes_closes_1009(demo_server):
    with ws_client(demo_server) as ws:
        ws.send(publish_frame_of_size(65537))
        assert close_code_after(ws) == ([], 1009)
    assert_healthy(demo_server)


def test_binary_frame_over_the_limit_closes_1009(demo_server):
    with ws_client(demo_server) as ws:
        ws.send(b"\x00" * 65537)
        assert close_code_after(ws) == ([], 1009)


# -- floods --------------------------------------------------------------------------------

def test_10000_malformed_frames_are_all_answered(server_factory):
    server = server_factory(HIGH_RATE_CONFIG)
    kinds = ["x{", "[]", '{"type":1}', b"\x00"]
    n = 10_000
    with ws_client(server) as ws:
        for i in range(n):
            ws.send(kinds[i % len(kinds)])
        codes = [recv_json(ws)["code"] for _ in range(n)]
        assert codes == ["malformed_message"] * n
        assert_alive(ws)  # and nothing else was queued before the pong
        app = server.stats()["apps"]["app_demo"]
    assert app["errors"] == {"malformed_message": n}
    assert app["frames_in"] == {"invalid": n * 3 // 4, "binary": n // 4, "ping": 1}
    assert app["frames_out"] == {"welcome": 1, "error": n, "pong": 1}
    assert_healthy(server)


def test_flood_with_default_limits_closes_4011(demo_server):
    """Pings as fast as the round trip allows (far above 100/s) until the bucket is dry."""
    pongs = 0
    with ws_client(demo_server) as bystander, ws_client(demo_server) as ws:
        try:
            for _ in range(5_000):
                ws.send('{"type":"ping"}')
                assert recv_json(ws) == {"type": "pong"}
                pongs += 1
        except ConnectionClosed as exc:
            assert exc.rcvd is not None
            assert (exc.rcvd.code, exc.rcvd.reason) == (4011, "over message rate")
        else:
            raise AssertionError("5,000 pings and no 4011")
        assert 200 <= pongs < 5_000  # the burst of 200, plus what refilled meanwhile
        assert_alive(bystander)
    assert_healthy(demo_server)


def test_flood_without_reading_completes_the_4011_close(server_factory):
    """1,000 pings in one write: most are still queued when the server closes 4011."""
    server = server_factory()
    try:
        with socket.create_connection(ws_address(server), timeout=RECV_TIMEOUT_S) as sock:
            protocol = ClientProtocol(parse_uri(server.url(key="pk_live_demo")))
            protocol.send_request(protocol.connect())
            texts: list[bytes] = []

            def pump() -> None:
                for chunk in protocol.data_to_send():
                    if chunk:
                        sock.sendall(chunk)
                    else:
                        sock.shutdown(socket.SHUT_WR)
                data = sock.recv(65536)  # the socket timeout bounds the wait
                if data:
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                texts.extend(e.data for e in protocol.events_received()
                             if isinstance(e, Frame) and e.opcode is Opcode.TEXT)

            for _ in range(MAX_FRAMES):
                if texts:
                    break
                pump()
            assert json.loads(texts.pop(0))["type"] == "welcome"
            for _ in range(1_000):
                protocol.send_text(b'{"type":"ping"}')
            sock.sendall(b"".join(protocol.data_to_send()))
            for _ in range(2_000):
                if protocol.state is State.CLOSED:
                    break
                pump()
            assert protocol.close_rcvd is not None
            assert protocol.close_rcvd.code == 4011
            assert protocol.state is State.CLOSED  # the server closed TCP after the handshake
            assert len(texts) >= 200
    finally:
        server.proc.kill()  # a stuck connection would hold up a graceful stop


# -- the HTTP upgrade ----------------------------------------------------------------------

@pytest.mark.parametrize("query", [
    "key=pk_live_demo&key=pk_live_demo",
    "key=",
    "key",
    "",
    "token=",
    "key=pk_live_demo&token=x",
    "KEY=pk_live_demo",
    "key=pk_live_demo%00",
    "key=%ZZ",
    "key=pk_live_demo;x=1",
    "key=sk_id_demo",
    "key=pk_live_demo%20",
    "token=a.b.c",
    "token=" + "a" * 16_000,  # JWT-sized: reaches auth, not an HTTP 414
    "key=" + "x" * 20_000,
])
def test_weird_query_is_closed_4001(demo_server, query):
    with connect(f"{demo_server.ws_url}?{query}", open_timeout=RECV_TIMEOUT_S) as ws:
        assert close_code_after(ws) == ([], 4001)
    assert_healthy(demo_server)


@pytest.mark.parametrize("query", [
    "key=pk_live_demo&foo=bar&foo=",
    "key=pk_live_demo&&&",
    "&key=pk_live_demo",
    "key=pk%5Flive%5Fdemo",
    "key=pk_live_demo&=x&token_=y",
])
def test_unknown_or_empty_params_are_ignored(demo_server, query):
    with connect(f"{demo_server.ws_url}?{query}", open_timeout=RECV_TIMEOUT_S) as ws:
        welcome = recv_json(ws)
        assert (welcome["type"], welcome["expiresAt"]) == ("welcome", None)


def test_query_too_long_is_refused_at_upgrade(demo_server):
    with pytest.raises(InvalidStatus) as info:
        connect(f"{demo_server.ws_url}?key={'x' * 100_000}", open_timeout=RECV_TIMEOUT_S)
    assert info.value.response.status_code == 414
    assert_healthy(demo_server)


@pytest.mark.parametrize("path", ["/", "/v2", "/v1/", "/v1/extra", "/V1", "//v1", "/v1.0",
                                  "/v1%2F"])
def test_wrong_path_is_404_at_upgrade(demo_server, path):
    host, port = ws_address(demo_server)
    with pytest.raises(InvalidStatus) as info:
        connect(f"ws://{host}:{port}{path}?key=pk_live_demo", open_timeout=RECV_TIMEOUT_S)
    assert info.value.response.status_code == 404
    assert_healthy(demo_server)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1?key=pk_live_demo", 426),  # the right path, but no upgrade
    ("GET", "/v1", 426),
    ("GET", "/", 404),
    ("GET", "/favicon.ico", 404),
    ("POST", "/v1", 405),
])
def test_plain_http_on_the_ws_port(demo_server, method, path, status):
    host, port = ws_address(demo_server)
    conn = http.client.HTTPConnection(host, port, timeout=RECV_TIMEOUT_S)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == status
    if status == 426:
        assert response.getheader("Upgrade") == "websocket"
    assert_healthy(demo_server)


@pytest.mark.parametrize("raw", [
    b"\x00\xff\xfe garbage\r\n\r\n",
    b"GET /v1 HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 10_000 + b"\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32) + b"\r\n\r\n",  # TLS hello
])
def test_garbage_on_the_ws_port_is_dropped(demo_server, raw):
    with socket.create_connection(ws_address(demo_server), timeout=RECV_TIMEOUT_S) as sock:
        sock.sendall(raw)
        received = b""
        for _ in range(100):  # until the server closes (b"") or the timeout raises
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        else:
            raise AssertionError("server kept the socket open")
    assert received == b"" or received.startswith(b"HTTP/1.1 4")
    assert_healthy(demo_server)


def test_half_sent_handshake_does_not_block_others(demo_server):
    with socket.create_connection(ws_address(demo_server), timeout=RECV_TIMEOUT_S) as sock:
        sock.sendall(b"GET /v1?key=pk_live_demo HTTP/1.1\r\nHost: x\r\n")
        assert_healthy(demo_server)  # while the half-open handshake is pending


def test_no_tracebacks_in_the_server_log(demo_server):
    """Runs last: none of the abuse above made the server log an unexpected exception."""
    assert demo_server.proc.poll() is None
    assert not [line for line in demo_server.output if "Traceback" in line]
