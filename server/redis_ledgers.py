"""App ledgers kept in Redis so quotas hold across instances.

Each operation is one Lua script: the same arithmetic as `billing.Ledger` (rollover,
overage from the balance, auto-recharge), run atomically by Redis, in the same whole
nano-units of money (`billing.UNITS`: Lua's doubles hold them exactly). The tests hold
the two implementations to the same answers. Concurrent connections are counted per
instance (a hash field each) and summed over live instances, so a crashed instance's
connections stop counting when its heartbeat expires, and an instance can restore its
own count after Redis restarts empty.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .backend import BackendError
from .billing import from_units, to_units
from .config import Config, Plan

if TYPE_CHECKING:
    from .redis_link import RedisLink

_COMMON = """
local ledger, conc = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
local max_conn, max_msgs = tonumber(ARGV[2]), tonumber(ARGV[3])
local period, possible = tonumber(ARGV[4]), tonumber(ARGV[5])
local price_msg, price_conn = tonumber(ARGV[6]), tonumber(ARGV[7])
local recharge, alive_prefix = tonumber(ARGV[8]), ARGV[9]
local initial_balance, inst = ARGV[10], ARGV[11]

local function num(field)
  return tonumber(redis.call('HGET', ledger, field) or '0')
end

local function concurrent()
  local total = 0
  local pairs_ = redis.call('HGETALL', conc)
  for i = 1, #pairs_, 2 do
    if redis.call('EXISTS', alive_prefix .. pairs_[i]) == 1 then
      total = total + tonumber(pairs_[i + 1])
    end
  end
  return total
end

local function roll()
  local ps = tonumber(redis.call('HGET', ledger, 'ps'))
  if not ps then  -- first use, or Redis restarted empty: a fresh period from now
    redis.call('HSET', ledger, 'ps', string.format('%.17g', now), 'bal', initial_balance,
               'mu', 0, 'om', 0, 'oc', 0, 'ch', 0, 'rc', 0, 'rm', 0, 'rcn', 0, 'peak', 0)
    return
  end
  if now < ps + period then return end
  local periods = math.floor((now - ps) / period)
  redis.call('HSET', ledger, 'ps', string.format('%.17g', ps + periods * period),
             'mu', 0, 'om', 0, 'oc', 0, 'ch', 0, 'rm', 0, 'rcn', 0, 'peak', concurrent())
end

local function pay(price)
  if possible == 0 then return false end
  local bal = num('bal')
  if bal < price then
    if recharge <= 0 then return false end
    local times = math.ceil((price - bal) / recharge)
    bal = bal + times * recharge
    redis.call('HINCRBY', ledger, 'rc', times)
  end
  redis.call('HSET', ledger, 'bal', string.format('%.0f', bal - price),
             'ch', string.format('%.0f', num('ch') + price))
  return true
end
"""

CHARGE_MESSAGE = _COMMON + """
roll()
local used = redis.call('HINCRBY', ledger, 'mu', 1)
if used <= max_msgs then return 1 end
if pay(price_msg) then redis.call('HINCRBY', ledger, 'om', 1) return 1 end
redis.call('HINCRBY', ledger, 'rm', 1)
return 0
"""

ADMIT_CONNECTION = _COMMON + """
roll()
local current = concurrent()
if current >= max_conn then
  if not pay(price_conn) then redis.call('HINCRBY', ledger, 'rcn', 1) return 0 end
  redis.call('HINCRBY', ledger, 'oc', 1)
end
redis.call('HINCRBY', conc, inst, 1)
if current + 1 > num('peak') then redis.call('HSET', ledger, 'peak', current + 1) end
return 1
"""

RELEASE_CONNECTION = _COMMON + """
roll()
if tonumber(redis.call('HGET', conc, inst) or '0') > 0 then
  redis.call('HINCRBY', conc, inst, -1)
end
return 1
"""

USAGE = _COMMON + """
roll()
local out = redis.call('HGETALL', ledger)
table.insert(out, 'now')
table.insert(out, concurrent())
return out
"""



class RedisLedgers:
    """The `Ledgers` seam over Redis (the Redis backend's quotas)."""

    def __init__(self, config: Config, link: RedisLink, instance_id: str) -> None:
        self.plans: dict[str, Plan] = {app.id: app.plan for app in config.apps}
        self.link = link
        self.instance = instance_id
        self.local: dict[str, int] = dict.fromkeys(self.plans, 0)  # this instance's slots
        self._scripts: dict[str, Any] = {}

    def _keys(self, app_id: str) -> list[str]:
        k = self.link.key
        return [k("ledger", app_id), k("conc", app_id)]

    def _args(self, app_id: str, now: float) -> list[Any]:
        p = self.plans[app_id]
        possible = 1 if p.overages_allowed and p.overages_enabled else 0
        return [repr(now), p.max_concurrent_connections, p.max_messages_per_period,
                repr(float(p.period_seconds)), possible, to_units(p.overage_price_per_message),
                to_units(p.overage_price_per_connection), to_units(p.auto_recharge or 0.0),
                self.link.key("alive", ""), str(to_units(p.balance)), self.instance]

    async def _run(self, name: str, source: str, app_id: str, now: float, *,
                   direct: bool = False) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.link.redis.register_script(source)
        kwargs = {"keys": self._keys(app_id), "args": self._args(app_id, now)}
        if direct:
            return await script(**kwargs)
        return await self.link.call(script, **kwargs)

    async def resync(self, now: float) -> None:
        """After Redis came back (maybe empty): restore this instance's slot counts.

        Runs as a link hook, so Redis errors propagate and the link retries.
        """
        for app_id, n in self.local.items():
            await self.link.redis.hset(self.link.key("conc", app_id), self.instance, n)
            await self._run("usage", USAGE, app_id, now, direct=True)  # opens the period

    async def admit_connection(self, app_id: str, now: float) -> bool:
        """Take a slot; while Redis is down, admit (fail open) and count it locally.

        Refusing every connection during a blip would turn a routing outage into a
        connection storm; the local count is written back when Redis returns.
        """
        try:
            ok = bool(await self._run("admit", ADMIT_CONNECTION, app_id, now))
        except BackendError:
            ok = True
        if ok:
            self.local[app_id] += 1
        return ok

    async def release_connection(self, app_id: str, now: float) -> None:
        self.local[app_id] = max(0, self.local[app_id] - 1)
        with contextlib.suppress(BackendError):
            await self._run("release", RELEASE_CONNECTION, app_id, now)

    async def charge_message(self, app_id: str, now: float) -> bool:
        return bool(await self._run("charge", CHARGE_MESSAGE, app_id, now))

    async def usage(self, app_id: str, now: float) -> dict[str, Any]:
        raw = await self._run("usage", USAGE, app_id, now)
        f = {_text(raw[i]): _text(raw[i + 1]) for i in range(0, len(raw), 2)}
        plan = self.plans[app_id]
        start = float(f["ps"])
        return {
            "appId": app_id,
            "periodStartUnix": int(start),
            "periodEndUnix": int(start + plan.period_seconds),
            "concurrentNow": int(f["now"]),
            "peakConcurrent": int(f.get("peak", 0)),
            "messagesUsed": int(f.get("mu", 0)),
            "overageMessages": int(f.get("om", 0)),
            "overageConnections": int(f.get("oc", 0)),
            "balance": from_units(int(f.get("bal", 0))),
            "plan": {
                "name": plan.name,
                "maxConcurrentConnections": plan.max_concurrent_connections,
                "maxMessagesPerPeriod": plan.max_messages_per_period,
                "overagesAllowed": plan.overages_allowed,
                "overagesEnabled": plan.overages_enabled,
            },
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
