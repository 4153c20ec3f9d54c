"""The layout of a run directory: what `rtmsim run` writes and the analysis reads.

    RUN_DIR/
      scenario.toml                 the scenario as run (overrides applied)
      run.json                      name, started/ended (unix s), origin (scenario time 0,
                                    unix s), duration_s, users, workers, seed, instances,
                                    backend, ws/admin URLs, faults (ids, kinds, windows),
                                    machine (cpus, python), status ("complete"/"interrupted")
      swarm.json                    the swarm settings handed to Locust
      locust/locust_stats.csv       Locust's own CSVs (--csv locust/locust)
      locust/locust_stats_history.csv, locust/locust_failures.csv, locust/locust_exceptions.csv
      locust.log                    Locust's output
      client-events-<tag>/<seq>.parquet  raw client events: a directory per Locust
                                    process, a Parquet file per flushed batch (schema:
                                    loadtests.eventlog.SCHEMA); older runs hold one
                                    client-events-<tag>.csv per process instead
                                    (`rtmsim export RUN_DIR --csv` writes that form)
      export/client-events-<tag>.csv  `rtmsim export RUN_DIR --csv` (not read back)
      server-events.jsonl           the server event log (all instances; `instance`
                                    field; JSON lines, kept: it logs requests, not
                                    deliveries, ~3 % of the client log's rows)
      server-stats.json             final /sim/v1/stats: {"<instance>": stats, ...}
      server-timeline.jsonl         /sim/v1/stats sampled every second:
                                    {"t": unix s, "instance": id, "stats": {...}}
      server.log                    the server processes' output
      summary.json                  the analysis (`rtmsim analyze` rewrites it)
      junit.xml                     the thresholds as JUnit test cases (`rtmsim clients`:
                                    its grading rules)
      charts/*.png, report.html     charts and the self-contained report

    `rtmsim clients` adds:
      clients/client-<i>.out|.err   each client process's stdout and stderr
      client-tokens.jsonl           every token the harness handed out:
                                    {"t", "client", "peer", "expiresAt", "initial"}
      client-procs.json             [{"index", "peer", "pid", "started", "ended", "rc"}]
      clients.json                  the grade (`sim.clients.grading.grade_run`)
      client-report.html            the grade, for people

Every path has one name here; nothing else spells them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

SCENARIO = "scenario.toml"
RUN = "run.json"
SWARM = "swarm.json"
LOCUST_DIR = "locust"
LOCUST_PREFIX = "locust/locust"
LOCUST_LOG = "locust.log"
CLIENT_EVENTS_GLOB = "client-events-*/*.parquet"
CLIENT_EVENTS_CSV_GLOB = "client-events-*.csv"  # runs before the Parquet log, and exports
EXPORT_DIR = "export"  # `rtmsim export RUN_DIR --csv` writes here by default
SERVER_EVENTS = "server-events.jsonl"
SERVER_STATS = "server-stats.json"
SERVER_TIMELINE = "server-timeline.jsonl"
SERVER_LOG = "server.log"
SUMMARY = "summary.json"
JUNIT = "junit.xml"
CHARTS = "charts"
REPORT = "report.html"
CLIENTS_DIR = "clients"
CLIENT_TOKENS = "client-tokens.jsonl"
CLIENT_PROCS = "client-procs.json"
CLIENTS_JSON = "clients.json"
CLIENT_REPORT = "client-report.html"


def client_log(index: int, stream: str) -> str:
    """`clients/client-<index>.<stream>`: a client process's "out" or "err"."""
    return f"{CLIENTS_DIR}/client-{index}.{stream}"


def read_json(run_dir: Path, name: str, default: Any = None) -> Any:
    path = Path(run_dir) / name
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def read_jsonl(run_dir: Path, name: str) -> list[dict[str, Any]]:
    return list(iter_jsonl(run_dir, name))


def iter_jsonl(run_dir: Path, name: str) -> Iterator[dict[str, Any]]:
    """The records of a JSON-lines file, one at a time (none if it is missing)."""
    path = Path(run_dir) / name
    if not path.exists():
        return
    with path.open("rb") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    yield orjson.loads(line)  # a server event log can be millions of lines
                except orjson.JSONDecodeError:
                    try:  # what orjson refuses and json takes: NaN, integers past 64 bits
                        yield json.loads(line)
                    except ValueError:
                        continue  # a line cut by an interrupted run: skip it


def is_run_dir(path: Path) -> bool:
    return (Path(path) / RUN).exists()
