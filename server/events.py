"""The server event log: one JSON object per line, one line per thing that happened.

Every connect, reject, disconnect, error sent, close sent and REST call, with the
connection id and peerId, so one client's story can be rebuilt from the file (later
issues grade retry behaviour from it). Successful requests are logged too unless the
sink is created with `requests=False`, which keeps busy load runs small.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import orjson

from .jsonenc import dumps


class EventSink(Protocol):
    wants_requests: bool

    def emit(self, t: float, kind: str, **fields: Any) -> None: ...


class MemoryEventLog:
    """Keeps events in a list (tests, virtual-time simulation)."""

    def __init__(self, *, requests: bool = True) -> None:
        self.wants_requests = requests
        self.events: list[dict[str, Any]] = []

    def emit(self, t: float, kind: str, **fields: Any) -> None:
        self.events.append({"t": t, "event": kind, **fields})

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]


class JsonlEventLog:
    """Appends events to a JSON-lines file through an in-memory buffer.

    An event costs a dumps and an append to one bytearray; `flush` (on a timer, when
    the buffer is large, and at shutdown) writes whole records in one `write` to a file
    opened with O_APPEND, so several instances can share one log without splitting a
    line. (Not a list of the lines: orjson's output is a 4 KB block however short, so
    a megabyte of buffered 80-byte lines held about 50 MB.)
    """

    FLUSH_BYTES = 1 << 20

    def __init__(self, path: str | Path, *, requests: bool = True,
                 instance: str | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                       0o644)
        self._buffer = bytearray()
        self.wants_requests = requests
        self._extra = {"instance": instance} if instance else {}

    def emit(self, t: float, kind: str, **fields: Any) -> None:
        record = {"t": round(t, 6), "event": kind, **self._extra, **fields}
        try:
            line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError:  # a client's requestId with a lone surrogate
            line = dumps(record) + b"\n"
        buffer = self._buffer
        buffer += line
        if len(buffer) >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._fd is None or not self._buffer:
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
