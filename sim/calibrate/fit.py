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

import itertools
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
    names, a = _weighted_system(rows, unknowns)
    solution, _, rank, _ = np.linalg.lstsq(a, np.ones(len(a)), rcond=None)
    if rank < len(names):
        raise FitError(f"the steps determine only {rank} of {len(names)} costs: "
                       "two operations always occur together")
    raw = {n: float(x) * 1e6 for n, x in zip(names, solution, strict=True)}
    clamped = [n for n in names if not raw[n] > FLOOR_US]
    costs = {n: (raw[n] if n not in clamped else FLOOR_US) for n in names}
    residuals = [float(x - 1.0) for x in a @ solution]
    return Fit(costs, raw, residuals, clamped)


def fit_nonnegative(rows: Sequence[Row], unknowns: Iterable[str]) -> Fit:
    """As `fit_costs` (same rows, same weights), but the least-squares costs under
    the constraint that none is negative, and no floor: a cost the data put below
    zero is held at 0 and named in `clamped`. Exact: the constrained optimum is the
    unconstrained one over the costs not held at 0, for some set held at 0, so every
    set is tried (2^n; meant for the two or three unknowns of a client's costs)."""
    names, a = _weighted_system(rows, unknowns)
    b = np.ones(len(a))
    if np.linalg.matrix_rank(a) < len(names):
        raise FitError(f"the steps determine only {np.linalg.matrix_rank(a)} of "
                       f"{len(names)} costs: two operations always occur together")
    best: tuple[float, np.ndarray] | None = None
    for held in itertools.chain.from_iterable(
            itertools.combinations(range(len(names)), k) for k in range(len(names))):
        free = [i for i in range(len(names)) if i not in held]
        part = np.linalg.lstsq(a[:, free], b, rcond=None)[0]
        if (part < 0).any():
            continue
        x = np.zeros(len(names))
        x[free] = part
        err = float(np.sum((a @ x - b) ** 2))
        if best is None or err < best[0]:
            best = (err, x)
    assert best is not None  # a >= 0, b > 0: a single free cost is never negative
    x = best[1]
    costs = {n: float(v) * 1e6 for n, v in zip(names, x, strict=True)}
    residuals = [float(v - 1.0) for v in a @ x]
    return Fit(costs, dict(costs), residuals, [n for n in names if costs[n] == 0])


def _weighted_system(rows: Sequence[Row], unknowns: Iterable[str]
                     ) -> tuple[list[str], np.ndarray]:
    """(names, a) with `a @ cost_s = 1` the rows' equations, each divided by its CPU
    (rows without CPU or without operations left out, as `used_rows` says)."""
    names = list(unknowns)
    index = {name: i for i, name in enumerate(names)}
    used = used_rows(rows)
    for r in used:
        unknown = set(r.ops) - set(index)
        if unknown:
            raise FitError(f"step {r.step}: operation {sorted(unknown)[0]} is not fitted")
    a = np.zeros((len(used), len(names)))
    for i, r in enumerate(used):
        for op, n in r.ops.items():
            a[i, index[op]] = n / r.cpu_s
    missing = [n for n in names if not a[:, index[n]].any()] if used else names
    if missing:
        raise FitError(f"no measured step does {missing[0]}: its cost is undetermined")
    return names, a


def used_rows(rows: Sequence[Row]) -> list[Row]:
    """The rows a fit uses (its residuals are theirs, in this order): those with CPU
    and with operations."""
    return [r for r in rows if r.cpu_s > 0 and any(r.ops.values())]


def lognormal(samples: Sequence[float]) -> tuple[float, float]:
    """(median, sigma) of a lognormal fitted to positive `samples` by their quartiles
    (robust to the few scheduling outliers of a shared machine): sigma is the log
    interquartile range over that of a standard normal (1.349)."""
    x = np.asarray([s for s in samples if s > 0 and math.isfinite(s)])
    if x.size < 4:
        raise FitError(f"{x.size} positive latency samples: need at least 4")
    q25, q50, q75 = np.percentile(x, [25, 50, 75])
    return float(q50), float((math.log(q75) - math.log(q25)) / 1.349)


def saturation(costs_us: dict[str, float], turn_us: dict[str, float] | None = None,
               subscribers: int = 50, publishers: int = 4, connections: int = 8
               ) -> dict[str, float]:
    """What one core does per second on the fitted costs alone, for the benchmarks'
    configurations: fan-out (`publishers` in flight, each message `publish` + its
    turn's share + `subscribers` x `delivery`, in deliveries/s) and reqack
    (`connections` in flight, `publish` and its turn's share a round trip). A
    saturated core finds every request in flight ready in each turn; no client."""
    turn = (turn_us or {}).get("publish", 0.0)
    per_message = costs_us["publish"] + turn / publishers + subscribers * costs_us["delivery"]
    return {"fanout_delivered_per_s": subscribers * 1e6 / per_message,
            "reqack_round_trips_per_s": 1e6 / (costs_us["publish"] + turn / connections)}
