"""The raw client event log: one unrounded CSV row per request, delivery and close.

Locust's own CSVs round latencies above 100 ms and aggregate away who saw what; the
analysis needs every sample. Rows are buffered in memory and written in whole lines
by `flush` (on a timer and at exit), so logging is not the bottleneck. Each Locust
process writes its own file (`client-events-<tag>.csv`) into the run directory.
"""

from __future__ import annotations

import collections
import csv
import io
import threading
from pathlib import Path
from typing import Any

COLUMNS = ("t", "user", "user_class", "op", "outcome", "latency_ms", "attempt", "bytes",
           "channel", "msg_id", "peer", "intended_t", "policy")
FLUSH_ROWS = 5000
_COMMAS = len(COLUMNS) - 1


class EventLog:
    """Buffered CSV writer; safe to call from many greenlets or threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        # Appends and pops of a deque are atomic: `row` takes no lock, only `flush` does.
        self._rows: collections.deque[tuple[Any, ...]] = collections.deque()
        self._flush_lock = threading.Lock()
        self.rows_written = 0
        if fresh:
            self._file.write(",".join(COLUMNS) + "\n")
            self._file.flush()

    def row(self, t: float, user: str, user_class: str, op: str, outcome: str,
            latency_ms: float | None = None, attempt: int = 1, nbytes: int = 0,
            channel: str = "", msg_id: str = "", peer: str = "",
            intended_t: float | None = None, policy: str = "") -> None:
        # Raw values, formatted at flush time (`_lines`).
        record = (t, user, user_class, op, outcome, latency_ms, attempt, nbytes, channel,
                  msg_id, peer, intended_t, policy)
        self._rows.append(record)
        if len(self._rows) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        with self._flush_lock:
            pending = self._rows
            rows = [pending.popleft() for _ in range(len(pending))]
            if not rows or self._file.closed:
                return
            self._file.write(_lines(rows))
            self._file.flush()
            self.rows_written += len(rows)

    def close(self) -> None:
        self.flush()
        if not self._file.closed:
            self._file.close()


def _lines(rows: list[tuple[Any, ...]]) -> str:
    """CSV text for `rows`: floats with repr (shortest round-trip, so unrounded), None
    as an empty field.

    f-strings are a third faster than the csv module, which matters at tens of
    thousands of rows a second. The batch is checked once: if some field needs quoting
    (a comma, a quote or a line break inside it: error codes and peer ids come from the
    server), the rows are written one by one and those rows by the csv module.
    """
    text = "".join([_plain(r) for r in rows])
    if text.count(",") == _COMMAS * len(rows) and text.count("\n") == len(rows) \
            and '"' not in text and "\r" not in text:
        return text
    return "".join([_quoted(r) for r in rows])


def _plain(r: tuple[Any, ...]) -> str:
    t, user, user_class, op, outcome, latency, attempt, nbytes, channel, msg_id, peer, \
        intended_t, policy = r
    return (f"{t!r},{user},{user_class},{op},{outcome},"
            f"{'' if latency is None else repr(latency)},{attempt},{nbytes},{channel},"
            f"{msg_id},{peer},{'' if intended_t is None else repr(intended_t)},{policy}\n")


def _quoted(r: tuple[Any, ...]) -> str:
    line = _plain(r)
    if line.count(",") == _COMMAS and line.count("\n") == 1 and '"' not in line \
            and "\r" not in line:
        return line
    out = io.StringIO()
    # With "\r\n" as its terminator the csv module quotes a field holding either
    # character (with "\n" alone a bare "\r" would go out unquoted).
    csv.writer(out, lineterminator="\r\n").writerow(r)
    return out.getvalue()[:-2] + "\n"
