"""From measured steps to per-operation costs: pure functions, no I/O.

A step is a `Row`: how many of each operation the server did (a publish to k
subscribers is one `publish` and k `delivery`) and the CPU seconds it used, less what
the idle server uses in the same time. The costs are the least-squares solution of
`ops @ cost = cpu` over every row, each row weighted by 1/cpu so a cheap step counts
as much as a dear one (the residuals are relative). Operations measured alone are
fixed by their own rows; the others (the delivery slope over several k, a send less
its delivery, a server-sent close less the disconnect that follows it) by the rows
they share.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

# A cost the fit puts at or below zero (noise on a small difference) is written as
# this, and reported as clamped: the model needs every cost positive.
FLOOR_US = 0.1


@dataclass(frozen=True)
class Row:
    """One measured step."""

    step: str
    ops: dict[str, float]  # operation -> how many the server did
    cpu_s: float  # server CPU used, idle already subtracted
    wall_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)  # for the record only


@dataclass(frozen=True)
class Fit:
    costs_us: dict[str, float]  # every unknown, floored at FLOOR_US
    raw_us: dict[str, float]  # as solved, before the floor
    residuals: list[float]  # per row: (fitted - measured) / measured
    clamped: list[str]

    def predicted_cpu_s(self, row: Row) -> float:
        return sum(n * self.raw_us[op] / 1e6 for op, n in row.ops.items())


class FitError(ValueError):
    """The rows do not determine every cost (the message names which)."""


def fit_costs(rows: Sequence[Row], unknowns: Iterable[str]) -> Fit:
    """Least-squares costs (us) of `unknowns` from `rows`; FitError if undetermined."""
    names = list(unknowns)
    index = {name: i for i, name in enumerate(names)}
    used = [r for r in rows if r.cpu_s > 0 and any(r.ops.values())]
    for r in used:
        unknown = set(r.ops) - set(index)
        if unknown:
            raise FitError(f"step {r.step}: operation {sorted(unknown)[0]} is not fitted")
    a = np.zeros((len(used), len(names)))
    b = np.zeros(len(used))
    for i, r in enumerate(used):
        for op, n in r.ops.items():
            a[i, index[op]] = n / r.cpu_s
        b[i] = 1.0
    missing = [n for n in names if not a[:, index[n]].any()] if used else names
    if missing:
        raise FitError(f"no measured step does {missing[0]}: its cost is undetermined")
    solution, _, rank, _ = np.linalg.lstsq(a, b, rcond=None)
    if rank < len(names):
        raise FitError(f"the steps determine only {rank} of {len(names)} costs: "
                       "two operations always occur together")
    raw = {n: float(solution[index[n]]) * 1e6 for n in names}
    clamped = [n for n in names if not raw[n] > FLOOR_US]
    costs = {n: (raw[n] if n not in clamped else FLOOR_US) for n in names}
    fitted = a @ solution
    residuals = [float(x - 1.0) for x in fitted]
    return Fit(costs, raw, residuals, clamped)


def lognormal(samples: Sequence[float]) -> tuple[float, float]:
    """(median, sigma) of a lognormal fitted to positive `samples` by their quartiles
    (robust to the few scheduling outliers of a shared machine): sigma is the log
    interquartile range over that of a standard normal (1.349)."""
    x = np.asarray([s for s in samples if s > 0 and math.isfinite(s)])
    if x.size < 4:
        raise FitError(f"{x.size} positive latency samples: need at least 4")
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    return float(q50), float((math.log(q75) - math.log(q25)) / 1.349)


def saturation(costs_us: dict[str, float], subscribers: int = 50) -> dict[str, float]:
    """What one core does per second on the fitted costs alone, for the benchmarks'
    configurations: fan-out (`publish` + `subscribers` x `delivery` per message, in
    deliveries/s) and reqack (`publish` per round trip). No batching, no client."""
    per_message = costs_us["publish"] + subscribers * costs_us["delivery"]
    return {"fanout_delivered_per_s": subscribers * 1e6 / per_message,
            "reqack_round_trips_per_s": 1e6 / costs_us["publish"]}
