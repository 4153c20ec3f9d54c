"""Quota and billing arithmetic (PROTOCOL.md section 7), in virtual time."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.billing import Ledger, to_units
from server.config import Plan


def ledger(**plan) -> Ledger:
    return Ledger.open(Plan(**plan), now=1000.0)


def test_messages_within_quota_are_accepted_and_counted():
    led = ledger(max_messages_per_period=3)
    assert [led.charge_message(1000.0) for _ in range(4)] == [True, True, True, False]
    assert led.messages_used == 4  # over-quota attempts count too
    assert led.rejected_messages == 1


def test_overage_charged_from_balance():
    led = ledger(max_messages_per_period=1, overages_allowed=True, overages_enabled=True,
                 balance=1.0, overage_price_per_message=0.25)
    assert [led.charge_message(1000.0) for _ in range(6)] == [True] * 5 + [False]
    assert led.overage_messages == 4
    assert led.balance == pytest.approx(0.0)
    assert led.overage_charges == pytest.approx(1.0)


@pytest.mark.parametrize(("balance", "price", "paid"), [
    (0.5, 0.001, 500),  # binary floats paid 499: 0.5 - 499 x 0.001 < 0.001
    (0.3, 0.1, 3),  # 0.3 - 0.1 - 0.1 < 0.1 in floats: 2
    (1.0, 0.0000025, 400_000),  # 2.5 per million, exactly
])
def test_a_balance_covers_exactly_as_many_overages_as_it_holds_prices(balance, price, paid):
    led = ledger(max_messages_per_period=0, overages_allowed=True, overages_enabled=True,
                 balance=balance, overage_price_per_message=price)
    accepted = sum(led.charge_message(1000.0) for _ in range(paid + 1))
    assert (accepted, led.overage_messages, led.rejected_messages) == (paid, paid, 1)
    assert led.balance == 0.0 and led.balance_units == 0
    assert led.overage_charges == balance
    assert led.usage("a", 1000.0)["balance"] == 0.0


@pytest.mark.parametrize(("allowed", "enabled"), [(True, False), (False, True), (False, False)])
def test_no_overage_unless_allowed_and_enabled(allowed, enabled):
    led = ledger(max_messages_per_period=1, overages_allowed=allowed, overages_enabled=enabled,
                 balance=100.0, overage_price_per_message=0.01, auto_recharge=10.0)
    assert led.charge_message(1000.0)
    assert not led.charge_message(1000.0)
    assert led.balance == 100.0


def test_auto_recharge_tops_up_when_balance_runs_short():
    led = ledger(max_messages_per_period=0, overages_allowed=True, overages_enabled=True,
                 balance=0.0, overage_price_per_message=0.5, auto_recharge=1.0)
    assert all(led.charge_message(1000.0) for _ in range(5))
    assert led.recharges == 3  # 0 -> 1 (2 msgs), 1 (2 msgs), 1 (1 msg, 0.5 left)
    assert led.balance == pytest.approx(0.5)


def test_period_rollover_resets_usage():
    led = ledger(max_messages_per_period=2, period_seconds=10)
    assert led.charge_message(1000.0) and led.charge_message(1005.0)
    assert not led.charge_message(1009.999)
    assert led.charge_message(1010.0)  # new period
    assert led.messages_used == 1
    assert led.rejected_messages == 0
    assert led.period_start == 1010.0


def test_rollover_skips_idle_periods():
    led = ledger(max_messages_per_period=2, period_seconds=10)
    led.charge_message(1000.0)
    led.charge_message(1047.0)
    assert led.period_start == 1040.0
    assert led.usage("app", 1047.0)["periodEndUnix"] == 1050


def test_concurrent_cap_and_peak():
    led = ledger(max_concurrent_connections=2)
    assert led.admit_connection(1000.0) and led.admit_connection(1000.0)
    assert not led.admit_connection(1000.0)
    assert led.concurrent == 2 and led.peak_concurrent == 2
    led.release_connection(1001.0)
    assert led.admit_connection(1001.0)
    assert led.rejected_connections == 1


def test_connection_overage_uses_connection_price():
    led = ledger(max_concurrent_connections=1, overages_allowed=True, overages_enabled=True,
                 balance=1.0, overage_price_per_connection=0.6)
    assert led.admit_connection(1000.0)
    assert led.admit_connection(1000.0)
    assert not led.admit_connection(1000.0)
    assert led.overage_connections == 1
    assert led.balance == pytest.approx(0.4)


def test_rollover_resets_peak_to_current():
    led = ledger(period_seconds=10)
    for _ in range(3):
        led.admit_connection(1000.0)
    led.release_connection(1001.0)
    led.release_connection(1001.0)
    led.roll(1010.0)
    assert led.peak_concurrent == 1


def test_usage_body_has_every_documented_field():
    led = ledger(name="pro", max_messages_per_period=5)
    led.charge_message(1000.0)
    body = led.usage("app_x", 1000.0)
    assert set(body) == {"appId", "periodStartUnix", "periodEndUnix", "concurrentNow",
                         "peakConcurrent", "messagesUsed", "overageMessages",
                         "overageConnections", "balance", "plan"}
    assert body["plan"] == {"name": "pro", "maxConcurrentConnections": 100_000,
                            "maxMessagesPerPeriod": 5, "overagesAllowed": False,
                            "overagesEnabled": False}
    assert body["messagesUsed"] == 1


@given(quota=st.integers(0, 50), n=st.integers(0, 200),
       price=st.sampled_from([0.0, 0.01, 0.1, 1.0]), balance=st.floats(0, 10),
       recharge=st.one_of(st.none(), st.sampled_from([0.5, 2.0])))
def test_billing_invariants(quota, n, price, balance, recharge):
    led = ledger(max_messages_per_period=quota, overages_allowed=True, overages_enabled=True,
                 balance=balance, overage_price_per_message=price, auto_recharge=recharge)
    accepted = sum(led.charge_message(1000.0) for _ in range(n))
    assert led.messages_used == n
    assert accepted == min(n, quota) + led.overage_messages
    assert accepted + led.rejected_messages == n
    assert led.balance_units >= 0
    # Exact: money is whole nano-units, so the ledger's books balance to the unit.
    assert led.overage_charge_units == led.overage_messages * to_units(price)
    topped_up = to_units(recharge or 0) * led.recharges
    assert led.balance_units == to_units(balance) + topped_up - led.overage_charge_units
