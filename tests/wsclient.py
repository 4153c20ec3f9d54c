"""A small synchronous protocol client for conformance tests (websockets.sync).

Tests wait on frames, never on sleeps. The one tool for "nothing else arrived" is
`Client.sync()`: the server answers a connection's frames in order, and it writes a
fan-out (message, presence, direct) to every recipient before it acks the sender, so
a `pong` read after the sender's ack proves that anything meant for this connection
was already on the wire in front of it.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import jwt
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

# The demo secret is short by contract (`sk_secret_demo`).
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)

RECV_TIMEOUT_S = 5.0
MAX_FRAMES = 1000  # bound on every read loop
DEMO_KEY = "pk_live_demo"
READONLY_KEY = "pk_live_readonly"
DEMO_SECRET_ID = "sk_id_demo"
DEMO_SECRET = "sk_secret_demo"
DEMO_BEARER = f"{DEMO_SECRET_ID}:{DEMO_SECRET}"

T = TypeVar("T")


def unique(prefix: str) -> str:
    """A name no other test uses (channels, peerIds) on a shared server."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_token(sub: str | None, *, ttl: float = 3600, secret_id: str | None = DEMO_SECRET_ID,
               secret: str = DEMO_SECRET, algorithm: str = "HS256",
               headers: dict[str, Any] | None = None, **claims: Any) -> str:
    """An HS256 JWT as an app backend would mint it.

    `sub=None` leaves `sub` out and `secret_id=None` the `kid` header; any claim given
    (`exp` too) replaces the default.
    """
    body: dict[str, Any] = {"exp": int(time.time() + ttl), **claims}
    if sub is not None:
        body["sub"] = sub
    header = {"kid": secret_id} if secret_id is not None else {}
    return jwt.encode(body, secret, algorithm=algorithm, headers={**header, **(headers or {})})


def close_code(exc: ConnectionClosed) -> int | None:
    """The code of the close frame the server sent (None: no close frame)."""
    return exc.rcvd.code if exc.rcvd is not None else None


class Client:
    """One WebSocket connection speaking the JSON protocol."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] | None = None

    @property
    def peer_id(self) -> str:
        assert self.welcome is not None, "not welcomed"
        return self.welcome["peerId"]

    def send(self, frame: Any) -> None:
        """Send any JSON value as one text frame."""
        self.ws.send(json.dumps(frame))

    def send_raw(self, data: str | bytes) -> None:
        """Send text (str) or binary (bytes) exactly as given."""
        self.ws.send(data)

    def recv(self, timeout: float = RECV_TIMEOUT_S) -> dict[str, Any]:
        """The next frame, parsed; fails the test when none arrives in time."""
        try:
            raw = self.ws.recv(timeout=timeout)
        except TimeoutError:
            raise AssertionError(f"no frame within {timeout} s") from None
        return json.loads(raw)

    def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send one frame and return the next frame received."""
        self.send(frame)
        return self.recv()

    def sync(self) -> list[dict[str, Any]]:
        """Ping, read up to the pong; the frames that were queued before it."""
        self.send({"type": "ping"})
        frames = []
        for _ in range(MAX_FRAMES):
            frame = self.recv()
            if frame == {"type": "pong"}:
                return frames
            frames.append(frame)
        raise AssertionError(f"no pong among {MAX_FRAMES} frames")

    def recv_until_closed(self, timeout: float = RECV_TIMEOUT_S
                          ) -> tuple[list[dict[str, Any]], int | None]:
        """Read until the server closes; (frames before the close, close code)."""
        frames = []
        deadline = time.monotonic() + timeout
        for _ in range(MAX_FRAMES):
            left = deadline - time.monotonic()
            try:
                raw = self.ws.recv(timeout=max(left, 0.001))
            except ConnectionClosed as exc:
                return frames, close_code(exc)
            except TimeoutError:
                raise AssertionError(f"not closed within {timeout} s; got {frames}") from None
            frames.append(json.loads(raw))
        raise AssertionError(f"not closed after {MAX_FRAMES} frames")

    def close(self) -> None:
        self.ws.close()


class ClientPool:
    """Opens clients against one server and closes all of them at the end of a test."""

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self.clients: list[Client] = []

    def open(self, query: str) -> Client:
        """Upgrade with a raw query string; nothing read yet."""
        url = f"{self.ws_url}?{query}" if query else self.ws_url
        client = Client(connect(url, open_timeout=RECV_TIMEOUT_S, compression=None,
                                legacy=True))
        self.clients.append(client)
        return client

    def welcomed(self, query: str) -> Client:
        client = self.open(query)
        welcome = client.recv()
        assert welcome["type"] == "welcome", welcome
        client.welcome = welcome
        return client

    def key(self, key: str = DEMO_KEY) -> Client:
        return self.welcomed(f"key={key}")

    def token(self, token: str) -> Client:
        return self.welcomed(f"token={token}")

    def rejected(self, query: str) -> tuple[list[dict[str, Any]], int | None]:
        """Connect and read to the close: (frames, code). A rejection sends no frame."""
        return self.open(query).recv_until_closed()

    def close_all(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()


@contextmanager
def client_pool(ws_url: str) -> Iterator[ClientPool]:
    pool = ClientPool(ws_url)
    try:
        yield pool
    finally:
        pool.close_all()


def wait_until(probe: Callable[[], T | None], timeout: float = 5.0,
               interval: float = 0.02) -> T:
    """Poll `probe` until it returns a truthy value (a condition, not a delay)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def expected_error(code: str, request_id: str | None = None) -> dict[str, Any]:
    """An `error` frame as `without_message` leaves it."""
    frame: dict[str, Any] = {"type": "error", "code": code}
    if request_id is not None:
        frame["requestId"] = request_id
    return frame


def without_message(frame: dict[str, Any]) -> dict[str, Any]:
    """An error frame minus its human `message`, which must be non-empty text.

    `message` is informational (clients branch on `code`), so tests pin everything
    else exactly and only the presence and type of `message`.
    """
    assert frame.get("type") == "error", frame
    assert isinstance(frame.get("message"), str) and frame["message"], frame
    return {k: v for k, v in frame.items() if k != "message"}
