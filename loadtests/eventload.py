"""Reading the client event log back: into one sorted frame, or split by recipient.

The log is written by `loadtests.eventlog` (Parquet batches; older runs one CSV per
process). `load_client_events` gives pandas frames for the analysis and notebooks;
`split_deliveries` is what lets the delivery accounting run out of core: deliveries
are nearly all of a large run's rows, and everything the accounting asks of them is
per recipient, so they are written out once, by recipient, into partitions that are
then read one at a time.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .eventlog import COLUMNS, DICTIONARY, SCHEMA, SUFFIX

Rows = Literal["all", "no deliveries", "deliveries"]
# What the delivery accounting reads of a delivery row (`split_deliveries` keeps these).
DELIVERY_COLUMNS = ("t", "user", "outcome", "channel", "msg_id", "peer")


def client_event_files(run_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """(Parquet batches, old CSV logs) of a run directory's client event logs.

    Batches are `client-events-<tag>/<seq>.parquet` (`loadtests.eventlog`); older runs
    wrote one `client-events-<tag>.csv` per process. Temporary files of a batch being
    written (a process killed mid-flush) do not match and are left out.
    """
    d = Path(run_dir)
    parquet = sorted(p for p in d.glob(f"client-events-*/*{SUFFIX}") if p.name[0] != ".")
    return parquet, sorted(d.glob("client-events-*.csv"))


def count_events(run_dir: str | Path) -> int:
    """How many client events a run directory holds, from the Parquet footers alone
    (an old CSV log is counted by its lines)."""
    parquet, csvs = client_event_files(run_dir)
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in parquet)
    for f in csvs:
        with f.open("rb") as lines:
            rows += max(0, sum(1 for _ in lines) - 1)
    return rows


def delivery_extent(run_dir: str | Path) -> tuple[int, float, float]:
    """(deliveries, earliest t, latest t) of a run's log, a file at a time (NaN times
    when there are none): what a run whose deliveries stay on disk knows of them."""
    n, lo, hi = 0, math.inf, -math.inf
    for table in _batches(run_dir, ("t", "op")):
        t = table.column("t").to_numpy()[_is_delivery(table.column("op"))]
        if len(t):
            n, lo, hi = n + len(t), min(lo, float(t.min())), max(hi, float(t.max()))
    return (n, lo, hi) if n else (0, math.nan, math.nan)


def load_client_events(run_dir: str | Path | None = None, *, rows: Rows = "all",
                       columns: Sequence[str] = COLUMNS,
                       files: Sequence[Path] | None = None) -> pd.DataFrame:
    """The client events of a run directory (Parquet batches and old CSV logs), or of
    `files`, in one frame sorted by time (stably: rows of equal time keep file order,
    Parquet batches first, then CSV logs), with the same columns and dtypes whichever
    format it read. `rows` keeps every row, all but the deliveries, or only those.

    The string columns are pandas categoricals whose categories are the values seen,
    in lexical order, so sorting and grouping by them order rows as the strings would.
    Strings are read as dictionaries and never materialised per row: at 10 M events
    the frame is under a third of what string columns take. Parquet is read a column
    at a time (the sort order from `t` first), so only the frame and one column in
    Arrow's form are ever held, never a whole Arrow table beside the frame.
    """
    parquet, csvs = client_event_files(run_dir) if files is None else (list(files), [])
    csv_tables = [_csv_table(f) for f in csvs]  # old runs: small, and read whole

    def column(name: str) -> pa.ChunkedArray:
        """One column of every file, in file order (Parquet's are read alone)."""
        field = _READ_SCHEMA.field(name)
        chunks = pq.read_table(parquet, columns=[name], schema=_READ_SCHEMA,
                               read_dictionary=[name] if name in DICTIONARY else None
                               ).column(name).chunks if parquet else []
        chunks.extend(c for t in csv_tables for c in t.column(name).chunks)
        read = pa.chunked_array(chunks, type=field.type)
        if name not in DICTIONARY:
            return read
        return pa.table({name: read}).unify_dictionaries().column(name)

    order = _order(column("t"), None if rows == "all" else _is_delivery(column("op")), rows)
    frame = {}
    for name in columns:
        read = column(name)
        frame[name] = _categorical(read, order) if name in DICTIONARY \
            else _sorted_numbers(read, order)
        del read
        pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed pages
    return pd.DataFrame(frame, copy=False)


def _is_delivery(op: pa.ChunkedArray) -> np.ndarray:
    """Which rows of a dictionary `op` column are deliveries (a null op is not)."""
    values = op.chunk(0).dictionary.to_numpy(zero_copy_only=False) if op.num_chunks \
        else np.zeros(0, object)
    lookup = np.append(values == "deliver", False)  # the last slot: null's -1
    return np.concatenate([np.zeros(0, bool), *(
        lookup[c.indices.fill_null(-1).to_numpy()] for c in op.chunks)])


def _order(t: pa.ChunkedArray, is_delivery: np.ndarray | None, rows: Rows) -> np.ndarray:
    """The rows to keep, in time order (stable: ties keep file order)."""
    if is_delivery is None:
        return pc.sort_indices(t).to_numpy()
    keep = np.flatnonzero(is_delivery if rows == "deliveries" else ~is_delivery)
    return keep[np.argsort(t.to_numpy()[keep], kind="stable")]


def split_deliveries(run_dir: str | Path, into: Path, parts: int) -> list[Path]:
    """Write the delivery rows of a run into `parts` Parquet files under `into`, each
    holding every delivery of the recipients it is given (by a hash of the user, so
    any process splits alike), rows in log order; returns the files (one may be
    missing: a partition no delivery fell in). One pass over the log, a batch at a
    time: the memory it takes is one batch, however long the run."""
    into.mkdir(parents=True, exist_ok=True)
    paths = [into / f"part-{k:03d}{SUFFIX}" for k in range(parts)]
    writers: dict[int, pq.ParquetWriter] = {}
    schema = pa.schema([_READ_SCHEMA.field(c) for c in DELIVERY_COLUMNS])
    try:
        for table in _batches(run_dir, (*DELIVERY_COLUMNS, "op")):
            table = table.filter(_is_delivery(table.column("op"))).select(DELIVERY_COLUMNS)
            if not table.num_rows:
                continue
            part = _partition_of(table.column("user"), parts)
            order = np.argsort(part, kind="stable")  # by partition, log order within
            table, part = table.take(order), part[order]
            cuts = np.flatnonzero(np.diff(part)) + 1
            for lo, hi in zip([0, *cuts], [*cuts, len(part)], strict=True):
                k = int(part[lo])
                if k not in writers:
                    writers[k] = pq.ParquetWriter(paths[k], schema, compression="lz4")
                writers[k].write_table(table.slice(lo, hi - lo))
    finally:
        for writer in writers.values():
            writer.close()
    return [p for k, p in enumerate(paths) if k in writers]


def partition_of_users(users: np.ndarray, parts: int) -> np.ndarray:
    """The partition of each user id (`split_deliveries`' rule): crc32 of the id."""
    return np.array([zlib.crc32(str(u).encode()) % parts for u in users], dtype=np.int64)


def _partition_of(user: pa.ChunkedArray, parts: int) -> np.ndarray:
    out = []
    for c in user.chunks:
        lookup = np.append(partition_of_users(
            c.dictionary.to_numpy(zero_copy_only=False), parts), 0)  # null: partition 0
        out.append(lookup[c.indices.fill_null(-1).to_numpy()])
    return np.concatenate([np.zeros(0, np.int64), *out])


def _batches(run_dir: str | Path, columns: Sequence[str]) -> Iterable[pa.Table]:
    """The log a file at a time (Parquet batches, then old CSV logs), strings as
    dictionaries."""
    parquet, csvs = client_event_files(run_dir)
    for path in parquet:
        yield pq.read_table(path, columns=list(columns), schema=_READ_SCHEMA,
                            read_dictionary=[c for c in columns if c in DICTIONARY])
    for path in csvs:
        yield _csv_table(path).select(list(columns))


# What the loader reads: the log's schema with every string column as a dictionary.
_READ_SCHEMA = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), f.type))
                          if f.name in DICTIONARY else f for f in SCHEMA])
_CSV_STRINGS = {name: str for name in DICTIONARY}


def _csv_table(path: Path) -> pa.Table:
    """An old CSV log as an Arrow table of `_READ_SCHEMA` (empty fields: "" in string
    columns, null in latency_ms and intended_t, as the CSV writer wrote None)."""
    df = pd.read_csv(path, dtype=_CSV_STRINGS, keep_default_na=False,
                     na_values={"latency_ms": [""], "intended_t": [""]})
    return pa.Table.from_pandas(df, schema=SCHEMA, preserve_index=False).cast(_READ_SCHEMA)


def _categorical(column: pa.ChunkedArray, order: np.ndarray) -> pd.Categorical:
    """A dictionary column (chunks sharing one dictionary), rows taken in `order`, as
    a categorical of the values those rows use, sorted lexically (null: code -1)."""
    dictionary = column.chunk(0).dictionary if column.num_chunks else pa.array([], pa.string())
    values = dictionary.to_numpy(zero_copy_only=False)
    indices = np.concatenate([np.zeros(0, np.int32), *(
        c.indices.fill_null(-1).to_numpy() for c in column.chunks)])[order]
    used = np.flatnonzero(np.bincount(indices[indices >= 0], minlength=len(values)))
    lexical = used[np.argsort(values[used], kind="stable")]
    code_of = np.full(len(values) + 1, -1, dtype=np.int32)  # the last slot: null's -1
    code_of[lexical] = np.arange(len(lexical), dtype=np.int32)
    return pd.Categorical.from_codes(code_of[indices], categories=values[lexical],
                                     validate=False)


def _sorted_numbers(column: pa.ChunkedArray, order: np.ndarray) -> np.ndarray:
    """A numeric column, rows taken in `order` (nulls: NaN; attempt widened to int64)."""
    values = column.to_numpy()[order]
    return values.astype(np.int64) if pa.types.is_int32(column.type) else values
