"""A virtual run without a row a delivery (`rtmsim simulate --no-deliveries`): what
its analysis can say (the count, latency from the engine's histogram) and what it
must not (lost, duplicates: not measured, never "all lost")."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from test_virtual_engine import BEHAVIOURS, EPOCH, SUBS, scenario

from sim.analysis import load_run, summary
from sim.analysis.latency import histogram_percentiles, percentiles_of
from sim.virtual.model import Model, Network, load_model
from sim.virtual.run import VirtualRun

# A percentile interpolated between two samples in neighbouring bins reads as the upper
# one's bin: up to two bins' width above (bins 10^0.05 = 12.2% wide).
TWO_BINS = 10 ** 0.1 + 1e-9
MODEL = Model(name="test", costs_us={**dict.fromkeys(load_model().costs_us, 0.0),
                                     "publish": 30.0, "delivery": 20.0},
              network=Network(median_ms=0.2, sigma=0.6))


def run(tmp_path: Path, name: str, log_deliveries: bool) -> dict:
    run_dir = tmp_path / name
    text = SUBS.format(server="", faults="")
    status = VirtualRun(scenario(text), run_dir, MODEL, out=io.StringIO(), epoch=EPOCH,
                        behaviours=BEHAVIOURS, log_deliveries=log_deliveries).run()
    assert status == "complete"
    return summary(load_run(run_dir))


def test_the_histogram_stands_in_for_the_rows_and_says_what_it_cannot_tell(
        tmp_path: Path) -> None:
    rows = run(tmp_path, "rows", True)
    hist = run(tmp_path, "hist", False)
    frames = rows["reconciliation"]["delivered"]["client"]
    assert hist["delivery"]["frames"] == frames > 500
    assert rows["delivery"]["lost"] == 0 and rows["delivery"]["delivered"] > 500
    assert hist["delivery"]["logged"] is False
    assert hist["delivery"]["lost"] is hist["delivery"]["delivered"] is None
    assert hist["reconciliation"]["agree"]
    assert any("not measured" in w for w in hist["warnings"])
    assert not any("lost" in w and "not measured" not in w for w in hist["warnings"])
    # The same latencies (the same seed), binned: never below, at most two bins above.
    for p in ("p50", "p90", "p99", "max"):
        exact, binned = rows["delivery_latency_ms"][p], hist["delivery_latency_ms"][p]
        assert exact <= binned <= exact * TWO_BINS, p
    checks = {c["metric"]: c for c in hist["thresholds"]["checks"]}
    if "delivery.lost" in checks:  # a gate on a figure it cannot see does not pass
        assert not checks["delivery.lost"]["ok"]


def test_histogram_percentiles_are_the_bins_upper_bounds() -> None:
    bounds = [1.0, 2.0, 4.0, 8.0]
    counts = [50, 40, 9, 1, 0]  # 100 samples; none above 8 ms
    out = histogram_percentiles(bounds, counts)
    # p50 interpolates between the 50th sample (under 1 ms) and the 51st (under 2):
    # it may be anything up to 2 ms, so 2 it is; p90 between the 90th and the 91st.
    assert (out["count"], out["p50"], out["p90"], out["p99"], out["max"]) == (
        100, 2.0, 4.0, 8.0, 8.0)
    assert out["mean"] == pytest.approx((50 * 1 + 40 * 2 + 9 * 4 + 8) / 100)
    assert histogram_percentiles(bounds, [0, 0, 0, 0, 2])["p50"] == np.inf
    assert histogram_percentiles(bounds, [0] * 5)["count"] == 0
    # Against raw samples binned the same way: the nearest rank's bin, from above.
    rng = np.random.default_rng(3)
    samples = rng.lognormal(0.0, 1.0, 10_000)
    edges = np.round(np.logspace(-2, 5, 141), 6)
    binned = np.bincount(np.searchsorted(edges, samples, side="left"),
                         minlength=len(edges) + 1)
    raw, from_bins = percentiles_of(samples), histogram_percentiles(edges, binned)
    for p in ("p50", "p90", "p99", "p99.9", "max"):
        assert raw[p] <= from_bins[p] <= raw[p] * TWO_BINS, p
