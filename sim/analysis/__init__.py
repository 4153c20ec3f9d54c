"""The analysis API: pure functions from a run directory's data to tables and numbers.

The CLI, report.html, the charts and the notebooks call these; none of them computes
a rate or a percentile on its own, so every number a user sees has one definition.

    run = load_run("results/default-20250101-120000")
    error_counts(run)          # per code: client vs server, meaning, retry guidance
    latency_percentiles(run)   # per op, from raw samples (numpy "linear")
    write_summary(run.dir)     # summary.json, byte-for-byte reproducible

The implementation is split by concept, one module each: loading (`run`), codes and
reconciliation (`codes`), latency, delivery and retries (`latency`), server time
series (`timeline`), fault effects (`faults`), capacity (`capacity`) and the summary
(`summary`), runs as a dataset (`runs`), a capacity plan's plan.json (`plans`).
Import from this package, not from those modules: its names are the API
(`sim.analysis.summary` is the function; the module behind it is an implementation
detail).
"""

from __future__ import annotations

from .capacity import (
    capacity,
    capacity_steps,
    errors_by_step,
    load_steps,
)
from .codes import (
    NEVER_RETRY,
    close_counts,
    error_breakdown,
    error_counts,
    error_rates,
    never_retry_violations,
    reconcile,
    whose_fault,
)
from .faults import (
    per_second_health,
    reconnect_storms,
    recovery_by_class,
    recovery_times,
)
from .latency import (
    PERCENTILE_METHOD,
    amplification_by_policy,
    delivery,
    delivery_latency,
    latency_over_time,
    latency_percentiles,
    percentiles_of,
    retried_never_retry_codes,
    retry_amplification,
    retry_outcomes,
    reused_message_ids,
)
from .plans import load_plan, plan_points
from .regression import headline_metrics, regressions
from .run import Run, fault_windows, load_run, run_dirs_or_newest
from .runs import runs, summary_row
from .summary import summary, write_summary
from .timeline import connections_over_time, quota_over_time, throughput
from .window import connected_latency_ms, window_stats

__all__ = [
    "NEVER_RETRY",
    "PERCENTILE_METHOD",
    "Run",
    "amplification_by_policy",
    "capacity",
    "capacity_steps",
    "close_counts",
    "connected_latency_ms",
    "connections_over_time",
    "delivery",
    "delivery_latency",
    "error_breakdown",
    "error_counts",
    "error_rates",
    "errors_by_step",
    "fault_windows",
    "headline_metrics",
    "latency_over_time",
    "latency_percentiles",
    "load_plan",
    "load_run",
    "load_steps",
    "never_retry_violations",
    "per_second_health",
    "percentiles_of",
    "plan_points",
    "quota_over_time",
    "reconcile",
    "reconnect_storms",
    "recovery_by_class",
    "recovery_times",
    "regressions",
    "retried_never_retry_codes",
    "retry_amplification",
    "retry_outcomes",
    "reused_message_ids",
    "run_dirs_or_newest",
    "runs",
    "summary",
    "summary_row",
    "throughput",
    "whose_fault",
    "window_stats",
    "write_summary",
]
