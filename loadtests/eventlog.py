"""The raw client event log: one unrounded CSV row per request, delivery and close.

Locust's own CSVs round latencies above 100 ms and aggregate away who saw what; the
analysis needs every sample. Rows are buffered in memory and written in whole lines
by `flush` (on a timer and at exit), so logging is not the bottleneck. Each Locust
process writes its own file (`client-events-<tag>.csv`) into the run directory.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import threading
from pathlib import Path
from typing import Any

COLUMNS = ("t", "user", "user_class", "op", "outcome", "latency_ms", "attempt", "bytes",
           "channel", "msg_id", "peer", "intended_t", "policy")
FLUSH_ROWS = 5000


class EventLog:
    """Buffered CSV writer; safe to call from many greenlets or threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()
        self._rows: list[tuple[Any, ...]] = []
        self.rows_written = 0
        if fresh:
            csv.writer(self._file).writerow(COLUMNS)
            self._file.flush()

    def row(self, t: float, user: str, user_class: str, op: str, outcome: str,
            latency_ms: float | None = None, attempt: int = 1, nbytes: int = 0,
            channel: str = "", msg_id: str = "", peer: str = "",
            intended_t: float | None = None, policy: str = "") -> None:
        record = (repr(t), user, user_class, op, outcome,
                  "" if latency_ms is None else repr(latency_ms), attempt, nbytes, channel,
                  msg_id, peer, "" if intended_t is None else repr(intended_t), policy)
        with self._lock:
            self._rows.append(record)
            full = len(self._rows) >= FLUSH_ROWS
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows or self._file.closed:
            return
        out = io.StringIO()
        csv.writer(out).writerows(rows)
        self._file.write(out.getvalue())
        self._file.flush()
        self.rows_written += len(rows)

    def close(self) -> None:
        self.flush()
        if not self._file.closed:
            self._file.close()


def process_tag() -> str:
    """A name for this process's log, unique across the machines of a distributed run."""
    return os.environ.get("RTMSIM_WORKER_TAG") or f"{socket.gethostname()}-{os.getpid()}"
