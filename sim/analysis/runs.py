"""Runs as a dataset: one row per run directory, its parameters beside its results.

`runs()` reads only each run's `run.json` (what was run) and `summary.json` (what it
gave), never the event logs, so a hundred runs load in well under a second and can be
grouped by any scenario parameter:

    df = runs("results/")
    df.groupby("classes.Publisher.rate")["errors.service.per_1000_requests"].mean()

Parameters are flattened with dots: `users`, `seed`, `classes.<Class>.<param>`
(`classes.Publisher.policy.backoff`), `faults.<id>.<field>`. Results are the gate's
headline metrics (`sim.analysis.headline_metrics`), the request and error totals, and
whether the run reconciled and passed its thresholds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from .. import rundir
from ..thresholds import read_metric
from .regression import headline_metrics
from .run import load_run
from .summary import summary as summarise

RUN_FIELDS = ("name", "status", "started", "duration_s", "users", "spawn_rate", "workers",
              "model", "shape", "seed", "backend", "instances")
FAULT_SKIP = frozenset({"id", "hits", "given"})
# Present in every frame, NaN where a run has no summary: callers can always select them.
RESULT_COLUMNS = ("requests.total", "requests.ok", "errors.total.client",
                  "errors.service.per_1000_requests", "reconciled", "thresholds.passed",
                  "warnings")


def runs(paths: str | Path | Iterable[str | Path] = "results", *,
         compute_missing: bool = False) -> pd.DataFrame:
    """One row per run directory: `dir`, its parameters and its headline results.

    `paths` is a folder of run directories (every subfolder holding run.json), one run
    directory, or a list of either. A run without summary.json (never analysed) has
    its parameters and `summary` = "missing", or, with `compute_missing`, the numbers
    the analysis gives (`summary` = "computed"; nothing is written).
    """
    rows = [run_row(d, compute_missing=compute_missing) for d in _run_dirs(paths)]
    df = pd.DataFrame(rows, columns=None if rows else ["dir", *RUN_FIELDS, "summary"])
    for column in RESULT_COLUMNS:
        if column not in df:
            df[column] = None
    if len(df):
        df = df.sort_values(["started", "dir"], na_position="last", kind="stable")
    return df.reset_index(drop=True)


def _run_dirs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if rundir.is_run_dir(p):
            out.append(p)
        elif p.is_dir():
            out.extend(sorted(d for d in p.iterdir() if rundir.is_run_dir(d)))
        else:
            raise FileNotFoundError(f"{p}: neither a run directory (no {rundir.RUN}) nor a "
                                    "folder of them")
    return out


def run_row(run_dir: Path, *, compute_missing: bool = False) -> dict[str, Any]:
    """One run's row: parameters from run.json, results from summary.json."""
    meta = _read(run_dir, rundir.RUN)
    row: dict[str, Any] = {"dir": str(run_dir)}
    row.update({k: meta.get(k) for k in RUN_FIELDS})
    row.update(flatten(meta.get("classes") or {}, "classes"))
    for fault in meta.get("faults") or []:
        fid = fault.get("id")
        row.update(flatten({k: v for k, v in fault.items() if k not in FAULT_SKIP},
                           f"faults.{fid}"))
    summary = _read(run_dir, rundir.SUMMARY)
    row["summary"] = "ok" if summary else "missing"
    if not summary and compute_missing:
        summary, row["summary"] = summarise(load_run(run_dir)), "computed"
    if summary:
        row.update(summary_row(summary))
    return row


def summary_row(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The results of one summary.json, flat: what `rtmsim compare` and the gate use.

    Named and read as `[thresholds]` name them (`sim.thresholds.read_metric`), so a
    column here and a threshold on the same name are the same number.
    """
    row = {name: read_metric(summary, name) for name in RESULT_COLUMNS
           if name != "thresholds.passed"}
    row["thresholds.passed"] = (summary.get("thresholds") or {}).get("passed")
    row.update({name: value for name, value, _ in headline_metrics(summary)})
    return row


def flatten(tree: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"prefix.a.b": 1}; lists become their JSON text."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def _read(run_dir: Path, name: str) -> dict[str, Any]:
    try:
        data = rundir.read_json(run_dir, name, {})
    except ValueError:  # a corrupt file: the row says what is missing
        return {}
    return data if isinstance(data, dict) else {}
