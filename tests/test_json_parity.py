r"""JSON parity with JavaScript: frames are read as `JSON.parse` reads them, re-encoded
to receivers as `JSON.stringify` writes them (PROTOCOL.md section 3).

orjson refuses two things RFC 8259's grammar allows: an unpaired surrogate escape
(`"\ud800"`) and a number beyond the double range (`1e400`, read as Infinity); it reads
integers beyond 64 bits as doubles, as JSON.parse does. `server.jsonenc` rescues exactly
those on orjson's error path, reading big integers as orjson does, and nothing else.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager

import jwt
import orjson
import pytest
from coredriver import Core
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from serverproc import ServerProcess
from websockets.sync.client import ClientConnection, connect
from wsclient import unique

from server.events import JsonlEventLog
from server.jsonenc import MAX_DEPTH, dumps, dumps_fallback, loads, loads_fallback

NOW = 1_000.0
INF = math.inf
BIG = "123456789012345678901234567890"
DEMO_BEARER = "sk_id_demo:sk_secret_demo"
RECV_TIMEOUT_S = 5
PROPERTY = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# -- jsonenc.loads -------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "value"), [
    (r'"\ud800"', "\ud800"),
    (r'"\udc00x"', "\udc00x"),
    (r'"\uDBFF"', "\udbff"),
    (r'"a\ud800\ud800"', "a\ud800\ud800"),
    (r'"\udc00\ud800"', "\udc00\ud800"),  # low then high: two lone surrogates, no pair
    (r'["\ud800\udc00","\ud800"]', ["\U00010000", "\ud800"]),  # a pair still pairs
    (r'{"\ud800":1}', {"\ud800": 1}),  # keys too
])
def test_loads_keeps_an_unpaired_surrogate_escape(text, value):
    assert loads(text) == value
    assert loads(text.encode()) == value


@pytest.mark.parametrize(("text", "value"), [
    ("1e400", INF),
    ("-1e400", -INF),
    ("1.5E+999", INF),
    ("1" * 400, INF),  # an integer beyond the double range: JSON.parse gives Infinity
    ("-" + "9" * 5000, -INF),  # longer than int()'s 4300-digit limit
    ('{"a":[1e400,-1e400]}', {"a": [INF, -INF]}),
])
def test_loads_reads_numbers_beyond_the_double_range_as_infinities(text, value):
    assert loads(text) == value


@pytest.mark.parametrize(("text", "value"), [
    (str(2**64 - 1), 2**64 - 1),
    (str(2**64), float(2**64)),
    (str(-(2**63)), -(2**63)),
    (str(-(2**63) - 1), float(-(2**63) - 1)),
    (BIG, 1.2345678901234568e29),
    ("-" + BIG, -1.2345678901234568e29),
])
def test_big_integers_become_doubles_beyond_64_bits_as_orjson_reads_them(text, value):
    assert orjson.loads(text) == value and type(orjson.loads(text)) is type(value)
    for got in (loads(text), loads_fallback(text), loads(r'["\ud800",' + text + "]")[1]):
        assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", [
    "NaN", "Infinity", "-Infinity", r'["\ud800",NaN]', r'["\ud800",Infinity]',
    r'["\ud800",-Infinity]', r'{"a":"\ud800","b":NaN}',
    '\ufeff"\\ud800"',  # a BOM
    r'"\ud800" x', r'["\ud800"] []', r'["\ud800",]', r'{"a":"\ud800",}', r'["\ud800"',
    r'["\ud800",01]', r'["\ud800",1.]', r'["\ud800",.5]', r'["\ud800",+1]', r'["\ud800",-]',
    '["\\ud800","\t"]',  # a raw control character
    r'["\ud800","\u12"]', r'["\ud800","\u 123"]', r'["\ud800","\u+123"]',
    r'["\ud800","\u1_23"]', r'["\ud800","\x41"]', r"['\ud800']",
    '["\\ud800",\u0661]',  # a non-ASCII digit
    '["\\ud800"]\u00a0',  # whitespace RFC 8259 does not list
    "\ud800",  # a raw surrogate cannot come from UTF-8
    '"\ud800"',
    "", " ", r"\ud800",
])
def test_loads_refuses_what_rfc_8259_refuses(text):
    with pytest.raises(orjson.JSONDecodeError):
        loads(text)
    with pytest.raises(ValueError):
        loads_fallback(text)


@pytest.mark.parametrize("data", [
    b'"\xed\xa0\x80"',  # a surrogate in UTF-8 form (WTF-8): not UTF-8
    b'"\xff"',
    b'\xef\xbb\xbf"\\ud800"',  # a BOM
    '"\\ud800"'.encode("utf-16"),  # stdlib json.loads would guess UTF-16
    '"\\ud800"'.encode("utf-32-le"),
])
def test_loads_refuses_bytes_that_are_not_utf8(data):
    with pytest.raises(orjson.JSONDecodeError):
        loads(data)


def test_a_refusal_is_orjsons_own_error():
    with pytest.raises(orjson.JSONDecodeError) as caught:
        loads(r'["\ud800",NaN]')
    assert str(caught.value).startswith("no low surrogate in string")


def nested(depth: int, inner: str = "1") -> str:
    return r'["\ud800",' + "[" * (depth - 1) + inner + "]" * (depth - 1) + "]"


def test_loads_nests_as_deep_as_orjson_and_no_deeper():
    orjson.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    value = loads(nested(MAX_DEPTH))
    assert value[0] == "\ud800"
    for depth in (MAX_DEPTH + 1, 10_000, 32_000):  # 32,000: stdlib's RecursionError
        with pytest.raises(orjson.JSONDecodeError):
            loads(nested(depth))
    with pytest.raises(orjson.JSONDecodeError):
        loads(r'{"a":"\ud800","b":' + '{"a":' * MAX_DEPTH + "1" + "}" * MAX_DEPTH + "}")


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = r'["\ud800","' + "[{" * 2000 + r'\"]"]'
    assert loads(text) == ["\ud800", "[{" * 2000 + '"]']


# -- jsonenc.dumps -------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "encoded"), [
    ("\ud800", rb'"\ud800"'),
    ("\udbff\udfff", rb'"\udbff\udfff"'),  # JSON.stringify escapes lone ones, lowercase
    ({"\ud800": ["\udc00x"]}, rb'{"\ud800":["\udc00x"]}'),
    ("\ud800\u00e9\U0001f600", b'"\\ud800\xc3\xa9\xf0\x9f\x98\x80"'),  # the rest raw UTF-8
    (["\ud800", "a\\ud800"], rb'["\ud800","a\\ud800"]'),  # an escaped backslash stays so
    (["\ud800", '"\n\x01\x7f\u2028'], b'["\\ud800","\\"\\n\\u0001\x7f\xe2\x80\xa8"]'),
    (INF, b"null"),
    (-INF, b"null"),
    (math.nan, b"null"),
    ({"a": [INF, -INF, "Infinity", "NaN"]}, b'{"a":[null,null,"Infinity","NaN"]}'),
    (["\ud800", INF, -INF, math.nan, "-Infinity"], rb'["\ud800",null,null,null,"-Infinity"]'),
    (1.2345678901234568e29, b"1.2345678901234568e+29"),
])
def test_dumps_writes_what_json_stringify_writes(value, encoded):
    assert dumps(value) == encoded
    assert dumps_fallback(value) == encoded


def test_dumps_deep_values_with_surrogates_and_infinities():
    value: object = ["\ud800", INF]
    for _ in range(MAX_DEPTH - 1):
        value = [value]
    encoded = dumps(value)  # deeper than orjson serializes (254)
    assert encoded == b"[" * MAX_DEPTH + rb'"\ud800",null' + b"]" * MAX_DEPTH


# -- properties ----------------------------------------------------------------------------

TOKENS = ["[", "]", "{", "}", ",", ":", '"', '"a"', r'"\ud800"', r'"\udc00"',
          r'"\ud800\udc00"', r'"\\ud800"', "\\", "1e400", "-1e400", "1", "-0", "01", "1.5",
          "1.", ".5", "-", "e5", BIG, "1" * 400, "NaN", "Infinity", "-Infinity", "true",
          "null", " ", "\t", "\n", "\ufeff", "\x00", "\u00e9", "\ud800", "x", '"\t"',
          r'"\u12"', r'"\x"', "\u00a0"]
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_ESCAPE = re.compile(r"\\(u[dD][89a-fA-F][0-9a-fA-F]{2}|.)", re.DOTALL)


def tamed(text: str) -> str:
    """`text` with every surrogate escape made a plain one and every number made 0."""
    out, end = [], 0
    for m in _STRING.finditer(text):
        out.append(_NUMBER.sub("0", text[end:m.start()]))
        out.append(_ESCAPE.sub(lambda e: r"\u0041" if len(e.group(1)) == 5 else e.group(),
                               m.group()))
        end = m.end()
    out.append(_NUMBER.sub("0", text[end:]))
    return "".join(out)


# Mostly valid pieces (each listed several times), a few invalid ones.
LEAVES = 4 * ["1e400", "-1e400", r'"\ud800"', r'"\udc00x"', r'"\ud800\udc00"', "1", BIG,
              "1" * 400, '"a"', "true", "null", "-0", "1.5E-400"] + [
    "NaN", "Infinity", "-Infinity", "01", '"\t"', r'"\x"', "1.", "\ufeff1", "tru",
    '"\ud800"']
AFFIXES = 20 * [""] + [" ", "\n", "\ufeff", ",", "]", "}", "x", "\x00", "\u00a0", "\\"]


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


_keys = st.sampled_from(3 * ['"k"', r'"\ud800"', '"\ufeff"'] + ["k", "1"])
almost_json = st.builds(
    lambda pre, body, post: pre + body + post, st.sampled_from(AFFIXES),
    st.recursive(st.sampled_from(LEAVES),
                 lambda inner: st.lists(inner, max_size=4).map(_array)
                 | st.lists(st.tuples(_keys, inner), max_size=4).map(_object), max_leaves=8),
    st.sampled_from(AFFIXES))
junk = st.lists(st.sampled_from(TOKENS), max_size=14).map("".join)


@PROPERTY
@given(almost_json | junk)
def test_fallback_accepts_nothing_orjson_refuses_but_surrogates_and_big_numbers(text):
    try:
        expected = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            loads_fallback(text)
        except ValueError:
            return
        orjson.loads(tamed(text))  # accepted once its surrogates and numbers are tamed
    else:
        assert loads_fallback(text) == expected
        assert loads(text) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


def finite(value):
    """The value JSON.stringify then JSON.parse give back: non-finite floats are null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [finite(v) for v in value]
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, int) and not -(2**63) <= value < 2**64 and not isinstance(value, bool):
        return float(value)
    return value


@PROPERTY
@given(json_values)
def test_dumps_then_loads_gives_the_value_back(value):
    """Any str (lone surrogates too), any float (infinities too), any int."""
    assert loads(dumps(value)) == finite(value)


@PROPERTY
@given(json_values)
def test_fallback_reads_what_orjson_reads_exactly(value):
    try:
        text = orjson.dumps(value)
    except orjson.JSONEncodeError:  # a lone surrogate or an int beyond 64 bits
        assume(False)
    assert loads_fallback(text) == orjson.loads(text)


# -- the core ------------------------------------------------------------------------------

def token(**claims) -> str:
    body = {"sub": "alice", "exp": int(NOW) + 3600, **claims}
    return jwt.encode(body, "sk_secret_demo", algorithm="HS256", headers={"kid": "sk_id_demo"})


def publish_frame(data: str, rid: str | None) -> str:
    tail = "" if rid is None else f',"requestId":"{rid}"'
    return '{"type":"publish","channel":"room/1","data":' + data + tail + "}"


def room(core: Core, n_subscribers: int = 1):
    """A publisher and subscribers of `room/1`, their welcome and presence taken."""
    subs = [core.connect(key="pk_live_demo") for _ in range(n_subscribers)]
    for sub in subs:
        core.send(sub, {"type": "subscribe", "channel": "room/1"})
    pub = core.connect(key="pk_live_demo")
    for conn in [*subs, pub]:
        core.take(conn)
    return pub, subs


DATA = [
    (r'"\ud800"', rb'"\ud800"', "\ud800"),
    (r'"\udc00x"', rb'"\udc00x"', "\udc00x"),
    ("1e400", b"null", None),
    ("-1e400", b"null", None),
    (BIG, b"1.2345678901234568e+29", 1.2345678901234568e29),
    (r'{"s":"\ud800 and","n":1e400}', rb'{"s":"\ud800 and","n":null}',
     {"s": "\ud800 and", "n": None}),
]


def message_bytes(sender: str, data: bytes) -> bytes:
    return b'{"type":"message","channel":"room/1","from":"' + sender.encode() + b'","data":' \
        + data + b"}"


@pytest.mark.parametrize(("data", "delivered", "value"), DATA)
def test_publish_with_request_id_is_acked_and_delivered_as_json_stringify_writes(
        data, delivered, value):
    core = Core()
    pub, [sub] = room(core)
    assert core.send(pub, publish_frame(data, "r1")) == [{"type": "ack", "requestId": "r1"}]
    assert core.raw[sub.id] == [message_bytes(pub.peer_id, delivered)]
    assert core.take(sub)[0]["data"] == value


@pytest.mark.parametrize(("data", "delivered", "value"), DATA)
def test_publish_without_request_id_is_routed_without_a_reply(data, delivered, value):
    core = Core()
    pub, [sub] = room(core)
    assert core.send(pub, publish_frame(data, None)) == []
    assert core.raw[sub.id] == [message_bytes(pub.peer_id, delivered)]
    assert core.service.stats.app(pub.app_id).published == 1


def test_a_request_id_with_a_lone_surrogate_comes_back_escaped():
    core = Core()
    pub, _ = room(core)
    core.send(pub, publish_frame(r'"\ud800"', r"\ud800-r1"))
    assert core.raw[pub.id] == [rb'{"type":"ack","requestId":"\ud800-r1"}']
    assert core.events.of_kind("ok")[-1]["requestId"] == "\ud800-r1"


def test_a_lone_surrogate_counts_three_bytes_of_a_request_id():
    """As TextEncoder counts the U+FFFD it becomes: 42 fit in 128 bytes, 43 do not."""
    core = Core()
    pub, _ = room(core)
    fits, too_long = r"\ud800" * 42, r"\ud800" * 43
    assert core.send(pub, publish_frame("1", fits)) == [
        {"type": "ack", "requestId": "\ud800" * 42}]
    assert core.send(pub, publish_frame("1", too_long)) == [
        {"type": "error", "code": "malformed_message",
         "message": "requestId must be a string of 1..128 bytes"}]


def test_an_error_frame_echoes_lone_surrogates_escaped():
    core = Core()
    conn = core.connect(key="pk_live_demo")
    core.take(conn)
    core.send(conn, r'{"type":"\ud800","requestId":"\udc00"}')
    assert core.raw[conn.id] == [rb'{"type":"error","code":"unknown_type",'
                                 rb'"message":"unknown type: \ud800","requestId":"\udc00"}']
    assert core.events.of_kind("error")[-1]["requestId"] == "\udc00"


@pytest.mark.parametrize("frame", [
    r'{"type":"subscribe","channel":"\ud800","requestId":"r"}',
    r'{"type":"unsubscribe","channel":"room/\udc00","requestId":"r"}',
    r'{"type":"publish","channel":"a\ud800","data":1,"requestId":"r"}',
])
def test_a_channel_with_a_lone_surrogate_is_invalid(frame):
    core = Core()
    conn = core.connect(key="pk_live_demo")
    core.take(conn)
    assert core.send(conn, frame) == [
        {"type": "error", "code": "invalid_channel", "requestId": "r",
         "message": "channel is not valid UTF-8 (unpaired surrogate)"}]


def test_a_peer_id_with_a_lone_surrogate_is_invalid():
    core = Core()
    conn = core.connect(key="pk_live_demo")
    core.take(conn)
    assert core.send(conn, r'{"type":"send","to":"\ud800","data":1,"requestId":"r"}') == [
        {"type": "error", "code": "invalid_peer_id", "requestId": "r",
         "message": "peerId must be printable ASCII"}]


def test_direct_carries_surrogates_and_infinities():
    core = Core()
    a, b = core.connect(token=token(sub="alice")), core.connect(token=token(sub="bob"))
    core.take(a), core.take(b)
    frame = r'{"type":"send","to":"bob","data":["\ud800",1e400,' + BIG + '],"requestId":"d"}'
    assert core.send(a, frame) == [{"type": "ack", "requestId": "d"}]
    assert core.raw[b.id] == [
        rb'{"type":"direct","from":"alice","data":["\ud800",null,1.2345678901234568e+29]}']


@pytest.mark.parametrize("frame", [
    '{"type":"publish","channel":"room/1","data":NaN,"requestId":"r"}',
    '{"type":"publish","channel":"room/1","data":Infinity,"requestId":"r"}',
    '{"type":"publish","channel":"room/1","data":-Infinity,"requestId":"r"}',
    r'{"type":"publish","channel":"room/1","data":["\ud800",NaN],"requestId":"r"}',
    r'{"type":"publish","channel":"room/1","data":[1e400,Infinity],"requestId":"r"}',
])
def test_nan_and_infinity_literals_are_still_malformed(frame):
    core = Core()
    pub, [sub] = room(core)
    assert core.send(pub, frame) == [{"type": "error", "code": "malformed_message",
                                      "message": "frame is not valid JSON"}]
    assert core.raw[sub.id] == []


def test_nesting_deeper_than_the_limit_is_malformed_even_with_a_surrogate():
    core = Core()
    pub, [sub] = room(core)
    inner = MAX_DEPTH - 1  # the frame object itself is one level

    def frame(depth: int) -> str:
        return publish_frame("[" * depth + r'"\ud800"' + "]" * depth, "deep")

    assert core.send(pub, frame(inner + 1)) == [{"type": "error", "code": "malformed_message",
                                                 "message": "frame is not valid JSON"}]
    assert core.raw[sub.id] == []
    assert core.send(pub, frame(inner)) == [{"type": "ack", "requestId": "deep"}]
    expected = b"[" * inner + rb'"\ud800"' + b"]" * inner
    assert core.raw[sub.id] == [message_bytes(pub.peer_id, expected)]


def test_token_metadata_with_a_lone_surrogate_reaches_welcome_and_presence():
    """A JWT's claims are read by the stdlib, so `\\ud800` in them is a lone surrogate."""
    core = Core()
    a = core.connect(token=token(sub="alice", metadata={"m": "\ud800"},
                                 peerMetadata={"p": "\udc00"}))
    assert core.raw[a.id][0].endswith(rb'"metadata":{"m":"\ud800"}}')
    b = core.connect(key="pk_live_demo")
    core.send(b, {"type": "subscribe", "channel": "lobby"})
    core.take(b)
    core.send(a, {"type": "subscribe", "channel": "lobby"})
    assert core.raw[b.id] == [rb'{"type":"presence","channel":"lobby","joined":'
                              rb'[{"peerId":"alice","metadata":{"p":"\udc00"}}],"left":[]}']


def test_the_event_log_keeps_a_line_with_a_lone_surrogate(tmp_path):
    log = JsonlEventLog(tmp_path / "events.jsonl")
    log.emit(1.5, "error", requestId="\ud800", code="unknown_type")
    log.emit(2.0, "ok", requestId="r2")
    log.close()
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert lines == [rb'{"t":1.5,"event":"error","requestId":"\ud800","code":"unknown_type"}',
                     b'{"t":2.0,"event":"ok","requestId":"r2"}']


# -- over real sockets ---------------------------------------------------------------------

@contextmanager
def ws(server: ServerProcess, **params: str) -> Iterator[ClientConnection]:
    """A connected client whose `welcome` has been read."""
    url = server.url(**(params or {"key": "pk_live_demo"}))
    with connect(url, open_timeout=RECV_TIMEOUT_S, close_timeout=2) as conn:
        assert json.loads(conn.recv(timeout=RECV_TIMEOUT_S))["type"] == "welcome"
        yield conn


def subscribed(conn: ClientConnection, channel: str) -> None:
    conn.send(json.dumps({"type": "subscribe", "channel": channel, "requestId": "s"}))
    assert json.loads(conn.recv(timeout=RECV_TIMEOUT_S)) == {"type": "ack", "requestId": "s"}
    assert json.loads(conn.recv(timeout=RECV_TIMEOUT_S))["type"] == "presence"


E2E_DATA = r'{"s":"\ud800 and 1e400","inf":1e400,"ninf":-1e400,"big":' + BIG + "}"
E2E_DELIVERED = (r'{"s":"\ud800 and 1e400","inf":null,"ninf":null,'
                 r'"big":1.2345678901234568e+29}')


def test_publish_over_a_socket_is_acked_and_delivered_byte_for_byte(demo_server):
    channel = unique("parity")
    with ws(demo_server) as sub, ws(demo_server) as pub:
        subscribed(sub, channel)
        pub.send('{"type":"publish","channel":"' + channel + '","data":' + E2E_DATA
                 + r',"requestId":"r1\ud800"}')
        assert pub.recv(timeout=RECV_TIMEOUT_S) == r'{"type":"ack","requestId":"r1\ud800"}'
        text = sub.recv(timeout=RECV_TIMEOUT_S)
        sender = json.loads(text)["from"]
        assert text == ('{"type":"message","channel":"' + channel + '","from":"' + sender
                        + '","data":' + E2E_DELIVERED + "}")
        pub.send(r'{"type":"ping","x":"\udc00"}')
        assert pub.recv(timeout=RECV_TIMEOUT_S) == '{"type":"pong"}'


def test_nan_over_a_socket_is_malformed_and_the_connection_stays(demo_server):
    with ws(demo_server) as conn:
        conn.send(r'{"type":"publish","channel":"a","data":["\ud800",NaN],"requestId":"r"}')
        assert json.loads(conn.recv(timeout=RECV_TIMEOUT_S)) == {
            "type": "error", "code": "malformed_message", "message": "frame is not valid JSON"}
        conn.send('{"type":"ping"}')
        assert conn.recv(timeout=RECV_TIMEOUT_S) == '{"type":"pong"}'


def test_rest_publish_with_a_surrogate_and_1e400(demo_server):
    channel = unique("parity-rest")
    with ws(demo_server) as sub:
        subscribed(sub, channel)
        raw = (r'{"data":["\ud800",1e400,' + BIG + "]}").encode()
        status, body = demo_server.http("POST", f"/v1/channels/{channel}/publish", raw=raw,
                                        token=DEMO_BEARER)
        assert (status, body) == (200, {"channel": channel, "delivered": 1})
        assert sub.recv(timeout=RECV_TIMEOUT_S) == (
            '{"type":"message","channel":"' + channel + '","from":"system","data":'
            + r'["\ud800",null,1.2345678901234568e+29]}')


@pytest.mark.parametrize("raw", [b'{"data":NaN}', b'{"data":"\\ud800",}',
                                 b'{"data":"\xed\xa0\x80"}', b'\xef\xbb\xbf{"data":1}'])
def test_rest_refuses_bodies_that_are_not_json(demo_server, raw):
    status, body = demo_server.http("POST", "/v1/channels/a/publish", raw=raw,
                                    token=DEMO_BEARER)
    assert (status, body) == (400, {"error": "invalid_request",
                                    "message": "body is not valid JSON"})


def test_rest_token_with_surrogate_metadata_welcomes_with_it(demo_server):
    raw = rb'{"peerId":"parity-meta","metadata":{"m":"\ud800"},"peerMetadata":{"p":"\udc00"}}'
    status, body = demo_server.http("POST", "/v1/tokens", raw=raw, token=DEMO_BEARER)
    assert status == 200
    url = demo_server.url(token=body["token"])
    with connect(url, open_timeout=RECV_TIMEOUT_S, close_timeout=2) as conn:
        welcome = conn.recv(timeout=RECV_TIMEOUT_S)
        assert r'"metadata":{"m":"\ud800"}' in welcome
        channel = unique("parity-peers")
        subscribed(conn, channel)
        status, body = demo_server.http("GET", f"/v1/channels/{channel}/peers",
                                        token=DEMO_BEARER)
        assert (status, body) == (200, {"channel": channel, "peers": [
            {"peerId": "parity-meta", "metadata": {"p": "\udc00"}}]})


def test_sim_clock_refuses_an_infinite_origin(demo_server):
    status, body = demo_server.http("POST", "/sim/v1/clock", raw=b'{"origin":1e400}')
    assert (status, body["error"]) == (400, "invalid_request")


REDIS_CONFIG = """
[server]
backend = "redis"
redis_url = "{url}"
redis_prefix = "parity"

[[apps]]
id = "app_demo"
[[apps.keys]]
id = "pk_live_demo"
"""


def test_a_message_with_a_surrogate_and_an_infinity_survives_the_redis_hop(
        server_factory, redis_server):
    cfg = REDIS_CONFIG.format(url=redis_server.url)
    a, b = (server_factory(cfg, "--instance-id", f"i{i}") for i in range(2))
    with ws(b) as sub, ws(a) as pub:
        subscribed(sub, "room/1")
        pub.send('{"type":"publish","channel":"room/1","data":' + E2E_DATA
                 + r',"requestId":"\ud800"}')
        assert pub.recv(timeout=RECV_TIMEOUT_S) == r'{"type":"ack","requestId":"\ud800"}'
        text = sub.recv(timeout=RECV_TIMEOUT_S)
        sender = json.loads(text)["from"]
        assert text == ('{"type":"message","channel":"room/1","from":"' + sender
                        + '","data":' + E2E_DELIVERED + "}")
