"""The loop turn's share of a request's CPU (`[model.turn_us]`).

An asyncio server pays part of each request once per turn of its event loop (the
poll, the loop's bookkeeping, resuming the handler), whatever the number of requests
that turn serves. So a request costs less the more are in flight: on the 2-vCPU VM
(2026-12-07), a publish cost 71 us of the server's CPU with 1 in flight, 49 with 2,
40 with 4, 32 with 8, 29 with 16 and 28 with 32, and a ping 63, 36, 25, 21, 18 and 17,
the server awake throughout from 4 on (its wake-ups under 0.02 a request). Both follow
`cost + turn / in flight` (publish: 26 + 53 / n; ping: 16 + 38 / n) within 5%.

The turn is a difference of two costs measured at two depths (`Scale.sockets` and
`Scale.turn_sockets` in flight), and this vCPU's speed drifts by 10-30% within
minutes: so each request is measured at both depths in alternating slices, the two
seeing the same machine, and its turn comes from those pairs alone:
`turn = (cost at lo - cost at hi) / (1/lo - 1/hi)`. The costs are then fitted over
every step as before, each request row's CPU less its turn shares (`less_turns`).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from . import steps
from .fit import Row

# The requests measured at two depths, and the step that measures each.
TURN_OPS = ("subscribe", "unsubscribe", "publish", "send", "frame")
SLICES = 3  # alternating slices per depth and request
PREFIX = "turn"


def step_name(op: str, depth: int) -> str:
    return f"{PREFIX}{depth}_{op}"


async def turn_steps(s: steps.Session) -> list[Row]:
    """Each request kind at both depths, in `SLICES` alternating slices (a third of a
    step's seconds each); one row per kind and depth."""
    short = copy.copy(s)
    short.scale = replace(s.scale, seconds=s.scale.seconds / SLICES)
    depths = (s.scale.sockets, s.scale.turn_sockets)
    kinds: list[Callable[[int], Awaitable[list[Row]]]] = [
        lambda n: steps.subscriptions(short, sockets=n, prefix=f"{PREFIX}{n}_"),
        lambda n: steps.fanout(short, 0, sockets=n, name=step_name("publish", n)),
        lambda n: steps.sends(short, sockets=n, name=step_name("send", n)),
        lambda n: steps.frames(short, sockets=n, prefix=f"{PREFIX}{n}_", kinds=("ping",)),
    ]
    rows: list[Row] = []
    for kind in kinds:
        for _ in range(SLICES):
            for n in depths:
                rows += await kind(n)
    return merge(rows)


def merge(rows: Sequence[Row]) -> list[Row]:
    """Rows of the same step summed into one (first-seen order): operations, CPU and
    wall; the busy shares time-weighted."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.step, []).append(r)
    out = []
    for step, group in groups.items():
        wall = sum(r.wall_s for r in group)
        ops: dict[str, float] = {}
        for r in group:
            for op, n in r.ops.items():
                ops[op] = ops.get(op, 0) + n
        summed = {k: round(sum(r.extra[k] for r in group), 6)
                  for k in ("server_cpu_s", "load_cpu_s", "load_other_threads_cpu_s")}
        shares = {k: round(sum(r.extra[k] * r.wall_s for r in group) / wall, 3)
                  if wall else 0.0 for k in ("core_busy", "core_irq")}
        extra = {"in_flight": group[0].extra["in_flight"], **summed, **shares,
                 "server_busy": round(summed["server_cpu_s"] / wall, 3) if wall else 0.0,
                 "load_busy": round(summed["load_cpu_s"] / wall, 3) if wall else 0.0}
        out.append(Row(step, ops, sum(r.cpu_s for r in group), wall, extra))
    return out


def turns_from_pairs(rows: Sequence[Row]) -> dict[str, float]:
    """Each request's turn part (us) from its two alternating rows: the difference of
    its cost at the two depths over that of the shares (never below 0). A request
    without both rows, or without a count, gets none (its turn stays in its cost)."""
    by_op: dict[str, list[Row]] = {}
    for r in rows:
        if r.step.startswith(PREFIX) and r.extra.get("in_flight"):
            main = next((op for op in TURN_OPS if r.ops.get(op)), None)
            if main is not None:
                by_op.setdefault(main, []).append(r)
    turns = {}
    for op, pair in by_op.items():
        if len(pair) != 2:
            continue
        lo, hi = sorted(pair, key=lambda r: r.extra["in_flight"])
        n_lo, n_hi = lo.extra["in_flight"], hi.extra["in_flight"]
        if n_lo == n_hi or lo.cpu_s <= 0 or hi.cpu_s <= 0:
            continue
        cost_lo, cost_hi = lo.cpu_s / lo.ops[op], hi.cpu_s / hi.ops[op]
        turns[op] = max(0.0, (cost_lo - cost_hi) / (1 / n_lo - 1 / n_hi) * 1e6)
    return turns


def turn_cpu_s(row: Row, turns: dict[str, float]) -> float:
    """The CPU of `row` that its requests' turns account for."""
    n = row.extra.get("in_flight")
    if not n:
        return 0.0
    return sum(row.ops.get(op, 0) * us / n for op, us in turns.items()) / 1e6


def less_turns(rows: Sequence[Row], turns: dict[str, float]) -> list[Row]:
    """`rows` with their CPU less their requests' turn shares: what the per-request
    costs are fitted on."""
    return [replace(r, cpu_s=r.cpu_s - turn_cpu_s(r, turns)) if turns else r for r in rows]
