"""Published retry and overload results, reproduced with our own classes: the checks.

Each figure comes from `shared/reference/published-retry-results.md`; each check says
what we got and the bound it must meet. `python -m bench simulate --check` runs
`python -m sim.virtual.published` in a child process (the layers keep `bench` and `sim`
apart), prints the table and fails when a figure misses its bound.

Brooker's figures are his simulator re-run on this project's machine (seeds 1-3, 100
trials each); the published value is the middle of the three runs' range. We average
`OCC_TRIALS` trials: the largest standard error, decorrelated jitter's completion time,
is then about 0.7% of the mean, so the 5% bound is some seven standard errors wide.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

from .amplification import amplification, layered_attempts, sre_policy
from .metastable import MetastableResult, MetastableSetup, metastable_model
from .occ import STRATEGIES, OccResult, occ_model

OCC_CLIENTS = 100
OCC_TRIALS = 500
OCC_TOLERANCE = 0.05
# (mean calls, mean completion in ms): the middle of the re-run's range per strategy.
BROOKER_RERUN: dict[str, tuple[float, float]] = {
    "none": (2422.0, 2024.5),
    "exponential": (1853.0, 63330.0),
    "full_jitter": (795.5, 4872.5),
    "equal_jitter": (812.0, 6571.5),
    "decorrelated_jitter": (998.0, 4581.5),
}
SRE_REQUESTS = 10_000  # one long-lived client: the budget's fixed allowance is then 0.1%
METASTABLE_OFFERED = (280.0, 140.0)  # vulnerable (above capacity / 2), and stable


@dataclass(frozen=True, slots=True)
class Check:
    """One published figure against ours: ours must lie in [low, high]."""

    figure: str
    published: float
    ours: float
    low: float
    high: float
    bound: str  # the bound as a reader says it: "±5%", "2.7-3.0"
    stated: str = ""  # how the source words a figure it gives in words ("just under 3")

    @property
    def within(self) -> bool:
        return self.low <= self.ours <= self.high

    @property
    def difference(self) -> str:
        if self.published == 0:
            return f"{self.ours - self.published:+.3g}"
        return f"{100 * (self.ours - self.published) / self.published:+.1f}%"

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "difference": self.difference, "within": self.within}


def relative(figure: str, published: float, ours: float, tolerance: float) -> Check:
    """ours within `tolerance` (a fraction) of published."""
    return Check(figure, published, ours, published * (1 - tolerance),
                 published * (1 + tolerance), f"±{100 * tolerance:g}%")


def occ_checks(trials: int = OCC_TRIALS, seed: int = 1,
               log: Callable[[str], None] = lambda _: None
               ) -> tuple[list[Check], list[OccResult]]:
    """Brooker's OCC model at 100 clients: mean calls and completion per strategy."""
    checks, results = [], []
    for strategy in STRATEGIES:
        log(f"Brooker OCC, {strategy}: {trials} trials of {OCC_CLIENTS} clients ...")
        result = occ_model(strategy, OCC_CLIENTS, trials, seed)
        results.append(result)
        calls, completion_ms = BROOKER_RERUN[strategy]
        name = f"Brooker OCC {OCC_CLIENTS} clients, {strategy}"
        checks += [relative(f"{name}: mean calls", calls, result.mean_calls,
                            OCC_TOLERANCE),
                   relative(f"{name}: mean completion (ms)", completion_ms,
                            1000 * result.mean_completion_s, OCC_TOLERANCE)]
    return checks, results


def sre_checks(seed: int = 1) -> list[Check]:
    """The SRE book's amplification figures, through our policy's real decisions."""
    def load(max_attempts: int, budget: float | None, failure_rate: float) -> float:
        policy = sre_policy(max_attempts, budget, seed)
        return amplification(policy, SRE_REQUESTS, failure_rate, seed).factor

    # "Just under 3x": three attempts at most, so exactly 3 when nothing succeeds, and
    # a little less when a few requests still do (the book's datacenter "accepting a
    # small amount of requests"; 5% here is our choice).
    just_under_3 = (2.7, 3.0, "2.7-3.0")
    return [
        Check("SRE ch. 21: 3 attempts, backend failing 100%: load (x)", 3.0,
              load(3, None, 1.0), *just_under_3, stated="just under 3"),
        Check("SRE ch. 21: 3 attempts, backend failing 95%: load (x)", 3.0,
              load(3, None, 0.95), *just_under_3, stated="just under 3"),
        replace(relative("SRE ch. 21: 3 attempts + 10% retry budget, failing 100%: "
                         "load (x)", 1.1, load(3, 0.1, 1.0), 0.05), stated="about 1.1"),
        Check("SRE ch. 22: 3 layers x 4 attempts: attempts at the bottom", 64.0,
              float(layered_attempts(3, 4, seed)), 64.0, 64.0, "exact"),
    ]


def metastable_checks(seed: int = 1, log: Callable[[str], None] = lambda _: None
                      ) -> tuple[list[Check], list[MetastableResult]]:
    """Bronson's example: stuck near 2x with no goodput at 280/s, recovered at 140/s."""
    results = []
    for offered in METASTABLE_OFFERED:
        log(f"Bronson metastability, {offered:g}/s offered ...")
        results.append(metastable_model(MetastableSetup(offered_per_s=offered, seed=seed)))
    stuck, stable = (r.windows for r in results)
    high, low = METASTABLE_OFFERED
    checks = [
        relative(f"Bronson {high:g}/s: goodput before the outage (/s)", high,
                 stuck["before"].goodput_per_s, 0.05),
        relative(f"Bronson {high:g}/s: attempts after the outage (/s)", 2 * high,
                 stuck["after"].attempts_per_s, 0.05),
        Check(f"Bronson {high:g}/s: goodput after the outage (/s)", 0.0,
              stuck["after"].goodput_per_s, 0.0, 0.05 * high, "<= 5% of offered",
              "about 0"),
        relative(f"Bronson {low:g}/s: attempts after the outage (/s)", low,
                 stable["after"].attempts_per_s, 0.05),
        relative(f"Bronson {low:g}/s: goodput after the outage (/s)", low,
                 stable["after"].goodput_per_s, 0.05),
    ]
    return checks, results


def reproduce(trials: int = OCC_TRIALS, seed: int = 1,
              log: Callable[[str], None] = lambda _: None) -> dict[str, object]:
    """Every check, and Bronson's windows, as one JSON-ready object."""
    checks, occ = occ_checks(trials, seed, log)
    checks += sre_checks(seed)
    bronson, results = metastable_checks(seed, log)
    checks += bronson
    return {
        "occ_trials": trials,
        "seed": seed,
        "checks": [check.to_dict() for check in checks],
        "occ": [asdict(result) for result in occ],
        "metastable": [{"offered_per_s": r.setup.offered_per_s,
                        "outage_s": [r.setup.outage_start_s, r.setup.outage_end_s],
                        "recovered_after_s": r.recovered_after_s,
                        "windows": {name: asdict(w) for name, w in r.windows.items()}}
                       for r in results],
        "passed": all(check.within for check in checks),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.virtual.published",
        description="Reproduce the published retry results; one JSON object on stdout.")
    parser.add_argument("--trials", type=int, default=OCC_TRIALS,
                        help=f"trials per strategy in Brooker's model (default {OCC_TRIALS})")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.trials < 2:
        parser.error(f"--trials: must be >= 2 (a mean and its error), got {args.trials}")
    result = reproduce(args.trials, args.seed,
                       lambda text: print(text, file=sys.stderr, flush=True))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
