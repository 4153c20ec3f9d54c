"""Retry policies, backoff strategies, retry budget and throttle: pure, seeded, exact."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtests.backoff import BACKOFFS, make_backoff
from loadtests.budget import RetryBudget, RetryThrottle
from loadtests.retry import (
    ACTIONS,
    CLOSE_RULES,
    ERROR_RULES,
    Decision,
    DefaultPolicy,
    NaivePolicy,
    NoRetryPolicy,
    RetryPolicy,
    make_policy,
)
from server import codes
from server.codes import CLOSE_CODES, ERROR_CODES, CloseEntry, ErrorCode, Retry

SEED = 1234
BASE = 0.5  # constant backoff in the table-driven tests, so every delay is exact
FLOOR = 30.0
PROBE = 5.0
PEER = 1.0
JITTER = 1.0
HINT_MS = 2000


def table_policy(**params: Any) -> DefaultPolicy:
    spec = {"backoff": "constant", "base_s": BASE, "cap_s": BASE, "floor_4010_s": FLOOR,
            "quota_probe_s": PROBE, "peer_not_found_delay_s": PEER,
            "jitter_1001_s": JITTER, **params}
    policy = make_policy(spec, rng=random.Random(SEED))
    assert isinstance(policy, DefaultPolicy)
    return policy


def first_uniform(low: float, high: float) -> float:
    """The first draw of a Random(SEED): what a fresh seeded policy draws first."""
    return random.Random(SEED).uniform(low, high)


# -- backoff strategies -----------------------------------------------------------------


def test_none_waits_nothing():
    backoff = make_backoff("none", 0.1, 5.0, random.Random(SEED))
    assert [backoff.delay(n) for n in (1, 2, 10)] == [0.0, 0.0, 0.0]


def test_constant_waits_base():
    backoff = make_backoff("constant", 0.3, 5.0, random.Random(SEED))
    assert [backoff.delay(n) for n in (1, 2, 10)] == [0.3, 0.3, 0.3]


def test_exponential_doubles_from_base_up_to_cap():
    backoff = make_backoff("exponential", 0.1, 1.0, random.Random(SEED))
    assert [backoff.delay(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_exponential_does_not_overflow_on_huge_attempts():
    backoff = make_backoff("exponential", 0.1, 7.0, random.Random(SEED))
    assert backoff.delay(10**6) == 7.0


def test_full_jitter_draws_uniform_below_the_ceiling():
    backoff = make_backoff("full_jitter", 0.1, 1.0, random.Random(SEED))
    rng = random.Random(SEED)
    expected = [rng.uniform(0.0, c) for c in (0.1, 0.2, 0.4, 0.8, 1.0)]
    assert [backoff.delay(n) for n in range(1, 6)] == expected


def test_equal_jitter_keeps_half_the_ceiling():
    backoff = make_backoff("equal_jitter", 0.1, 1.0, random.Random(SEED))
    rng = random.Random(SEED)
    expected = [c / 2 + rng.uniform(0.0, c / 2) for c in (0.1, 0.2, 0.4, 0.8, 1.0)]
    assert [backoff.delay(n) for n in range(1, 6)] == expected


def decorrelated_sequence(base: float, cap: float, n: int, rng: random.Random) -> list[float]:
    out, previous = [], base
    for _ in range(n):
        previous = min(cap, rng.uniform(base, previous * 3))
        out.append(previous)
    return out


def test_decorrelated_jitter_walks_from_the_previous_delay():
    backoff = make_backoff("decorrelated_jitter", 0.1, 2.0, random.Random(SEED))
    expected = decorrelated_sequence(0.1, 2.0, 8, random.Random(SEED))
    assert [backoff.delay(n) for n in range(1, 9)] == expected


def test_decorrelated_jitter_resets_on_reset():
    backoff = make_backoff("decorrelated_jitter", 0.1, 2.0, random.Random(SEED))
    rng = random.Random(SEED)
    first = decorrelated_sequence(0.1, 2.0, 5, rng)
    assert [backoff.delay(n) for n in range(1, 6)] == first
    backoff.reset()
    # Without the reset, the next draw would be uniform(0.1, first[-1] * 3).
    assert backoff.delay(6) == decorrelated_sequence(0.1, 2.0, 1, rng)[0]


def test_decorrelated_jitter_restarts_with_a_new_sequence():
    backoff = make_backoff("decorrelated_jitter", 0.1, 2.0, random.Random(SEED))
    rng = random.Random(SEED)
    assert [backoff.delay(n) for n in (1, 2, 3)] == decorrelated_sequence(0.1, 2.0, 3, rng)
    assert backoff.delay(1) == decorrelated_sequence(0.1, 2.0, 1, rng)[0]


def test_policy_success_resets_decorrelated_state():
    policy = make_policy({"backoff": "decorrelated_jitter", "base_s": 0.1, "cap_s": 2.0,
                          "max_attempts": None}, rng=random.Random(SEED))
    rng = random.Random(SEED)
    delays = [policy.after_error("publish", "backend_error", n).delay_s for n in (1, 2, 3)]
    assert delays == decorrelated_sequence(0.1, 2.0, 3, rng)
    policy.on_result(True)
    # A later sequence that (wrongly) does not restart at 1 still starts from base.
    assert policy.after_error("publish", "backend_error", 4).delay_s == \
        decorrelated_sequence(0.1, 2.0, 1, rng)[0]


@pytest.mark.parametrize("name", list(BACKOFFS))
def test_attempt_is_one_based(name: str):
    with pytest.raises(ValueError, match="1-based"):
        make_backoff(name, 0.1, 1.0, random.Random(SEED)).delay(0)


backoff_params = st.floats(min_value=0.0, max_value=10.0).flatmap(
    lambda base: st.tuples(st.just(base), st.floats(min_value=base, max_value=100.0)))


@given(params=backoff_params, attempts=st.lists(st.integers(1, 3000), max_size=40),
       seed=st.integers(0, 2**32))
def test_every_backoff_stays_within_its_bounds(params: tuple[float, float],
                                               attempts: list[int], seed: int):
    base, cap = params
    for name in BACKOFFS:
        backoff = make_backoff(name, base, cap, random.Random(seed))
        for n in attempts:
            ceiling = min(cap, base * 2.0 ** min(n - 1, 1023))
            delay = backoff.delay(n)
            assert 0.0 <= delay <= cap
            if name == "none":
                assert delay == 0.0
            elif name == "constant":
                assert delay == base
            elif name == "exponential":
                assert delay == ceiling
            elif name == "full_jitter":
                assert delay <= ceiling
            elif name == "equal_jitter":
                assert ceiling / 2 <= delay <= ceiling
            else:
                assert base <= delay


@pytest.mark.parametrize(("args", "message"), [
    (("linear", 0.1, 1.0), "retry.backoff: must be one of none, constant, exponential, "
     "full_jitter, equal_jitter, decorrelated_jitter, got 'linear'"),
    (("constant", -0.1, 1.0), "retry.base_s: must be a finite number >= 0, got -0.1"),
    (("constant", "fast", 1.0), "retry.base_s: must be a number of seconds, got 'fast'"),
    (("constant", 1.0, 0.5), "retry.cap_s: must be >= base_s (1.0), got 0.5"),
    (("constant", 0.1, float("inf")), "retry.cap_s: must be a finite number >= 0, got inf"),
])
def test_make_backoff_rejects_with_the_field_named(args: tuple[Any, ...], message: str):
    with pytest.raises(ValueError) as info:
        make_backoff(*args, rng=random.Random(SEED))
    assert str(info.value) == message


# -- retry budget ----------------------------------------------------------------------


def test_fresh_budget_allows_only_the_allowance():
    budget = RetryBudget(0.1, min_retries=10)
    assert [budget.try_withdraw() for _ in range(11)] == [True] * 10 + [False]
    assert budget.retries == 10


def test_budget_earns_one_retry_per_ten_first_attempts():
    budget = RetryBudget(0.1, min_retries=0)
    for _ in range(9):
        budget.deposit()
    assert not budget.try_withdraw()
    budget.deposit()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    assert budget.balance == pytest.approx(0.0)


@given(ratio=st.floats(min_value=0.0, max_value=1.0), min_retries=st.integers(0, 20),
       events=st.lists(st.booleans(), max_size=400))
def test_budget_never_exceeds_ratio_plus_allowance(ratio: float, min_retries: int,
                                                   events: list[bool]):
    budget = RetryBudget(ratio, min_retries)
    for is_deposit in events:
        if is_deposit:
            budget.deposit()
            continue
        allowed = budget.try_withdraw()
        limit = ratio * budget.first_attempts + min_retries
        assert budget.retries <= limit
        if not allowed:  # refused only when one more retry would go over
            assert budget.retries + 1 > limit


OUTCOMES = ["ok", "backend_error", "internal_error", "over_message_quota",
            "channel_limit_exceeded", "peer_not_found", "malformed_message"]


@given(ratio=st.sampled_from([0.0, 0.05, 0.1, 0.5]),
       outcomes=st.lists(st.sampled_from(OUTCOMES), max_size=400))
def test_policy_retries_stay_within_the_budget(ratio: float, outcomes: list[str]):
    policy = make_policy({"budget": ratio, "max_attempts": None}, rng=random.Random(SEED))
    attempt = 1
    for outcome in outcomes:  # one user's request stream, retrying as the policy says
        policy.on_request(attempt > 1)
        policy.on_result(outcome == "ok")
        stats = policy.stats
        assert stats["retries"] <= ratio * (stats["attempts"] - stats["retries"]) + 10
        if outcome == "ok":
            attempt = 1
            continue
        decision = policy.after_error("publish", outcome, attempt)
        attempt = attempt + 1 if decision.retry else 1


def test_denied_by_budget_says_so_and_is_counted():
    policy = make_policy({"budget": {"ratio": 0.1, "min_retries": 1}},
                         rng=random.Random(SEED))
    assert policy.after_error("publish", "backend_error", 1).retry
    assert policy.after_error("publish", "backend_error", 1) == \
        Decision(False, reason="retry budget exhausted")
    assert policy.stats["retries_denied_by_budget"] == 1


def test_budget_does_not_count_codes_that_are_never_retried():
    policy = make_policy({"budget": {"ratio": 0.0, "min_retries": 0}},
                         rng=random.Random(SEED))
    assert policy.after_error("publish", "malformed_message", 1).reason != \
        "retry budget exhausted"
    assert policy.stats["retries_denied_by_budget"] == 0


def test_first_attempts_pay_into_the_budget_retries_do_not():
    policy = make_policy({"budget": {"ratio": 0.5, "min_retries": 0}},
                         rng=random.Random(SEED))
    policy.on_request(False)
    policy.on_request(True)
    assert policy.budget is not None
    assert policy.budget.first_attempts == 1
    assert policy.stats == {"attempts": 2, "retries": 1, "retries_denied_by_budget": 0,
                            "retries_denied_by_throttle": 0}


# -- retry throttle (gRPC) -------------------------------------------------------------


def test_throttle_starts_full_and_stops_retries_at_half():
    throttle = RetryThrottle(max_tokens=10, token_ratio=0.1)
    assert throttle.tokens == 10.0
    for _ in range(4):
        throttle.record(False)
    assert (throttle.tokens, throttle.allows_retry) == (6.0, True)
    throttle.record(False)
    assert (throttle.tokens, throttle.allows_retry) == (5.0, False)  # not > max/2


def test_throttle_successes_refill_by_ratio():
    throttle = RetryThrottle(max_tokens=10, token_ratio=0.1)
    for _ in range(5):
        throttle.record(False)
    throttle.record(True)
    assert (throttle.tokens, throttle.allows_retry) == (5.1, True)


def test_throttle_floors_at_zero_and_caps_at_max():
    throttle = RetryThrottle(max_tokens=10, token_ratio=0.1)
    for _ in range(25):
        throttle.record(False)
    assert throttle.tokens == 0.0
    for _ in range(10):
        throttle.record(True)
    assert throttle.tokens == 1.0  # milli-token arithmetic: no 0.9999999
    for _ in range(200):
        throttle.record(True)
    assert throttle.tokens == 10.0


def test_throttled_retry_is_refused_without_spending_budget():
    policy = make_policy({"throttle": True, "budget": {"ratio": 0.0, "min_retries": 1}},
                         rng=random.Random(SEED))
    for _ in range(5):
        policy.on_result(False)
    assert policy.after_error("publish", "backend_error", 1) == \
        Decision(False, reason="retry throttled")
    assert policy.stats["retries_denied_by_throttle"] == 1
    assert policy.budget is not None and policy.budget.retries == 0


def test_throttle_does_not_gate_reconnects():
    policy = make_policy({"throttle": True}, rng=random.Random(SEED))
    for _ in range(10):
        policy.on_result(False)
    assert policy.after_close(1011, 1).retry


@pytest.mark.parametrize(("value", "tokens", "ratio"), [
    (True, 10.0, 0.1),
    ({"max_tokens": 4, "token_ratio": 0.5}, 4.0, 0.5),
])
def test_throttle_spec(value: Any, tokens: float, ratio: float):
    throttle = RetryThrottle.from_spec(value)
    assert throttle is not None
    assert (throttle.max_tokens, throttle.token_ratio) == (tokens, ratio)


# -- default policy: every code in the table ---------------------------------------------

# Expected (retry, delay_s, action) per Retry kind, with constant backoff BASE. Written
# out here rather than read from the policy, so the test checks the policy's rules.
EXPECTED_AFTER_ERROR: dict[Retry, tuple[bool, float, str | None]] = {
    Retry.NEVER: (False, 0.0, None),
    Retry.NEVER_ON_CONNECTION: (False, 0.0, None),
    Retry.AFTER_UNSUBSCRIBE: (True, 0.0, "unsubscribe_oldest"),
    Retry.ONCE_AFTER_DELAY: (True, PEER, None),
    Retry.AFTER_PERIOD: (True, PROBE, None),
    Retry.BACKOFF: (True, BASE, None),
    Retry.RECONNECT_AFTER_HINT: (True, BASE, None),
    Retry.RECONNECT_NEW_TOKEN: (True, 0.0, "refresh_token"),
    Retry.RECONNECT_AFTER_WAIT: (True, FLOOR + BASE, None),
    Retry.RECONNECT_THROTTLED: (True, BASE, "throttle"),
    Retry.TERMINAL: (False, 0.0, None),
    Retry.RECONNECT_LIGHTER: (True, BASE, None),
    Retry.INSPECT: (False, 0.0, None),
}

# For closes (retry_after_ms = HINT_MS); no retry always means terminal.
EXPECTED_AFTER_CLOSE: dict[Retry, tuple[bool, float, str | None]] = {
    Retry.NEVER: (False, 0.0, None),
    Retry.NEVER_ON_CONNECTION: (False, 0.0, None),
    Retry.AFTER_UNSUBSCRIBE: (True, BASE, None),
    Retry.ONCE_AFTER_DELAY: (True, PEER, None),
    Retry.AFTER_PERIOD: (True, PROBE, None),
    Retry.BACKOFF: (True, BASE, None),
    Retry.RECONNECT_AFTER_HINT: (True, HINT_MS / 1000 + first_uniform(0.0, JITTER), None),
    Retry.RECONNECT_NEW_TOKEN: (True, 0.0, "refresh_token"),
    Retry.RECONNECT_AFTER_WAIT: (True, FLOOR + BASE, None),
    Retry.RECONNECT_THROTTLED: (True, BASE, "throttle"),
    Retry.TERMINAL: (False, 0.0, None),
    Retry.RECONNECT_LIGHTER: (True, BASE, None),
    Retry.INSPECT: (True, BASE, None),
}


def test_every_retry_kind_has_a_rule_and_an_expectation():
    assert set(ERROR_RULES) == set(Retry) == set(EXPECTED_AFTER_ERROR)
    assert set(CLOSE_RULES) == set(Retry) == set(EXPECTED_AFTER_CLOSE)


@pytest.mark.parametrize("entry", list(ERROR_CODES.values()), ids=list(ERROR_CODES))
def test_default_after_every_error_code(entry: ErrorCode):
    decision = table_policy().after_error("publish", entry.code, 1)
    retry, delay_s, action = EXPECTED_AFTER_ERROR[entry.retry]
    assert (decision.retry, decision.delay_s, decision.action, decision.terminal) == \
        (retry, delay_s, action, False)
    assert decision.retry == entry.is_retryable
    assert decision.action in ACTIONS
    assert decision.reason == f"{entry.code}: {entry.guidance}"


@pytest.mark.parametrize("entry", list(CLOSE_CODES.values()), ids=list(map(str, CLOSE_CODES)))
def test_default_after_every_close_code(entry: CloseEntry):
    decision = table_policy().after_close(entry.code, 1, HINT_MS)
    retry, delay_s, action = EXPECTED_AFTER_CLOSE[entry.retry]
    assert (decision.retry, decision.delay_s, decision.action, decision.terminal) == \
        (retry, delay_s, action, not retry)
    assert decision.action in ACTIONS
    assert decision.reason == f"close {entry.code} {entry.name}: {entry.guidance}"


def test_a_code_added_to_the_table_needs_no_change_in_the_policy(
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(codes.ERROR_CODES, "slow_down",
                        ErrorCode("slow_down", "test", Retry.BACKOFF, "back off"))
    monkeypatch.setitem(codes.CLOSE_CODES, 4999,
                        CloseEntry(4999, "gone", "test", Retry.TERMINAL, "terminal"))
    policy = table_policy()
    assert policy.after_error("publish", "slow_down", 1) == \
        Decision(True, BASE, reason="slow_down: back off")
    assert policy.after_close(4999, 1) == \
        Decision(False, terminal=True, reason="close 4999 gone: terminal")


# -- default policy: the rules one by one ---------------------------------------------------


def test_never_codes_say_fix_the_client():
    assert table_policy().after_error("publish", "malformed_message", 1) == \
        Decision(False, reason="malformed_message: never - fix the client")


def test_unknown_error_code_is_not_retried():
    assert table_policy().after_error("publish", "brand_new_code", 1) == \
        Decision(False, reason="brand_new_code: unknown code, not retried")


def test_transient_errors_back_off_exponentially_until_max_attempts():
    policy = make_policy({"backoff": "exponential", "base_s": 0.1, "cap_s": 5.0,
                          "max_attempts": 5}, rng=random.Random(SEED))
    delays = [policy.after_error("publish", "backend_error", n).delay_s for n in (1, 2, 3, 4)]
    assert delays == [0.1, 0.2, 0.4, 0.8]
    assert policy.after_error("publish", "backend_error", 5) == \
        Decision(False, reason="backend_error: gave up after 5 attempts")


def test_max_attempts_one_means_no_retries():
    policy = table_policy(max_attempts=1)
    assert not policy.after_error("publish", "internal_error", 1).retry


def test_default_backoff_is_full_jitter():
    policy = make_policy("default", rng=random.Random(SEED))
    assert policy.after_error("publish", "backend_error", 1).delay_s == \
        first_uniform(0.0, 0.1)


def test_peer_not_found_is_retried_once_after_the_delay():
    policy = table_policy(peer_not_found_delay_s=2.5)
    assert policy.after_error("send", "peer_not_found", 1) == \
        Decision(True, 2.5, reason="peer_not_found: sometimes; don't loop")
    decision = policy.after_error("send", "peer_not_found", 2)
    assert (decision.retry, decision.delay_s) == (False, 0.0)


def test_over_quota_probes_rarely():
    policy = table_policy(quota_probe_s=12.0)
    assert [policy.after_error("publish", "over_message_quota", n).delay_s
            for n in (1, 2, 3)] == [12.0, 12.0, 12.0]


def test_channel_limit_unsubscribes_the_oldest_then_retries():
    assert table_policy().after_error("subscribe", "channel_limit_exceeded", 1) == \
        Decision(True, 0.0, action="unsubscribe_oldest",
                 reason="channel_limit_exceeded: unsubscribe first")


@pytest.mark.parametrize("code", [4001, 4003, 4012, 4020, 1009])
def test_terminal_closes_stop_the_user(code: int):
    decision = table_policy().after_close(code, 1)
    assert (decision.retry, decision.terminal) == (False, True)


def test_token_expired_refreshes_at_once_then_backs_off():
    policy = table_policy()
    first = policy.after_close(4002, 1)
    assert (first.retry, first.delay_s, first.action) == (True, 0.0, "refresh_token")
    again = policy.after_close(4002, 2)
    assert (again.retry, again.delay_s, again.action) == (True, BASE, "refresh_token")


@given(attempt=st.integers(1, 50), seed=st.integers(0, 2**32))
def test_over_concurrent_limit_waits_at_least_the_floor(attempt: int, seed: int):
    policy = make_policy({"floor_4010_s": 45.0}, rng=random.Random(seed))
    decision = policy.after_close(4010, attempt)
    assert decision.retry
    assert 45.0 <= decision.delay_s <= 45.0 + 5.0


def test_over_concurrent_limit_adds_jittered_backoff_to_the_floor():
    policy = make_policy({"floor_4010_s": 30.0}, rng=random.Random(SEED))
    assert policy.after_close(4010, 1).delay_s == 30.0 + first_uniform(0.0, 0.1)


def test_over_message_rate_backs_off_and_throttles():
    policy = make_policy({"backoff": "exponential", "base_s": 0.2, "cap_s": 5.0},
                         rng=random.Random(SEED))
    assert [(d.delay_s, d.action) for d in (policy.after_close(4011, n) for n in (1, 2, 3))] \
        == [(0.2, "throttle"), (0.4, "throttle"), (0.8, "throttle")]


def test_going_away_waits_the_hint_plus_jitter():
    policy = make_policy({"jitter_1001_s": 2.0}, rng=random.Random(SEED))
    assert policy.after_close(1001, 1, 2500).delay_s == 2.5 + first_uniform(0.0, 2.0)


def test_going_away_without_a_hint_waits_the_jitter_alone():
    policy = make_policy({"jitter_1001_s": 2.0}, rng=random.Random(SEED))
    assert policy.after_close(1001, 1, None).delay_s == first_uniform(0.0, 2.0)


@pytest.mark.parametrize("code", [1006, 1008, 1011, 3000, 4999])
def test_dropped_failing_and_unknown_closes_reconnect_with_backoff(code: int):
    policy = make_policy({"backoff": "exponential", "base_s": 0.1, "cap_s": 5.0},
                         rng=random.Random(SEED))
    decision = policy.after_close(code, 3)
    assert (decision.retry, decision.delay_s, decision.action, decision.terminal) == \
        (True, 0.4, None, False)


def test_reconnects_are_unlimited_by_default_and_capped_by_max_reconnects():
    assert table_policy().after_close(1011, 10_000).retry
    policy = table_policy(max_reconnects=3)
    assert policy.after_close(1011, 2).retry
    assert policy.after_close(1011, 3) == \
        Decision(False, terminal=True, reason="close 1011: gave up after 3 attempts")


def test_reconnects_are_not_charged_to_the_budget():
    policy = table_policy(budget={"ratio": 0.0, "min_retries": 0})
    assert policy.after_close(1001, 1, 100).retry
    assert policy.stats["retries_denied_by_budget"] == 0


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempt_below_one_is_a_caller_bug(attempt: int):
    with pytest.raises(ValueError, match="1-based"):
        table_policy().after_error("publish", "backend_error", attempt)
    with pytest.raises(ValueError, match="1-based"):
        table_policy().after_close(1011, attempt)


# -- naive and none ---------------------------------------------------------------------

ALL_ERRORS = [*ERROR_CODES, "brand_new_code"]
ALL_CLOSES = [*CLOSE_CODES, 1006, 3000]


def test_naive_retries_every_error_at_once_forever():
    policy = make_policy("naive", rng=random.Random(SEED))
    for _ in range(100):
        policy.on_result(False)
    for code in ALL_ERRORS:
        assert policy.after_error("publish", code, 10**6) == \
            Decision(True, reason="policy naive: retry at once")


def test_naive_reconnects_after_every_close_at_once():
    policy = make_policy("naive", rng=random.Random(SEED))
    for code in ALL_CLOSES:
        assert policy.after_close(code, 10**6, 60_000) == \
            Decision(True, reason="policy naive: reconnect at once")


def test_none_never_retries_and_every_close_is_terminal():
    policy = make_policy("none", rng=random.Random(SEED))
    for code in ALL_ERRORS:
        assert policy.after_error("publish", code, 1) == \
            Decision(False, reason="policy none: never retry")
    for code in ALL_CLOSES:
        assert policy.after_close(code, 1, 100) == \
            Decision(False, terminal=True, reason="policy none: never reconnect")


# -- make_policy -----------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "cls"), [
    (None, DefaultPolicy),
    ("default", DefaultPolicy),
    ("naive", NaivePolicy),
    ("none", NoRetryPolicy),
    ({}, DefaultPolicy),
    ({"policy": "none"}, NoRetryPolicy),
])
def test_make_policy_by_name(spec: Any, cls: type[RetryPolicy]):
    rng = random.Random(SEED)
    policy = make_policy(spec, rng=rng)
    assert type(policy) is cls
    assert policy.rng is rng
    assert policy.name == cls.name


def test_make_policy_reads_every_parameter():
    policy = make_policy({
        "policy": "default", "backoff": "equal_jitter", "base_s": 0.2, "cap_s": 3.0,
        "max_attempts": 7, "max_reconnects": 9, "budget": 0.2,
        "throttle": {"max_tokens": 6, "token_ratio": 0.5}, "floor_4010_s": 40.0,
        "jitter_1001_s": 0.5, "peer_not_found_delay_s": 2.0, "quota_probe_s": 8.0,
    }, rng=random.Random(SEED))
    assert isinstance(policy, DefaultPolicy)
    assert (policy.backoff.name, policy.backoff.base_s, policy.backoff.cap_s) == \
        ("equal_jitter", 0.2, 3.0)
    assert (policy.max_attempts, policy.max_reconnects) == (7, 9)
    assert policy.budget is not None and policy.budget.ratio == 0.2
    assert policy.budget.min_retries == 10
    assert policy.throttle is not None
    assert (policy.throttle.max_tokens, policy.throttle.token_ratio) == (6.0, 0.5)
    assert (policy.floor_4010_s, policy.jitter_1001_s, policy.peer_not_found_delay_s,
            policy.quota_probe_s) == (40.0, 0.5, 2.0, 8.0)


def test_default_policy_has_no_budget_or_throttle_unless_asked():
    policy = make_policy("default")
    assert (policy.budget, policy.throttle) == (None, None)


DEFAULT_FIELDS = ("backoff, base_s, cap_s, max_attempts, max_reconnects, budget, throttle, "
                  "floor_4010_s, jitter_1001_s, peer_not_found_delay_s, quota_probe_s, "
                  "retry_timeouts")


@pytest.mark.parametrize(("spec", "message"), [
    ({"backoff": "linear"}, "retry.backoff: must be one of none, constant, exponential, "
     "full_jitter, equal_jitter, decorrelated_jitter, got 'linear'"),
    ("greedy", "retry.policy: must be one of default, naive, none or "
     "'package.module:ClassName', got 'greedy'"),
    ({"policy": 3}, "retry.policy: must be a string, got 3"),
    (42, "retry: must be a policy name or a table, got 42"),
    ({"base_s": -1}, "retry.base_s: must be a finite number >= 0, got -1"),
    ({"base_s": 2.0, "cap_s": 1.0}, "retry.cap_s: must be >= base_s (2.0), got 1.0"),
    ({"max_attempts": 0}, "retry.max_attempts: must be an integer >= 1, got 0"),
    ({"max_reconnects": 2.5}, "retry.max_reconnects: must be an integer >= 1, got 2.5"),
    ({"budget": 1.5}, "retry.budget: must be a fraction between 0 and 1 (0.1 = 10% of "
     "requests may be retries), got 1.5"),
    ({"budget": {"ratio": 0.1, "window": 10}}, "retry.budget.window: unknown field "
     "(known: ratio, min_retries)"),
    ({"budget": {"min_retries": 3}}, "retry.budget.ratio: required"),
    ({"budget": {"ratio": 0.1, "min_retries": -1}}, "retry.budget.min_retries: must be "
     "an integer >= 0, got -1"),
    ({"throttle": "yes"}, "retry.throttle: must be true, false or a table "
     "{max_tokens, token_ratio}, got 'yes'"),
    ({"throttle": {"max_tokens": 0}}, "retry.throttle.max_tokens: must be a number in "
     "(0, 1000], got 0"),
    ({"throttle": {"token_ratio": 0.0001}}, "retry.throttle.token_ratio: must be a number "
     ">= 0.001, got 0.0001"),
    ({"throttle": {"tokens": 5}}, "retry.throttle.tokens: unknown field (known: "
     "max_tokens, token_ratio)"),
    ({"floor_4010_s": "30s"}, "retry.floor_4010_s: must be a number of seconds, got '30s'"),
    ({"jitter_1001_s": -1.0}, "retry.jitter_1001_s: must be a finite number >= 0, got -1.0"),
    ({"peer_not_found_delay_s": None}, "retry.peer_not_found_delay_s: must be a number of "
     "seconds, got None"),
    ({"quota_probe_s": True}, "retry.quota_probe_s: must be a number of seconds, got True"),
    ({"retry_timeouts": "yes"}, "retry.retry_timeouts: must be true or false, got 'yes'"),
    ({"retries": 3}, f"retry.retries: unknown field for policy 'default' (known: "
     f"{DEFAULT_FIELDS})"),
    ({"policy": "naive", "budget": 0.1}, "retry.budget: unknown field for policy 'naive' "
     "(it takes no parameters)"),
    ({"rng": 1}, "retry.rng: not a scenario field (the user seeds the policy)"),
])
def test_make_policy_rejects_with_one_line_naming_the_field(spec: Any, message: str):
    with pytest.raises(ValueError) as info:
        make_policy(spec, rng=random.Random(SEED))
    assert str(info.value) == message
    assert "\n" not in message


# -- plugging in a user's own policy --------------------------------------------------------


class FixedDelayPolicy(RetryPolicy):
    """A user's policy: every error retried after `delay_s`, bounded by the budget."""

    def __init__(self, *, rng: random.Random | None = None, delay_s: float = 1.0,
                 budget: float | None = None, **params: Any) -> None:
        super().__init__(rng=rng, **params)
        self.delay_s = delay_s
        self.budget = RetryBudget.from_spec(budget)

    def after_error(self, op: str, code: str, attempt: int) -> Decision:
        return self.admit_retry(Decision(True, self.delay_s, reason="fixed"))

    def after_close(self, code: int, attempt: int,
                    retry_after_ms: int | None = None) -> Decision:
        return Decision(True, self.delay_s, reason="fixed")


class StrictSignaturePolicy(RetryPolicy):
    def __init__(self, *, rng: random.Random | None = None) -> None:
        super().__init__(rng=rng)


def test_plug_in_a_policy_by_import_path():
    rng = random.Random(SEED)
    policy = make_policy({"policy": f"{__name__}:FixedDelayPolicy", "delay_s": 2.0}, rng=rng)
    assert type(policy).__name__ == "FixedDelayPolicy"
    assert policy.name == "FixedDelayPolicy"
    assert policy.rng is rng
    assert policy.after_error("publish", "backend_error", 1) == \
        Decision(True, 2.0, reason="fixed")


def test_plugged_in_policy_shares_the_budget_accounting():
    policy = make_policy({"policy": f"{__name__}:FixedDelayPolicy",
                          "budget": {"ratio": 0.0, "min_retries": 1}})
    assert policy.after_error("publish", "backend_error", 1).retry
    assert policy.after_error("publish", "backend_error", 1) == \
        Decision(False, reason="retry budget exhausted")
    assert policy.stats["retries_denied_by_budget"] == 1


def test_plugged_in_policy_rejects_unknown_fields_through_the_base():
    with pytest.raises(ValueError) as info:
        make_policy({"policy": f"{__name__}:FixedDelayPolicy", "dealy_s": 2.0})
    assert str(info.value) == ("retry.dealy_s: unknown field for policy "
                               "'FixedDelayPolicy' (known: delay_s, budget)")


@pytest.mark.parametrize(("name", "start"), [
    ("no_such_module_for_rtmsim:Policy", "retry.policy: cannot import "
     "'no_such_module_for_rtmsim' (ModuleNotFoundError: "),
    ("json:Nope", "retry.policy: module 'json' has no 'Nope'"),
    ("json:JSONDecoder", "retry.policy: 'json:JSONDecoder' is not a subclass of "
     "loadtests.retry.RetryPolicy"),
    ("json:", "retry.policy: must be one of default, naive, none"),
])
def test_plug_in_errors_are_one_line(name: str, start: str):
    with pytest.raises(ValueError) as info:
        make_policy({"policy": name})
    assert str(info.value).startswith(start)
    assert "\n" not in str(info.value)


def test_plugged_in_class_with_a_fixed_signature_gets_a_value_error():
    with pytest.raises(ValueError) as info:
        make_policy({"policy": f"{__name__}:StrictSignaturePolicy", "delay_s": 1})
    assert str(info.value).startswith(
        f"retry.policy: {__name__}:StrictSignaturePolicy rejected its parameters: ")


def test_timeouts_are_not_retried_unless_the_policy_says_so() -> None:
    assert make_policy("default").after_timeout("publish", 1).retry is False
    assert make_policy("naive").after_timeout("publish", 1).retry is False
    policy = make_policy({"policy": "default", "retry_timeouts": True, "max_attempts": 2,
                          "backoff": "none"}, rng=random.Random(SEED))
    first = policy.after_timeout("publish", 1)
    assert (first.retry, first.delay_s, first.reason) == (
        True, 0.0, "timeout: retried with backoff")
    second = policy.after_timeout("publish", 2)
    assert (second.retry, second.reason) == (False, "timeout: gave up after 2 attempts")
