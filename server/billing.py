"""Plans, quotas and billing per app (PROTOCOL.md section 7).

A `Ledger` is one app's usage in its current period: pure arithmetic over an injected
`now`, so rollovers can be tested in virtual time. Overage is paid from the balance;
auto-recharge tops the balance up when it runs short (choice: only where overages are
allowed and enabled, since a recharge could not be spent otherwise).

Money is counted in whole nano-units of the currency (`UNITS` a unit), integers, so
that "the balance covers the price" is decided exactly: in binary floats a balance of
0.5 paid 0.001 at a time covered 499 messages, not 500 (0.5 - 499 x 0.001 is a hair
under 0.001). A nano-unit leaves room for per-message prices such as 2.5 per million
(2,500 units), and the Redis ledger's Lua numbers (doubles) hold such integers exactly
up to 9,007,199 currency units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import MONEY_UNITS, Plan

MAX_RECHARGES_PER_CHARGE = 1_000_000  # a guard, not a business rule
UNITS = MONEY_UNITS  # the ledger's money: nano-units of the currency


def to_units(amount: float) -> int:
    """A plan's amount (currency units, a float) in the ledger's whole nano-units."""
    return round(amount * UNITS)


def from_units(units: int) -> float:
    """The ledger's nano-units back in currency units (for `/v1/usage`, reports)."""
    return units / UNITS


@dataclass(slots=True)
class Ledger:
    plan: Plan
    period_start: float
    balance_units: int
    messages_used: int = 0
    overage_messages: int = 0
    overage_connections: int = 0
    overage_charge_units: int = 0
    recharges: int = 0
    rejected_messages: int = 0
    rejected_connections: int = 0
    concurrent: int = 0
    peak_concurrent: int = 0

    @classmethod
    def open(cls, plan: Plan, now: float) -> Ledger:
        return cls(plan=plan, period_start=now, balance_units=to_units(plan.balance))

    @property
    def balance(self) -> float:
        return from_units(self.balance_units)

    @property
    def overage_charges(self) -> float:
        return from_units(self.overage_charge_units)

    @property
    def period_end(self) -> float:
        return self.period_start + self.plan.period_seconds

    def roll(self, now: float) -> None:
        """Start a new period when `now` has passed the boundary (resets usage)."""
        if now < self.period_end:
            return
        periods = math.floor((now - self.period_start) / self.plan.period_seconds)
        self.period_start += periods * self.plan.period_seconds
        self.messages_used = 0
        self.overage_messages = 0
        self.overage_connections = 0
        self.overage_charge_units = 0
        self.rejected_messages = 0
        self.rejected_connections = 0
        self.peak_concurrent = self.concurrent

    @property
    def overages_possible(self) -> bool:
        return self.plan.overages_allowed and self.plan.overages_enabled

    def _pay(self, amount: float) -> bool:
        """Pay one overage unit from the balance, recharging if allowed; False if not."""
        if not self.overages_possible:
            return False
        price = to_units(amount)
        if self.balance_units < price:
            recharge = to_units(self.plan.auto_recharge or 0.0)
            if recharge <= 0:
                return False
            short = price - self.balance_units
            times = min(-(-short // recharge), MAX_RECHARGES_PER_CHARGE)
            self.balance_units += times * recharge
            self.recharges += times
        self.balance_units -= price
        self.overage_charge_units += price
        return True

    def charge_message(self, now: float) -> bool:
        """Count one publish/send attempt; False means `over_message_quota`."""
        self.roll(now)
        self.messages_used += 1
        if self.messages_used <= self.plan.max_messages_per_period:
            return True
        if self._pay(self.plan.overage_price_per_message):
            self.overage_messages += 1
            return True
        self.rejected_messages += 1
        return False

    def admit_connection(self, now: float) -> bool:
        """Take one concurrent-connection slot; False means close 4010."""
        self.roll(now)
        if self.concurrent >= self.plan.max_concurrent_connections:
            if not self._pay(self.plan.overage_price_per_connection):
                self.rejected_connections += 1
                return False
            self.overage_connections += 1
        self.concurrent += 1
        if self.concurrent > self.peak_concurrent:
            self.peak_concurrent = self.concurrent
        return True

    def release_connection(self, now: float) -> None:
        self.roll(now)
        self.concurrent = max(0, self.concurrent - 1)

    def usage(self, app_id: str, now: float) -> dict[str, object]:
        """The REST `/v1/usage` body."""
        self.roll(now)
        plan = self.plan
        return {
            "appId": app_id,
            "periodStartUnix": int(self.period_start),
            "periodEndUnix": int(self.period_end),
            "concurrentNow": self.concurrent,
            "peakConcurrent": self.peak_concurrent,
            "messagesUsed": self.messages_used,
            "overageMessages": self.overage_messages,
            "overageConnections": self.overage_connections,
            "balance": self.balance,
            "plan": {
                "name": plan.name,
                "maxConcurrentConnections": plan.max_concurrent_connections,
                "maxMessagesPerPeriod": plan.max_messages_per_period,
                "overagesAllowed": plan.overages_allowed,
                "overagesEnabled": plan.overages_enabled,
            },
        }
