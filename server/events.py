"""The server event log: one JSON object per line, one line per thing that happened.

Every connect, reject, disconnect, error sent, close sent and REST call, with the
connection id and peerId, so one client's story can be rebuilt from the file (later
issues grade retry behaviour from it). Successful requests are logged too unless the
sink is created with `requests=False`, which keeps busy load runs small.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Protocol

import orjson


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
    """Appends events to a JSON-lines file through a large buffer.

    Writes go to Python's buffered file object, so a frame costs a dumps and a memory
    copy; `flush` runs on a timer and at shutdown.
    """

    def __init__(self, path: str | Path, *, requests: bool = True,
                 instance: str | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = open(self.path, "ab", buffering=1 << 20)  # noqa: SIM115
        self.wants_requests = requests
        self._extra = {"instance": instance} if instance else {}

    def emit(self, t: float, kind: str, **fields: Any) -> None:
        record = {"t": round(t, 6), "event": kind, **self._extra, **fields}
        self._file.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
