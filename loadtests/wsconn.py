"""A lean WebSocket client connection: websockets' Sans-I/O protocol on a plain socket.

Why not `websockets.sync`: under gevent each of its connections costs a reader thread,
a message assembler, a selector with a socket pair, and three greenlet switches per
message; the swarm ran at a third of a raw asyncio loop. Here one reader (a thread,
which is a greenlet once gevent has patched the process) feeds socket bytes to
websockets' `ClientProtocol` and hands each complete message to a callback at once.
Framing, masking, ping/pong and the closing handshake stay websockets' own, as in the
library's guide to integrating its Sans-I/O layer.

Writes never block the reader: bytes go to an outbox and whoever holds the write lock
sends them, so a reader that owes a pong while a user is stuck in `sendall` does not
wait for it (that wait could deadlock against a server that stops reading while its
own writes to us back up).
"""

from __future__ import annotations

import collections
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import USER_AGENT, Response
from websockets.protocol import State
from websockets.uri import parse_uri

from server.codes import CloseCode

RECV_BUFSIZE = 65536
ABNORMAL = CloseCode.ABNORMAL_CLOSURE  # closed without a close frame (RFC 6455 7.1.5)


class Closed(Exception):
    """The connection is closed; `code` is the close code received, 1006 if none."""

    def __init__(self, code: int) -> None:
        super().__init__(f"connection closed ({code})")
        self.code = code


class Connection:
    """One client connection. `open` does the handshake; `start` runs the reader."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol,
                 response: Response) -> None:
        self.response = response
        self._sock = sock
        self._wait_readable = None if isinstance(sock, ssl.SSLSocket) else _readable_wait(sock)
        self._protocol = protocol
        self._proto_lock = threading.Lock()  # protocol state, when threads are real
        self._write_lock = threading.Lock()  # one writer at a time on the socket
        self._outbox: collections.deque[bytes] = collections.deque()
        self._queued = 0  # chunks ever put in the outbox
        self._written = 0  # of those, how many reached the socket (in order)
        self._messages: collections.deque[bytes] = collections.deque()  # before start
        self._fragments: list[bytes] = []
        self._reader: threading.Thread | None = None
        self._ended = threading.Event()
        self._broken = False

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, timeout: float, max_size: int | None = None,
             ssl_context: ssl.SSLContext | None = None) -> Connection:
        """Connect and do the opening handshake, each socket step bounded by `timeout`.

        Raises OSError/TimeoutError for the transport, websockets' `InvalidStatus` for
        a non-101 answer and its other `InvalidHandshake` errors for a bad one.
        """
        uri = parse_uri(url)
        sock = socket.create_connection((uri.host, uri.port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if uri.secure:
                context = ssl_context or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=uri.host)
            protocol = ClientProtocol(uri, max_size=max_size)
            request = protocol.connect()
            request.headers.setdefault("User-Agent", USER_AGENT)
            protocol.send_request(request)
            sock.sendall(b"".join(protocol.data_to_send()))
            conn = cls._handshake(sock, protocol)
        except BaseException:
            sock.close()
            raise
        return conn

    @classmethod
    def _handshake(cls, sock: socket.socket, protocol: ClientProtocol) -> Connection:
        events: list[Any] = []
        while not events:
            data = sock.recv(RECV_BUFSIZE)
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            events = protocol.events_received()
            if not data and not events:
                break
        if protocol.handshake_exc is not None:
            raise protocol.handshake_exc
        if not events or not isinstance(events[0], Response):
            raise ConnectionError("the server closed the connection during the handshake")
        conn = cls(sock, protocol, events[0])
        conn._take(events[1:])  # frames that came with the response
        conn._enqueue(protocol.data_to_send())  # e.g. the echo of a close among them
        conn._write_out()
        return conn

    # -- receiving ------------------------------------------------------------------------

    def first_message(self, timeout: float) -> bytes:
        """Read (in the caller) until one whole message is in; before `start` only.

        Raises `Closed` if the connection closes first, TimeoutError after `timeout`.
        """
        self._sock.settimeout(timeout)
        while not self._messages:
            if not self._pump():
                raise Closed(self._close_code())
        return self._messages.popleft()

    def start(self, on_message: Callable[[bytes], None],
              on_close: Callable[[int], None]) -> None:
        """Run the reader: `on_message(payload)` for every message (in order, in the
        reader), then `on_close(code)` once, when the connection has ended."""
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._read, args=(on_message, on_close),
                                        daemon=True, name="rtmsim-ws-reader")
        self._reader.start()

    def _read(self, on_message: Callable[[bytes], None],
              on_close: Callable[[int], None]) -> None:
        try:
            while True:
                while self._messages:
                    on_message(self._messages.popleft())
                if self._wait_readable is not None:
                    self._wait_readable()
                if not self._pump():
                    break
            while self._messages:
                on_message(self._messages.popleft())
        finally:
            self._close_socket()
            self._ended.set()
            on_close(self._close_code())

    def _pump(self) -> bool:
        """One socket read fed to the protocol; False once the stream has ended."""
        try:
            data = self._sock.recv(RECV_BUFSIZE)
        except TimeoutError:
            raise
        except OSError:  # reset, or closed under us by `abort`
            data = b""
        with self._proto_lock:
            if data:
                self._protocol.receive_data(data)
            else:
                self._protocol.receive_eof()
            events = self._protocol.events_received()
            self._enqueue(self._protocol.data_to_send())  # pongs, the close reply
            ended = self._protocol.state is State.CLOSED
        self._write_out()
        self._take(events)
        return bool(data) and not ended

    def _take(self, events: list[Any]) -> None:
        for event in events:
            if not isinstance(event, Frame):
                continue
            if event.opcode is Opcode.TEXT or event.opcode is Opcode.BINARY:
                if event.fin:
                    self._messages.append(event.data)
                else:
                    self._fragments = [event.data]
            elif event.opcode is Opcode.CONT:
                self._fragments.append(event.data)
                if event.fin:
                    self._messages.append(b"".join(self._fragments))
                    self._fragments = []

    # -- sending --------------------------------------------------------------------------

    def send(self, data: bytes | str, *, text: bool = True) -> None:
        """Send one message (a str is always text). Raises `Closed` once closed.

        It raises only when this message did not reach the socket: a write that fails
        after it (the reader's close echo or half-close, as the server ends the
        connection) says nothing about this one.
        """
        if isinstance(data, str):
            data, text = data.encode(), True
        with self._proto_lock:
            if self._protocol.state is not State.OPEN or self._broken:
                raise Closed(self._close_code())
            if text:
                self._protocol.send_text(data)
            else:
                self._protocol.send_binary(data)
            self._enqueue(self._protocol.data_to_send())
            mine = self._queued
        self._write_out()
        if self._broken and self._written < mine:
            raise Closed(self._close_code())

    def _enqueue(self, chunks: list[bytes]) -> None:
        """Queue the protocol's output; the caller holds the protocol lock."""
        self._outbox.extend(chunks)
        self._queued += len(chunks)

    def _write_out(self) -> None:
        """Send the outbox unless another writer is at it (it will send ours too)."""
        while self._outbox and self._write_lock.acquire(blocking=False):
            try:
                while self._outbox:
                    chunk = self._outbox.popleft()
                    if chunk:
                        # One send is enough for a small frame; `sendall` alone would
                        # ask gevent for the socket's buffer size on every call.
                        sent = self._sock.send(chunk)
                        if sent < len(chunk):
                            self._sock.sendall(chunk[sent:])
                    else:  # the protocol's end of stream: half-close
                        self._sock.shutdown(socket.SHUT_WR)
                    self._written += 1
            except OSError:
                # Sends fail from now on; the reader still takes what the server sent
                # (its close frame, e.g. 1009 for a frame it refused mid-write).
                self._outbox.clear()
                self._broken = True
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_WR)
            finally:
                self._write_lock.release()

    # -- closing --------------------------------------------------------------------------

    def close(self, code: int = 1000, timeout: float = 2.0) -> None:
        """Closing handshake from our side, waiting (bounded) for the server's echo."""
        with self._proto_lock:
            if self._protocol.state is State.OPEN:
                self._protocol.send_close(code)
                self._enqueue(self._protocol.data_to_send())
        self._write_out()
        if self._reader is not None and self._reader.is_alive():
            self._ended.wait(timeout)
        self.abort()

    def abort(self) -> None:
        """Drop the connection now; a running reader sees the end of the stream."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if self._reader is None:
            self._close_socket()

    def _close_socket(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._proto_lock:
            self._protocol.receive_eof()  # idempotent: the state is now CLOSED

    @property
    def close_code(self) -> int | None:
        """The close code received (1006 without one); None while open."""
        return self._protocol.close_code

    def _close_code(self) -> int:
        """The close code received so far; 1006 without one."""
        rcvd = self._protocol.close_rcvd
        return rcvd.code if rcvd is not None else ABNORMAL



def _readable_wait(sock: socket.socket) -> Callable[[], None] | None:
    """Under gevent, a wait until `sock` is readable, on the socket's own watcher.

    gevent's `recv` tries the system call first and waits only when it fails, so a
    reader looping on `recv` pays a failed call (EAGAIN, raised and caught) for every
    message it receives; waiting first halves its receive calls. gevent keeps this
    method private, so without it (or without gevent) the reader simply calls `recv`.
    TLS sockets are left out: decrypted bytes may wait in the SSL buffer while the
    socket itself has nothing to read.
    """
    wait = getattr(sock, "_wait", None)
    watcher = getattr(sock, "_read_event", None)
    if wait is None or watcher is None:
        return None
    return lambda: wait(watcher)
