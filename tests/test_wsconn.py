"""`loadtests.wsconn.Connection` against a websockets asyncio server in this process.

The server is websockets' own (a thread running its event loop on a loopback port),
so what is checked is interoperation: fragmented and binary messages, pings answered,
close codes, HTTP rejections, TLS. Also the two helpers the client leans on for
speed: the deadline sweeper and the event log's fast CSV lines.
"""

from __future__ import annotations

import asyncio
import csv
import io
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import serve
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from loadtests.client import RealtimeClient
from loadtests.deadlines import Deadlines
from loadtests.eventlog import COLUMNS, FLUSH_ROWS, SCHEMA, EventLog, csv_lines
from loadtests.reporting import Reporter
from loadtests.wsconn import Closed, Connection


@contextmanager
def ws_server(handler: Callable[..., Any], *, ssl_context: ssl.SSLContext | None = None,
              process_request: Callable[..., Any] | None = None) -> Iterator[int]:
    """A websockets server on a free loopback port, in a thread; yields the port."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, ssl=ssl_context, compression=None,
                         process_request=process_request) as server:
            loop = asyncio.get_running_loop()
            state["port"] = server.sockets[0].getsockname()[1]
            state["loop"], state["stop"] = loop, loop.create_future()
            ready.set()
            await state["stop"]

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield state["port"]
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set_result, None)
        thread.join(10)


def test_fragments_binary_pings_and_the_close_code():
    seen: dict[str, Any] = {}

    async def handler(ws: Any) -> None:
        await ws.send(["ab", "cd"])  # one text message in two fragments
        await ws.send(b"\x00\x01")
        pong = await ws.ping()
        seen["pong_s"] = await asyncio.wait_for(pong, 5)
        seen["echo"] = await ws.recv()
        await ws.close(4003, "bye")

    messages: list[bytes] = []
    ended = threading.Event()
    codes: list[int] = []

    def on_close(code: int) -> None:
        codes.append(code)
        ended.set()

    with ws_server(handler) as port:
        conn = Connection.open(f"ws://127.0.0.1:{port}/", timeout=5)
        assert conn.response.status_code == 101
        assert conn.first_message(5) == b"abcd"
        conn.start(messages.append, on_close)
        conn.send(b'{"x":1}')
        assert ended.wait(10)
    assert messages == [b"\x00\x01"]
    assert seen["echo"] == '{"x":1}' and seen["pong_s"] >= 0
    assert codes == [4003] and conn.close_code == 4003
    with pytest.raises(Closed) as info:
        conn.send("late")
    assert info.value.code == 4003


def test_close_before_the_first_message_is_closed_with_its_code():
    async def handler(ws: Any) -> None:
        await ws.close(4001, "no")

    with ws_server(handler) as port:
        conn = Connection.open(f"ws://127.0.0.1:{port}/", timeout=5)
        with pytest.raises(Closed) as info:
            conn.first_message(5)
        conn.abort()
    assert info.value.code == 4001


def test_silence_before_the_first_message_times_out():
    async def handler(ws: Any) -> None:
        # Silent until the client goes (5 s at most): not a fixed 5 s the server's
        # shutdown then waits out after the test has its answer.
        with suppress(TimeoutError):
            await asyncio.wait_for(ws.wait_closed(), 5)

    with ws_server(handler) as port:
        conn = Connection.open(f"ws://127.0.0.1:{port}/", timeout=5)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.first_message(0.2)
        assert time.monotonic() - started < 3
        conn.abort()


def test_our_close_waits_for_the_echo():
    async def handler(ws: Any) -> None:
        async for _ in ws:
            pass

    ended = threading.Event()
    with ws_server(handler) as port:
        conn = Connection.open(f"ws://127.0.0.1:{port}/", timeout=5)
        conn.start(lambda _: None, lambda _: ended.set())
        conn.close(1000)
        assert ended.is_set()  # close() returned after the reader ended
    assert conn.close_code == 1000


def test_http_rejection_is_invalid_status():
    def reject(connection: Any, request: Any) -> Response:
        return Response(403, "Forbidden", Headers(), b"no\n")

    async def handler(ws: Any) -> None:
        pass

    with ws_server(handler, process_request=reject) as port:
        with pytest.raises(InvalidStatus) as info:
            Connection.open(f"ws://127.0.0.1:{port}/", timeout=5)
        assert info.value.response.status_code == 403
        c = RealtimeClient(f"ws://127.0.0.1:{port}", key="k", reporter=Reporter())
        assert c.connect().outcome == "http 403"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: (server context, client context)."""
    tmp = tmp_path_factory.mktemp("tls")
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


def test_wss(tls):
    server_ctx, client_ctx = tls

    async def handler(ws: Any) -> None:
        await ws.send('{"type":"welcome"}')
        await ws.send(await ws.recv())

    got: list[bytes] = []
    ended = threading.Event()
    with ws_server(handler, ssl_context=server_ctx) as port:
        conn = Connection.open(f"wss://127.0.0.1:{port}/", timeout=5, ssl_context=client_ctx)
        assert conn.first_message(5) == b'{"type":"welcome"}'
        conn.start(got.append, lambda _: ended.set())
        conn.send("over tls")
        assert ended.wait(10)
    assert got == [b"over tls"]


def test_wss_checks_the_certificate(tls):
    server_ctx, _ = tls

    async def handler(ws: Any) -> None:
        pass

    with ws_server(handler, ssl_context=server_ctx) as port, \
            pytest.raises(ssl.SSLCertVerificationError):
        Connection.open(f"wss://127.0.0.1:{port}/", timeout=5)


class _RacingSocket:
    """A socket whose first send succeeds while the reader, meanwhile, queues the
    server's close echo; the echo's write then fails as the server has gone."""

    def __init__(self, conn_box: list[Connection]) -> None:
        self.conn_box, self.sent = conn_box, []

    def send(self, chunk: bytes) -> int:
        if not self.sent:
            self.sent.append(chunk)
            self.conn_box[0]._enqueue([b"close echo"])  # what the reader does
            return len(chunk)
        raise BrokenPipeError("the server closed")

    def shutdown(self, how: int) -> None:
        pass


def test_a_sent_message_is_not_failed_by_a_later_write():
    """The CI flake of test_wss: the server echoed, closed and reset between our write
    and our check; send() raised Closed(1000) for a message the server had received."""
    box: list[Connection] = []
    sock = _RacingSocket(box)
    protocol = ClientProtocol(parse_uri("ws://127.0.0.1/"))
    protocol.state = State.OPEN
    conn = Connection(sock, protocol, Response(101, "Switching Protocols", Headers()))
    box.append(conn)
    conn.send("mine")  # written whole: no Closed, though the write after it failed
    assert len(sock.sent) == 1
    with pytest.raises(Closed):
        conn.send("after the failure")


# -- the deadline sweeper -----------------------------------------------------------------


def test_deadline_sets_the_event_after_its_timeout_not_before():
    deadlines = Deadlines(tick_s=0.01)
    event = threading.Event()
    started = time.monotonic()
    deadlines.wait(event, 0.2)
    waited = time.monotonic() - started
    assert event.is_set() and 0.2 <= waited < 2.0


def test_an_event_set_in_time_returns_at_once_and_is_forgotten():
    deadlines = Deadlines(tick_s=0.01)
    event = threading.Event()
    threading.Timer(0.05, event.set).start()
    started = time.monotonic()
    deadlines.wait(event, 30)
    assert time.monotonic() - started < 10
    assert deadlines._waiting == {}


# -- the event log's lines ------------------------------------------------------------------

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
floats = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(floats, text, text, text, text, st.none() | floats,
                          st.integers(1, 99), st.integers(0, 10**6), text, text, text,
                          st.none() | floats, text), max_size=5))
def test_lines_read_back_as_csv_unrounded(rows):
    back = list(csv.reader(io.StringIO(csv_lines(rows), newline="")))
    assert back == [["" if v is None else repr(v) if isinstance(v, float) else str(v)
                     for v in row] for row in rows]


def test_event_log_writes_every_row_in_parquet_batches(tmp_path: Path):
    log = EventLog(tmp_path / "log")
    n = 2 * FLUSH_ROWS + 1  # past two in-line flushes
    for i in range(n):
        log.row(1_800_000_000.123456 + i, "u", "C", "publish", "ok", 0.1 + 0.2, 1, 10)
    log.close()
    files = sorted((tmp_path / "log").glob("*.parquet"))
    assert [p.name for p in files] == ["000001.parquet", "000002.parquet", "000003.parquet"]
    table = pq.read_table(files)
    assert table.schema == SCHEMA and table.column_names == list(COLUMNS)
    assert table.num_rows == n and log.rows_written == n
    assert table.slice(0, 1).to_pylist() == [{
        "t": 1800000000.123456, "user": "u", "user_class": "C", "op": "publish",
        "outcome": "ok", "latency_ms": 0.30000000000000004, "attempt": 1, "bytes": 10,
        "channel": "", "msg_id": "", "peer": "", "intended_t": None, "policy": ""}]
