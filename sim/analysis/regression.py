"""The regression gate of `rtmsim compare --baseline`: which headline numbers got worse.

Each headline metric has a direction (an error rate or a p99 is worse higher,
throughput lower). A run regresses on a metric when it is worse than the baseline by
more than the tolerance, relative to the baseline. A metric the baseline has at zero
and the run has above zero (a new error code, a first lost message) regresses at any
tolerance: no relative margin of zero is wide enough to hide it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

HIGHER_IS_WORSE, LOWER_IS_WORSE = 1, -1


def headline_metrics(summary: Mapping[str, Any]) -> Iterator[tuple[str, float | None, int]]:
    """(name, value, direction) of every number the gate watches in a summary.json."""
    for code, row in sorted((summary.get("errors") or {}).items()):
        yield f"errors.{code}.per_1000_requests", row.get("per_1000_requests"), HIGHER_IS_WORSE
    for op, row in sorted((summary.get("latency_ms") or {}).items()):
        yield f"latency.{op}.p99", row.get("p99"), HIGHER_IS_WORSE
    yield ("delivery_latency.p99", (summary.get("delivery_latency_ms") or {}).get("p99"),
           HIGHER_IS_WORSE)
    for field in ("lost", "duplicates", "unexpected"):
        yield f"delivery.{field}", (summary.get("delivery") or {}).get(field), HIGHER_IS_WORSE
    for field in ("published_per_s_mean", "delivered_per_s_mean"):
        yield f"throughput.{field}", (summary.get("throughput") or {}).get(field), LOWER_IS_WORSE
    for policy, row in sorted((summary.get("retry_amplification") or {}).items()):
        yield f"retry_amplification.{policy}", row.get("amplification"), HIGHER_IS_WORSE


def regressions(baseline: Mapping[str, Any], run: Mapping[str, Any],
                tolerance: float) -> list[dict[str, Any]]:
    """Every headline metric of `run` worse than `baseline` beyond `tolerance` (0.1 = 10%).

    A metric only the run has (an error code the baseline never saw) is compared with
    a baseline of zero; one only the baseline has is not judged (nothing measured).
    """
    base = {name: value for name, value, _ in headline_metrics(baseline)}
    out = []
    for name, value, direction in headline_metrics(run):
        if value is None:
            continue
        before = base.get(name)
        if before is None:
            before = 0.0 if name.startswith(("errors.", "delivery.")) else None
        if before is None:
            continue
        change = (value - before) * direction  # > 0: worse
        if change <= 0:
            continue
        relative = change / abs(before) if before else None
        if relative is None or relative > tolerance:
            out.append({"metric": name, "baseline": before, "value": value,
                        "change": None if relative is None else direction * relative,
                        "worse": "higher" if direction == HIGHER_IS_WORSE else "lower"})
    return out
