"""The load a calibration puts on the server: `RawClient` sockets in closed loops.

`loadtests.rawws` costs the load core little per frame, so the load core keeps up with
the server core. Each request waits for its answer before the next leaves (one in
flight per socket), and a step's concurrency is its number of sockets: the server stays
busy with at most that many requests queued, so what is measured is CPU per operation,
not queueing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import orjson

from loadtests.rawws import RawClient

from .servers import CalibrationError

CONNECT_TIMEOUT_S = 30.0
ANSWER_TIMEOUT_S = 30.0


def address(ws_url: str) -> tuple[str, int]:
    """(host, port) of ws://HOST:PORT/..."""
    hostport = ws_url.split("//", 1)[1].split("/", 1)[0]
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


class Peer(RawClient):
    """A socket that knows its peerId (from `welcome`) and counts what it receives."""

    peer_id: str | None = None

    def on_welcome(self, payload: bytes) -> None:
        self.peer_id = orjson.loads(payload)["peerId"]
        self.wants_payload = False  # from now on frames are only counted


class Requester(RawClient):
    """Sends requests one at a time, each once the answers to the last have arrived.

    `start(frame, answers, limit)`: `frame(i)` is the i-th request, `answers` the type
    markers of the frames that answer it, in order (an ack, then a presence snapshot
    for a subscribe). `finished` resolves after `limit` requests, or after `stop()`,
    once the request in flight has been answered. With `rtts`, each request's round
    trip (perf_counter seconds) is appended to it.
    """

    def __init__(self, host: str, port: int, path: str) -> None:
        super().__init__(host, port, path)
        self.done_requests = 0
        self.rtts: list[float] | None = None
        self._frame: Callable[[int], bytes] = lambda i: b""
        self._answers: Sequence[bytes] = ()
        self._limit: int | None = None
        self._waiting = 0  # answers still due for the request in flight
        self._running = False
        self._sent_at = 0.0
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self, frame: Callable[[int], bytes], answers: Sequence[bytes],
              limit: int | None = None) -> asyncio.Future[None]:
        self._frame, self._answers, self._limit = frame, answers, limit
        self.done_requests = 0
        self.finished = asyncio.get_running_loop().create_future()
        self._running = limit is None or limit > 0
        if self._running:
            self._send()
        else:
            self.finished.set_result(None)
        return self.finished

    def stop(self) -> asyncio.Future[None]:
        self._running = False
        if self._waiting == 0 and not self.finished.done():
            self.finished.set_result(None)
        return self.finished

    def _send(self) -> None:
        self._waiting = len(self._answers)
        self._sent_at = time.perf_counter()
        self.send_text(self._frame(self.done_requests))

    def on_text(self, payload: bytes) -> None:
        if self._waiting == 0:
            return self._fail(f"an unrequested frame: {payload[:200]!r}")
        expected = self._answers[len(self._answers) - self._waiting]
        if expected not in payload[:24]:
            return self._fail(f"expected {expected.decode()}, got {payload[:200]!r}")
        self._waiting -= 1
        if self._waiting:
            return None
        if self.rtts is not None:
            self.rtts.append(time.perf_counter() - self._sent_at)
        self.done_requests += 1
        if self._limit is not None and self.done_requests >= self._limit:
            self._running = False
        if self._running:
            self._send()
        elif not self.finished.done():
            self.finished.set_result(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._running or self._waiting:
            self._fail(f"the server closed the connection (code {self.close_code})")

    def _fail(self, problem: str) -> None:
        self._running = False
        self._waiting = 0
        if not self.finished.done():
            self.finished.set_exception(CalibrationError(problem))


class Probe(RawClient):
    """Light-load latency: `next_frame()` waits for the next text frame (a future each;
    fine at one message in flight)."""

    def __init__(self, host: str, port: int, path: str) -> None:
        super().__init__(host, port, path)
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    def on_text(self, payload: bytes) -> None:
        self._queue.put_nowait((time.perf_counter(), payload))

    async def next_frame(self) -> tuple[float, bytes]:
        """(perf_counter at arrival, payload) of the next frame."""
        return await asyncio.wait_for(self._queue.get(), ANSWER_TIMEOUT_S)


async def open_clients(make: Callable[[], RawClient], ws_url: str, n: int,
                       concurrency: int = 8) -> list:
    """Open `n` sockets (at most `concurrency` upgrades in flight), each welcomed."""
    host, port = address(ws_url)
    loop = asyncio.get_running_loop()
    clients: list[RawClient] = []
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            _, client = await loop.create_connection(make, host, port)
            await asyncio.wait_for(client.opened, CONNECT_TIMEOUT_S)
            clients.append(client)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, n)))))
    except (OSError, TimeoutError, ConnectionError) as exc:
        for c in clients:
            c.close()
        raise CalibrationError(f"could not connect to {ws_url}: {exc}") from None
    return clients


async def close_clients(clients: Sequence[RawClient], concurrency: int = 8) -> None:
    """Close each with a closing handshake (code 1000), at most `concurrency` at a
    time, until the server has answered every one."""
    todo = iter(clients)

    async def worker() -> None:
        for c in todo:
            c.send_close(1000)
            await asyncio.wait_for(c.closed, ANSWER_TIMEOUT_S)

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(clients))))))


async def run_for(clients: Sequence[Requester], seconds: float, frame: Callable[[int, int],
                  bytes], answers: Sequence[bytes]) -> int:
    """Every requester in its closed loop for `seconds`; the requests answered.

    `frame(k, i)` is requester k's i-th request.
    """
    for k, c in enumerate(clients):
        c.start(lambda i, k=k: frame(k, i), answers)
    await asyncio.sleep(seconds)
    await asyncio.wait_for(asyncio.gather(*(c.stop() for c in clients)), ANSWER_TIMEOUT_S)
    return sum(c.done_requests for c in clients)


async def run_each(clients: Sequence[Requester], frames: Sequence[Sequence[bytes]],
                   answers: Sequence[bytes]) -> int:
    """Requester k sends `frames[k]`, one at a time; the requests answered."""
    for c, fs in zip(clients, frames, strict=True):
        c.start(lambda i, fs=fs: fs[i], answers, limit=len(fs))
    await asyncio.wait_for(asyncio.gather(*(c.finished for c in clients)),
                           ANSWER_TIMEOUT_S)
    return sum(c.done_requests for c in clients)
