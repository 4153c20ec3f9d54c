"""A deliberately minimal WebSocket client: one asyncio Protocol per socket.

The benchmarks run server and load generator on a 2-core machine, so every microsecond
the client spends per frame is a microsecond the server does not get, and a ratio
between two servers measured with a heavy client mostly measures the client. A full
`websockets` client parses every frame into an object, unmasks, decodes UTF-8 and wakes
a coroutine per message; here:

- the HTTP upgrade is written and checked by hand, once per socket;
- inbound frames are only *walked*: two header bytes tell the opcode and the length, so
  a counting subscriber skips payloads it never looks at (it does not even copy them),
  and only frames the caller asked to see (`wants_payload`) are sliced out;
- outbound frames use an all-zero masking key. RFC 6455 requires a mask but lets the
  client choose it; with zeros the payload is sent as is, so building a frame is a
  header plus the JSON bytes. The server still runs its full unmasking code.
- replies are written from `data_received`, with no coroutine or future per frame.

Both servers under test see exactly the same bytes, so the client's shortcuts cannot
favour one of them.

Used by the benchmarks (`bench.load`) and by `rtmsim calibrate` (`sim.calibrate`),
which measures the server's CPU per operation with it; it lives here, below both, as
the layers require.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
ZERO_MASK = b"\x00\x00\x00\x00"


class HandshakeError(ConnectionError):
    """The server did not answer the upgrade with 101 and the right accept key."""


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, masked (all-zero key) client frame carrying `payload`."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", n)
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", n)
    return header + ZERO_MASK + payload


def upgrade_request(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """The upgrade request bytes and the `Sec-WebSocket-Accept` value to expect."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
               f"Sec-WebSocket-Version: 13\r\n\r\n").encode()
    return request, accept


class RawClient(asyncio.Protocol):
    """One client socket. Subclasses override `on_welcome` and `on_text`.

    `opened` resolves when the `welcome` frame arrives (fails if the server closes
    first). `frames` counts every text frame received; `on_text` is only called (with
    the payload) while `wants_payload` is true, otherwise payloads are skipped unread.
    """

    def __init__(self, host: str, port: int, path: str) -> None:
        self.request, self.accept = upgrade_request(host, port, path)
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.frames = 0
        self.wants_payload = True
        self.close_code: int | None = None  # from the server's close frame (1005: none)
        self._close_sent = False
        self._upgraded = False
        self._buf = b""  # an incomplete frame header or payload we need
        self._skip = 0  # payload bytes still to skip before the next header

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self._upgraded:
            data = self._finish_upgrade(data)
            if not data:
                return
        skip = self._skip
        if skip:
            if skip >= len(data):
                self._skip = skip - len(data)
                return
            data = data[skip:]
            self._skip = 0
        if self._buf:
            data = self._buf + data
            self._buf = b""
        self._walk(data)

    # -- frames ------------------------------------------------------------------

    def _walk(self, data: bytes) -> None:
        """Step from header to header; skip or hand out payloads."""
        i = 0
        n = len(data)
        wants = self.wants_payload
        while i + 2 <= n:
            b0 = data[i]
            length = data[i + 1] & 0x7F  # server frames are never masked
            start = i + 2
            if length == 126:
                if start + 2 > n:
                    break
                length = (data[start] << 8) | data[start + 1]
                start += 2
            elif length == 127:
                if start + 8 > n:
                    break
                (length,) = struct.unpack_from("!Q", data, start)
                start += 8
            end = start + length
            opcode = b0 & 0x0F
            if opcode == OP_TEXT and not wants:
                self.frames += 1
                if end > n:
                    self._skip = end - n
                    return
                i = end
                continue
            if end > n:
                break  # keep the whole frame until its payload has arrived
            payload = data[start:end]
            i = end
            if opcode == OP_TEXT:
                self.frames += 1
                if self.opened.done():
                    self.on_text(payload)
                else:
                    self._welcome(payload)
                wants = self.wants_payload
            elif opcode == OP_PING:
                self.write(client_frame(payload, OP_PONG))
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2]) if len(payload) >= 2 else 1005
                self.close_code = code
                if not self.opened.done():
                    self.opened.set_exception(HandshakeError(
                        f"closed {code} before welcome: {payload[2:].decode(errors='replace')}"))
                if not self._close_sent:  # echo, unless it answers our own close frame
                    self.write(client_frame(payload[:2], OP_CLOSE))
                if self.transport is not None:
                    self.transport.close()
                return
        if i < n:
            self._buf = data[i:]

    def _finish_upgrade(self, data: bytes) -> bytes:
        data = self._buf + data
        end = data.find(b"\r\n\r\n")
        if end < 0:
            self._buf = data
            return b""
        head, rest = data[:end], data[end + 4:]
        self._buf = b""
        lines = head.split(b"\r\n")
        ok = lines[0].startswith(b"HTTP/1.1 101") and any(
            line.lower().startswith(b"sec-websocket-accept:")
            and line.split(b":", 1)[1].strip() == self.accept for line in lines[1:])
        if not ok:
            if not self.opened.done():
                self.opened.set_exception(HandshakeError(lines[0].decode(errors="replace")))
            if self.transport is not None:
                self.transport.close()
            return b""
        self._upgraded = True
        return rest

    def _welcome(self, payload: bytes) -> None:
        if b'"welcome"' not in payload[:32]:
            self.opened.set_exception(HandshakeError(f"expected welcome, got {payload[:80]!r}"))
            return
        self.opened.set_result(None)
        self.on_welcome(payload)

    # -- for subclasses ---------------------------------------------------------------

    def write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def send_text(self, payload: bytes) -> None:
        self.write(client_frame(payload))

    def on_welcome(self, payload: bytes) -> None:
        """The `welcome` frame arrived: the connection is authenticated."""

    def on_text(self, payload: bytes) -> None:
        """A text frame arrived (only when `wants_payload`)."""

    def close(self) -> None:
        """Drop the socket without a closing handshake (the server sees EOF)."""
        if self.transport is not None:
            self.transport.close()

    def send_close(self, code: int = 1000) -> None:
        """Start the closing handshake; the socket closes once the server answers."""
        if not self._close_sent:
            self._close_sent = True
            self.write(client_frame(code.to_bytes(2, "big"), OP_CLOSE))

    def reset(self) -> None:
        """Drop the socket with a TCP RST: no close frame and no FIN (a crashed peer)."""
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


class SubscribeError(ConnectionError):
    """The server answered a subscribe with an error frame."""


class Subscriber(RawClient):
    """Subscribes to one channel, then only counts the frames it receives.

    `subscribed` resolves on the first frame holding `ready`: the ack by default (what
    any server under test sends), or `b'"type":"presence"'` to wait for our server's
    presence snapshot, which follows the ack, so that no answer is still in flight.
    Payloads are skipped from then on: a counting subscriber must cost the load core
    as little as it can.
    """

    def __init__(self, host: str, port: int, path: str, channel: str,
                 ready: bytes = b'"ack"') -> None:
        super().__init__(host, port, path)
        self.channel = channel
        self.ready = ready
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_welcome(self, payload: bytes) -> None:
        channel = json.dumps(self.channel).encode()
        self.send_text(b'{"type":"subscribe","channel":' + channel
                       + b',"requestId":"sub"}')

    def on_text(self, payload: bytes) -> None:
        if self.subscribed.done():
            return
        if self.ready in payload:
            self.wants_payload = False  # from now on frames are only counted
            self.subscribed.set_result(None)
        elif b'"error"' in payload:
            self.subscribed.set_exception(SubscribeError(
                f"subscribe failed: {payload[:200]!r}"))
