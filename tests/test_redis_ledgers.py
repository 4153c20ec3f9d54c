"""The Lua ledgers in Redis give the same answers as `billing.Ledger`, op for op."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redisproc import RedisProcess

from server.billing import Ledger
from server.config import App, Config, Key, Plan
from server.redis_ledgers import RedisLedgers
from server.redis_link import RedisLink

_prefixes = itertools.count()

plans = st.builds(
    Plan,
    max_concurrent_connections=st.integers(0, 4),
    max_messages_per_period=st.integers(0, 6),
    period_seconds=st.sampled_from([5.0, 10.0, 3600.0]),
    overages_allowed=st.booleans(),
    overages_enabled=st.booleans(),
    balance=st.sampled_from([0.0, 0.3, 1.0, 2.5]),
    overage_price_per_message=st.sampled_from([0.0, 0.1, 0.25, 1.0]),
    overage_price_per_connection=st.sampled_from([0.0, 0.5, 1.5]),
    auto_recharge=st.sampled_from([None, 0.2, 1.0]),
)
ops = st.lists(st.tuples(st.sampled_from(["msg", "admit", "release"]),
                         st.sampled_from([0.0, 0.0, 0.0, 1.0, 4.0, 11.0])),
               min_size=1, max_size=40)


@pytest.fixture(scope="module")
def redis_url():
    proc = RedisProcess().start()
    yield proc.url
    proc.stop()


async def replay(url: str, plan: Plan, steps: list[tuple[str, float]]) -> tuple[list, list]:
    config = Config(apps=(App(id="app", plan=plan, keys=(Key(id="pk_x"),)),))
    link = RedisLink(url, f"parity{next(_prefixes)}")
    await link.start()
    try:
        await link.redis.set(link.key("alive", "i0"), "1")
        redis_ledgers = RedisLedgers(config, link, "i0")
        now = 1_000.0
        await redis_ledgers.resync(now)  # what an instance does when Redis comes up
        ledger = Ledger.open(plan, now)
        python, lua = [], []
        for op, dt in steps:
            now += dt
            if op == "msg":
                python.append(ledger.charge_message(now))
                lua.append(await redis_ledgers.charge_message("app", now))
            elif op == "admit":
                python.append(ledger.admit_connection(now))
                lua.append(await redis_ledgers.admit_connection("app", now))
            else:
                if ledger.concurrent:
                    ledger.release_connection(now)
                    await redis_ledgers.release_connection("app", now)
            python.append(ledger.usage("app", now))
            lua.append(await redis_ledgers.usage("app", now))
        return python, lua
    finally:
        await link.stop()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=plans, steps=ops)
def test_lua_and_python_ledgers_agree(redis_url, plan, steps):
    python, lua = asyncio.run(replay(redis_url, plan, steps))
    assert lua == python
