"""The raw client event log: one unrounded row per request, delivery and close.

Locust's own CSVs round latencies above 100 ms and aggregate away who saw what; the
analysis needs every sample. Rows are buffered in memory as raw tuples (the client's
hot path does nothing else) and turned into Arrow columns by `flush` (on a timer and
at exit). Each Locust process writes its own directory, `client-events-<tag>/`, in the
run directory, and each flush one Parquet file in it (`<seq>.parquet`: typed columns,
zstd, strings dictionary-encoded on disk).

One file per batch, not one ParquetWriter per process: a Parquet file is readable only
once its footer is written, so a writer open for the whole run loses everything when
its process is killed. A batch is written to a hidden temporary name and renamed into
place, so every `*.parquet` file is whole; a run cut short (Ctrl-C, a killed worker)
keeps every batch already flushed and stays analysable. At one flush a second the
file count stays modest (180 files for a 3-minute run per process).

A Locust worker on another machine has no run directory of its own: its log ships
each batch's Parquet bytes (`parquet_bytes`, the very file it would have written) to
the master, whose `ShippedLogs` writes them (the Locust side is `loadtests.locustlog`).

Run directories written before this kept one CSV per process (`client-events-<tag>.csv`,
header `COLUMNS`); `loadtests.accounting.load_client_events` reads both.
"""

from __future__ import annotations

import collections
import csv
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = ("t", "user", "user_class", "op", "outcome", "latency_ms", "attempt", "bytes",
           "channel", "msg_id", "peer", "intended_t", "policy")
# t and intended_t: unix seconds as float64 (exact: what time.time() returned);
# latency_ms and intended_t are null when absent.
SCHEMA = pa.schema([
    ("t", pa.float64()), ("user", pa.string()), ("user_class", pa.string()),
    ("op", pa.string()), ("outcome", pa.string()), ("latency_ms", pa.float64()),
    ("attempt", pa.int32()), ("bytes", pa.int64()), ("channel", pa.string()),
    ("msg_id", pa.string()), ("peer", pa.string()), ("intended_t", pa.float64()),
    ("policy", pa.string())])
FLUSH_ROWS = 20000
FLUSH_S = 1.0  # a Locust process flushes its log this often (`loadtests.locustlog`)
COMPRESSION = "zstd"
SUFFIX = ".parquet"
# Dictionaries for the strings (users, codes, ops, channels repeat); floats split by
# byte (the exponent bytes of nearby times and latencies compress, their noise does
# not), which with zstd gives about 6 bytes a row on a real default run (CSV: 146).
DICTIONARY = [f.name for f in SCHEMA if pa.types.is_string(f.type)]
FLOAT_ENCODING = {f.name: "BYTE_STREAM_SPLIT" for f in SCHEMA if pa.types.is_float64(f.type)}
WRITE_OPTIONS: dict[str, Any] = {"compression": COMPRESSION, "use_dictionary": DICTIONARY,
                                 "column_encoding": FLOAT_ENCODING}
_COMMAS = len(COLUMNS) - 1


def log_dir(run_dir: str | Path, tag: str) -> Path:
    """`client-events-<tag>/`: one Locust process's event log directory."""
    return Path(run_dir) / f"client-events-{tag}"


def write_batch(directory: Path, seq: int, table: pa.Table) -> Path:
    """Write one batch as `<seq>.parquet`, atomically (temporary name, then rename)."""
    path, tmp = _batch_paths(directory, seq)
    pq.write_table(table, tmp, **WRITE_OPTIONS)
    os.replace(tmp, path)
    return path


def parquet_bytes(table: pa.Table) -> bytes:
    """One batch as the bytes of the Parquet file `write_batch` would write."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **WRITE_OPTIONS)
    return sink.getvalue().to_pybytes()


def write_batch_bytes(directory: Path, seq: int, data: bytes) -> Path:
    """Write a batch received as `parquet_bytes` as `<seq>.parquet`, atomically."""
    path, tmp = _batch_paths(directory, seq)
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


class ShippedLogs:
    """The logs other processes ship as `parquet_bytes` (a Locust master's, from its
    workers), each sender's batches written into its own directory of `run_dir`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.dirs: dict[str, Path] = {}  # sender (Locust client id) -> its log directory

    def directory(self, sender: str, tag: str) -> Path:
        """The sender's log directory, claimed on its first message: `client-events-<tag>`,
        or, when another sender or an earlier process already holds that name (two hosts
        of the same name and pid), the tag plus the end of the sender's id (Locust's
        `<host>_<uuid>`), so no two processes' batches ever share a directory."""
        d = self.dirs.get(sender)
        if d is None:
            d = log_dir(self.run_dir, tag)
            if d in self.dirs.values() or d.exists():
                d = log_dir(self.run_dir, f"{tag}-{sender.rsplit('_', 1)[-1][:8]}")
            self.dirs[sender] = d
        return d

    def write(self, sender: str, tag: str, seq: int, data: bytes) -> Path:
        d = self.directory(sender, tag)
        d.mkdir(parents=True, exist_ok=True)
        return write_batch_bytes(d, seq, data)


def _batch_paths(directory: Path, seq: int) -> tuple[Path, Path]:
    return directory / f"{seq:06d}{SUFFIX}", directory / f".{seq:06d}{SUFFIX}.tmp"


def table_of(rows: list[tuple[Any, ...]]) -> pa.Table:
    """The Arrow table of raw row tuples (in `COLUMNS` order)."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in COLUMNS]
    return pa.Table.from_arrays([pa.array(col, type=f.type)
                                 for col, f in zip(columns, SCHEMA, strict=True)],
                                schema=SCHEMA)


def warm() -> None:
    """Do once, now, what a process's first flush would do for the first time.

    The first `table_of` imports pandas (pyarrow converts Python sequences through its
    pandas shim): 0.5 s on the project's 2 vCPU machine, and a Locust process's first
    flush ran it inside the load, one second in, stalling every user of the process
    (a 510-570 ms gap in every real run's client rows at 1.0 s, 2026-12-07). Called
    at Locust's init, before the first user starts."""
    row = (0.0, "", "", "", "", None, 1, 0, "", "", "", None, "")
    parquet_bytes(table_of([row]))


class EventLog:
    """Buffered Parquet writer (one file per flush); safe from many greenlets or threads.

    Batches go to `directory`, or, with `send` instead, as `send(seq, parquet_bytes)`
    (a worker shipping its log to the master; `send` is called in `seq` order).
    """

    def __init__(self, directory: str | Path | None = None, *,
                 send: Callable[[int, bytes], None] | None = None) -> None:
        if (directory is None) == (send is None):
            raise ValueError("EventLog takes one of directory and send")
        self.dir = Path(directory) if directory is not None else None
        self._send = send
        existing: list[int] = []
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            existing = [int(p.name[:-len(SUFFIX)]) for p in self.dir.glob(f"*{SUFFIX}")
                        if p.name[:-len(SUFFIX)].isdigit()]
        self._seq = max(existing, default=0)  # a second log on the same dir appends
        # Appends and pops of a deque are atomic: `row` takes no lock, only `flush` does.
        self._rows: collections.deque[tuple[Any, ...]] = collections.deque()
        self._flush_lock = threading.Lock()
        self._closed = False
        self.rows_written = 0

    def _put(self, seq: int, table: pa.Table) -> None:
        if self._send is not None:
            self._send(seq, parquet_bytes(table))
        elif self.dir is not None:
            write_batch(self.dir, seq, table)

    def row(self, t: float, user: str, user_class: str, op: str, outcome: str,
            latency_ms: float | None = None, attempt: int = 1, nbytes: int = 0,
            channel: str = "", msg_id: str = "", peer: str = "",
            intended_t: float | None = None, policy: str = "") -> None:
        # Raw values, made into Arrow columns at flush time (`table_of`).
        record = (t, user, user_class, op, outcome, latency_ms, attempt, nbytes, channel,
                  msg_id, peer, intended_t, policy)
        self._rows.append(record)
        if len(self._rows) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        with self._flush_lock:
            pending = self._rows
            rows = [pending.popleft() for _ in range(len(pending))]
            if not rows or self._closed:
                return
            self._seq += 1
            self._put(self._seq, table_of(rows))
            self.rows_written += len(rows)

    def close(self) -> None:
        self.flush()
        self._closed = True


def csv_lines(rows: list[tuple[Any, ...]]) -> str:
    """CSV text for `rows` (no header), as the old log was written and `rtmsim export
    --csv` writes: floats with repr (shortest round-trip, so unrounded), None
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


def export_csv(directory: Path, dest: Path) -> int:
    """One process's Parquet batches as one CSV file in the old log format (header
    `COLUMNS`, rows as `csv_lines` writes them), one batch in memory at a time; rows."""
    n = 0
    with open(dest, "w", newline="", encoding="utf-8") as out:
        out.write(",".join(COLUMNS) + "\n")
        for path in sorted(p for p in directory.glob(f"*{SUFFIX}") if p.name[0] != "."):
            table = pq.read_table(path, schema=SCHEMA)
            rows = list(zip(*(table.column(c).to_pylist() for c in COLUMNS), strict=True))
            out.write(csv_lines(rows))
            n += len(rows)
    return n
