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

Run directories written before this kept one CSV per process (`client-events-<tag>.csv`,
header `COLUMNS`); `loadtests.accounting.load_client_events` reads both.
"""

from __future__ import annotations

import collections
import csv
import io
import os
import threading
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
COMPRESSION = "zstd"
SUFFIX = ".parquet"
# Dictionaries for the strings (users, codes, ops, channels repeat); floats split by
# byte (the exponent bytes of nearby times and latencies compress, their noise does
# not), which with zstd gives about 6 bytes a row on a real default run (CSV: 146).
DICTIONARY = [f.name for f in SCHEMA if pa.types.is_string(f.type)]
FLOAT_ENCODING = {f.name: "BYTE_STREAM_SPLIT" for f in SCHEMA if pa.types.is_float64(f.type)}
_COMMAS = len(COLUMNS) - 1


def log_dir(run_dir: str | Path, tag: str) -> Path:
    """`client-events-<tag>/`: one Locust process's event log directory."""
    return Path(run_dir) / f"client-events-{tag}"


def write_batch(directory: Path, seq: int, table: pa.Table) -> Path:
    """Write one batch as `<seq>.parquet`, atomically (temporary name, then rename)."""
    path = directory / f"{seq:06d}{SUFFIX}"
    tmp = directory / f".{seq:06d}{SUFFIX}.tmp"
    pq.write_table(table, tmp, compression=COMPRESSION, use_dictionary=DICTIONARY,
                   column_encoding=FLOAT_ENCODING)
    os.replace(tmp, path)
    return path


def table_of(rows: list[tuple[Any, ...]]) -> pa.Table:
    """The Arrow table of raw row tuples (in `COLUMNS` order)."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in COLUMNS]
    return pa.Table.from_arrays([pa.array(col, type=f.type)
                                 for col, f in zip(columns, SCHEMA, strict=True)],
                                schema=SCHEMA)


class EventLog:
    """Buffered Parquet writer (one file per flush); safe from many greenlets or threads."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        existing = [int(p.name[:-len(SUFFIX)]) for p in self.dir.glob(f"*{SUFFIX}")
                    if p.name[:-len(SUFFIX)].isdigit()]
        self._seq = max(existing, default=0)  # a second log on the same dir appends
        # Appends and pops of a deque are atomic: `row` takes no lock, only `flush` does.
        self._rows: collections.deque[tuple[Any, ...]] = collections.deque()
        self._flush_lock = threading.Lock()
        self._closed = False
        self.rows_written = 0

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
            write_batch(self.dir, self._seq, table_of(rows))
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
