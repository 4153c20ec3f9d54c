"""The virtual-time reproductions of the published retry results, at test size.

`python -m bench simulate --check` runs them at full size against the published
figures; here smaller runs pin what must hold whatever the size: the orderings and
ratios of Brooker's strategies (at 50 clients and 20 trials, checked over 40 seeds),
the SRE book's amplification counts (exact: they are counts), Bronson's metastability
at a shorter outage, and the same numbers for the same seed.
"""

from __future__ import annotations

import random

import pytest

import bench.__main__ as bench_main
from loadtests.backoff import make_backoff
from sim.virtual.amplification import amplification, layered_attempts, sre_policy
from sim.virtual.metastable import MetastableSetup, metastable_model
from sim.virtual.occ import BASE_S, CAP_S, STRATEGIES, brooker_backoff, occ_model, occ_trial
from sim.virtual.published import BROOKER_RERUN, Check, relative

# -- Brooker's OCC model -----------------------------------------------------------------


def test_brooker_exponential_wait_is_base_times_two_to_his_n():
    backoff = make_backoff("exponential", BASE_S, CAP_S, random.Random(1))
    waits = [brooker_backoff(backoff, n) for n in (1, 2, 3, 8, 9, 30)]
    assert waits == [0.010, 0.020, 0.040, 1.280, 2.0, 2.0]


def _his_waits(strategy: str, rng: random.Random, count: int) -> list[float]:
    """The article's formulas, written out as the oracle for our classes' mapping."""
    waits, sleep = [], BASE_S
    for n in range(1, count + 1):
        v = min(CAP_S, BASE_S * 2 ** n)
        if strategy == "full_jitter":
            waits.append(rng.uniform(0, v))
        elif strategy == "equal_jitter":
            waits.append(v / 2 + rng.uniform(0, v / 2))
        else:
            sleep = min(CAP_S, rng.uniform(BASE_S, sleep * 3))
            waits.append(sleep)
    return waits


@pytest.mark.parametrize("strategy", ["full_jitter", "equal_jitter", "decorrelated_jitter"])
def test_our_jittered_waits_are_his_draw_for_draw(strategy):
    backoff = make_backoff(strategy, BASE_S, CAP_S, random.Random(11))
    ours = [brooker_backoff(backoff, n) for n in range(1, 41)]
    assert ours == pytest.approx(_his_waits(strategy, random.Random(11), 40), rel=1e-12)


def test_a_lone_client_writes_once():
    trial = occ_trial("exponential", 1, random.Random(1))
    assert trial.calls == 1
    assert 0.02 < trial.completion_s < 0.06  # four messages of about 10 ms


@pytest.fixture(scope="module", params=[1, 2, 3])
def occ50(request: pytest.FixtureRequest) -> dict[str, tuple[float, float]]:
    """Means at 50 clients, 20 trials; the ratios asserted held over seeds 1-40."""
    results = {s: occ_model(s, clients=50, trials=20, seed=request.param)
               for s in STRATEGIES}
    return {s: (r.mean_calls, r.mean_completion_s) for s, r in results.items()}


def test_no_strategy_writes_less_than_once_per_client(occ50):
    for calls, _ in occ50.values():
        assert calls >= 50


def test_full_jitter_does_far_less_work_than_exponential_and_none(occ50):
    # At 100 clients it more than halves exponential's calls (795 vs 1,853); at 50 the
    # ratio is 0.52-0.55 over 40 seeds, against none 0.48-0.49.
    full = occ50["full_jitter"][0]
    assert full < 0.6 * occ50["exponential"][0]
    assert full < 0.55 * occ50["none"][0]


def test_equal_jitter_does_about_the_same_work_as_full_but_takes_longer(occ50):
    (full_calls, full_s), (equal_calls, equal_s) = occ50["full_jitter"], occ50["equal_jitter"]
    assert full_calls <= equal_calls <= 1.1 * full_calls
    assert equal_s > 1.25 * full_s


def test_decorrelated_does_more_work_than_full_and_finishes_no_later(occ50):
    (full_calls, full_s), (decor_calls, decor_s) = (occ50["full_jitter"],
                                                    occ50["decorrelated_jitter"])
    assert decor_calls > 1.05 * full_calls
    assert decor_s < full_s


def test_exponential_without_jitter_takes_far_longer_and_none_is_quickest(occ50):
    times = {s: t for s, (_, t) in occ50.items()}
    assert all(times["exponential"] > 5 * t for s, t in times.items() if s != "exponential")
    assert times["none"] == min(times.values())


def test_occ_is_deterministic_for_a_seed():
    assert occ_model("full_jitter", 20, 3, seed=4) == occ_model("full_jitter", 20, 3, seed=4)
    assert occ_model("full_jitter", 20, 3, seed=4) != occ_model("full_jitter", 20, 3, seed=5)


def test_the_published_table_covers_every_strategy():
    assert set(BROOKER_RERUN) == set(STRATEGIES)


# -- the SRE book --------------------------------------------------------------------------


def test_three_attempts_against_a_backend_failing_everything_is_3x():
    result = amplification(sre_policy(max_attempts=3), requests=1000)
    assert (result.attempts, result.factor) == (3000, 3.0)


def test_three_attempts_against_a_mostly_failing_backend_is_just_under_3x():
    # 1 + 0.95 + 0.95 ** 2 = 2.8525 expected.
    assert 2.8 < amplification(sre_policy(3), 10_000, failure_rate=0.95).factor < 2.9


def test_a_10_percent_budget_keeps_it_to_1_1x():
    # 10,000 first attempts pay in 1,000 retries, plus the budget's fixed 10.
    result = amplification(sre_policy(3, budget=0.1), requests=10_000)
    assert result.attempts == 10_000 + 1_000 + 10


def test_the_budget_is_per_client_lifetime_so_a_short_client_spends_its_allowance():
    result = amplification(sre_policy(3, budget=0.1), requests=100)
    assert result.attempts == 100 + 10 + 10


def test_three_layers_of_four_attempts_make_64_at_the_bottom():
    assert layered_attempts(layers=3, attempts_per_layer=4) == 64
    assert layered_attempts(layers=2, attempts_per_layer=3) == 9


def test_a_working_backend_sees_no_amplification():
    assert amplification(sre_policy(3), 500, failure_rate=0.0).factor == 1.0


# -- Bronson et al.'s metastability --------------------------------------------------------

SHORT = {"outage_start_s": 5.0, "before_s": 5.0, "outage_s": 2.0, "duration_s": 40.0,
         "after_s": 15.0}
SEEDS = pytest.mark.parametrize("seed", [1, 2, 3])  # what is asserted held over 1-20


@SEEDS
def test_280_per_s_stays_overloaded_with_no_goodput_after_the_outage(seed):
    result = metastable_model(MetastableSetup(offered_per_s=280.0, seed=seed, **SHORT))
    before, after = result.windows["before"], result.windows["after"]
    assert before.goodput_per_s == pytest.approx(before.offered_per_s, rel=0.05)
    assert after.attempts_per_s == pytest.approx(2 * after.offered_per_s, rel=0.02)
    assert after.goodput_per_s == 0.0
    assert result.recovered_after_s is None


@SEEDS
def test_140_per_s_recovers_once_its_backlog_drains(seed):
    # Backlog at the end: about 140 * 2 + 140 * 1 requests, drained at 300 - 280 = 20/s.
    result = metastable_model(MetastableSetup(offered_per_s=140.0, seed=seed, **SHORT))
    after = result.windows["after"]
    assert after.attempts_per_s == pytest.approx(after.offered_per_s, rel=0.02)
    assert after.goodput_per_s == pytest.approx(after.offered_per_s, rel=0.05)
    assert result.recovered_after_s is not None and result.recovered_after_s < 15


def test_an_outage_that_drops_requests_leaves_no_backlog_at_140_per_s():
    setup = MetastableSetup(offered_per_s=140.0, outage="drop", **SHORT)
    assert metastable_model(setup).recovered_after_s == 0.0


def test_during_the_outage_nothing_is_answered_and_requests_are_retried():
    during = metastable_model(MetastableSetup(offered_per_s=140.0, **SHORT)).windows["during"]
    assert during.goodput_per_s == 0.0
    # Retries start a timeout after the outage does: 1.5x over a 2 s outage.
    assert during.attempts_per_s == pytest.approx(1.5 * during.offered_per_s, rel=0.15)


def test_metastability_is_deterministic_for_a_seed():
    setup = MetastableSetup(offered_per_s=200.0, seed=3, **SHORT)
    assert metastable_model(setup) == metastable_model(setup)


# -- the checks ----------------------------------------------------------------------------


def test_a_check_is_within_only_inside_its_bound():
    assert relative("x", 100.0, 104.9, 0.05).within
    assert not relative("x", 100.0, 105.1, 0.05).within
    assert Check("y", 0.0, 3.0, 0.0, 14.0, "<= 14").difference == "+3"
    assert relative("x", 200.0, 190.0, 0.05).difference == "-5.0%"


# -- the bench entry point -----------------------------------------------------------------


def _result(within: bool) -> dict[str, object]:
    check = relative("Brooker OCC 100 clients, none: mean calls", 2422.0,
                     2422.0 if within else 3000.0, 0.05)
    windows = {name: {"start_s": 0.0, "end_s": 1.0, "offered_per_s": 1.0,
                      "attempts_per_s": 2.0, "goodput_per_s": 0.0}
               for name in ("before", "during", "after")}
    return {"benchmark": "simulate", "mode": "check", "wall_s": 0.1, "occ_trials": 2,
            "seed": 1, "checks": [check.to_dict()], "passed": within,
            "occ": [{"strategy": "none", "trials": 2, "mean_calls": 2422.0, "sem_calls": 9.0,
                     "mean_completion_s": 2.0, "sem_completion_s": 0.01}],
            "metastable": [{"offered_per_s": 280.0, "outage_s": [30.0, 40.0],
                            "recovered_after_s": None, "windows": windows}]}


@pytest.mark.parametrize(("within", "status"), [(True, 0), (False, 1)])
def test_bench_simulate_check_exits_1_when_a_figure_misses(monkeypatch, capsys, within,
                                                           status):
    monkeypatch.setattr(bench_main, "simulate_check", lambda *_: _result(within))
    assert bench_main.main(["simulate", "--check", "--quiet"]) == status
    table = capsys.readouterr().out
    assert "Brooker OCC 100 clients, none: mean calls" in table
    assert ("  yes" if within else "  NO") in table


def test_bench_simulate_needs_a_mode():
    with pytest.raises(SystemExit) as exc:
        bench_main.build_parser().parse_args(["simulate"])
    assert exc.value.code == 2
