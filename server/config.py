"""The config schema: frozen dataclasses validated once, at load.

Errors name the key and the problem (`apps[1].plan.period_seconds: must be > 0, got -5`)
so a bad file costs the user one line, never a traceback. Scenario files extend the
same schema with their own sections; nothing else parses TOML for these keys.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .faults import FaultSpec, parse_faults
from .schema import ConfigError, Table

ACTIONS = ("subscribe", "publish", "presence", "send")
BACKENDS = ("memory", "redis")
MONTH_SECONDS = 30 * 24 * 3600

# Top-level sections owned by other parts of the harness (faults, swarm, scenario).
# The server accepts and ignores them so one file can describe a whole run.
EXTENSION_SECTIONS = frozenset({"swarm", "scenario", "analysis", "clients", "thresholds",
                                "model", "traffic"})


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    admin_port: int = 8766
    backend: str = "memory"
    seed: int = 0
    sim_token: str | None = None
    close_on_unauthorized: bool = False
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "rtmsim"
    cross_instance_send: bool = True
    redis_peer_ttl_s: float = 3.0  # a silent instance's peers expire after this
    instance_id: str | None = None  # default: i0, i1, ... (or i<port> when alone)
    instances: int = 1  # processes `rtmsim run` starts (needs the redis backend when > 1)


@dataclass(frozen=True, slots=True)
class Limits:
    rate_per_second: float = 100.0
    burst: float = 200.0
    max_subscriptions: int = 100
    max_frame_bytes: int = 65536
    # Queued outbound bytes per connection before it is closed 1008 "slow consumer":
    # a reader that stops must not grow the server without bound (Centrifugo's client
    # queue defaults to 1 MiB, NATS's pending bytes to 64 MiB).
    max_outbound_bytes: int = 4 << 20


@dataclass(frozen=True, slots=True)
class Plan:
    name: str = "demo"
    max_concurrent_connections: int = 100_000
    max_messages_per_period: int = 1_000_000_000
    period_seconds: float = MONTH_SECONDS
    overages_allowed: bool = False
    overages_enabled: bool = False
    balance: float = 0.0
    overage_price_per_message: float = 0.0
    overage_price_per_connection: float = 0.0
    auto_recharge: float | None = None  # amount added when the balance runs short


@dataclass(frozen=True, slots=True)
class Key:
    id: str
    channel_patterns: tuple[str, ...] = ("**",)
    actions: tuple[str, ...] = ACTIONS
    secret: str | None = None

    @property
    def is_secret(self) -> bool:
        return self.secret is not None


@dataclass(frozen=True, slots=True)
class App:
    id: str
    plan: Plan = field(default_factory=Plan)
    keys: tuple[Key, ...] = ()
    suspended: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: Limits = field(default_factory=Limits)
    apps: tuple[App, ...] = ()
    faults: tuple[FaultSpec, ...] = ()  # [[faults]], validated
    extra: dict[str, Any] = field(default_factory=dict)  # extension sections, raw

    def key(self, key_id: str) -> tuple[App, Key] | None:
        """The app and key with this id, or None."""
        for app in self.apps:
            for key in app.keys:
                if key.id == key_id:
                    return app, key
        return None

    def app(self, app_id: str) -> App | None:
        return next((a for a in self.apps if a.id == app_id), None)


DEMO_APP = App(
    id="app_demo",
    plan=Plan(name="demo"),
    keys=(
        Key(id="pk_live_demo", channel_patterns=("**",), actions=ACTIONS),
        Key(id="pk_live_readonly", channel_patterns=("public/*",),
            actions=("subscribe", "presence")),
        Key(id="sk_id_demo", secret="sk_secret_demo", channel_patterns=("**",),
            actions=ACTIONS),
    ),
)


def default_config() -> Config:
    """The built-in demo config `rtmsim serve` uses without `--config`."""
    return Config(apps=(DEMO_APP,))


def parse_config(data: dict[str, Any]) -> Config:
    """Build a validated Config from parsed TOML; raise ConfigError naming the key."""
    top = Table(data, "")
    srv = top.table("server")
    server = ServerConfig(
        host=srv.string("host", "127.0.0.1"),
        port=srv.number("port", 8765, minimum=0, integer=True, maximum=65535),
        admin_port=srv.number("admin_port", 8766, minimum=0, integer=True,
                              maximum=65535),
        backend=srv.string("backend", "memory", choices=BACKENDS),
        seed=srv.number("seed", 0, minimum=0, integer=True),
        sim_token=srv.string("sim_token", None),
        close_on_unauthorized=srv.boolean("close_on_unauthorized", False),
        redis_url=srv.string("redis_url", "redis://127.0.0.1:6379/0"),
        redis_prefix=srv.string("redis_prefix", "rtmsim"),
        cross_instance_send=srv.boolean("cross_instance_send", True),
        redis_peer_ttl_s=srv.number("redis_peer_ttl_s", 3.0, minimum=0.3),
        instance_id=srv.string("instance_id", None),
        instances=srv.number("instances", 1, minimum=1, integer=True, maximum=64),
    )
    if server.instances > 1 and server.backend != "redis":
        raise srv.fail("instances", f"{server.instances} instances need "
                       "backend = \"redis\" (they share state through Redis)")
    if not server.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise srv.fail("redis_url", "must start with redis://, rediss:// or unix://, "
                       f"got {server.redis_url!r}")
    srv.done()
    lim = top.table("limits")
    limits = Limits(
        rate_per_second=lim.number("rate_per_second", 100.0, minimum=0, exclusive=True),
        burst=lim.number("burst", 200.0, minimum=1),
        max_subscriptions=lim.number("max_subscriptions", 100, minimum=1, integer=True),
        max_frame_bytes=lim.number("max_frame_bytes", 65536, minimum=64, integer=True),
        max_outbound_bytes=lim.number("max_outbound_bytes", 4 << 20, minimum=1024,
                                      integer=True),
    )
    lim.done()
    raw_apps = top.get("apps", None)
    if raw_apps is None:
        apps: tuple[App, ...] = (DEMO_APP,)
    elif not isinstance(raw_apps, list) or not raw_apps:
        raise ConfigError("apps: must be a non-empty array of tables ([[apps]])")
    else:
        apps = tuple(_parse_app(Table(a, f"apps[{i}]")) for i, a in enumerate(raw_apps))
    _check_unique(apps)
    faults = parse_faults(top.get("faults", []), "faults")
    extra = {k: top.get(k, None) for k in EXTENSION_SECTIONS if k in data}
    top.done()
    return Config(server=server, limits=limits, apps=apps, faults=faults, extra=extra)


def _parse_app(t: Table) -> App:
    app_id = t.string("id", required=True)
    suspended = t.boolean("suspended", False)
    plan = _parse_plan(t.table("plan"))
    raw_keys = t.get("keys", [])
    if not isinstance(raw_keys, list) or not raw_keys:
        raise t.fail("keys", "must be a non-empty array of tables ([[apps.keys]])")
    keys = tuple(_parse_key(Table(k, f"{t.name('keys')}[{i}]"))
                 for i, k in enumerate(raw_keys))
    t.done()
    return App(id=app_id, plan=plan, keys=keys, suspended=suspended)


MONEY_UNITS = 1_000_000_000  # the ledgers count money in nano-units (server/billing.py)
# An amount the ledgers hold to the nano-unit: the Redis ledger's Lua numbers are doubles,
# exact for integers up to 2^53 nano-units.
MAX_MONEY = 9_000_000.0


def _parse_plan(t: Table) -> Plan:
    d = Plan()
    recharge = t.get("auto_recharge", False)
    if recharge is False or recharge == "off":
        auto_recharge = None
    elif isinstance(recharge, bool) or not isinstance(recharge, int | float) or recharge <= 0:
        raise t.fail("auto_recharge", f"must be an amount > 0 or false, got {recharge!r}")
    else:
        auto_recharge = float(recharge)
    plan = Plan(
        name=t.string("name", d.name),
        max_concurrent_connections=t.number("max_concurrent_connections",
                                            d.max_concurrent_connections, minimum=0,
                                            integer=True),
        max_messages_per_period=t.number("max_messages_per_period",
                                         d.max_messages_per_period, minimum=0, integer=True),
        period_seconds=t.number("period_seconds", d.period_seconds, minimum=0,
                                exclusive=True),
        overages_allowed=t.boolean("overages_allowed", d.overages_allowed),
        overages_enabled=t.boolean("overages_enabled", d.overages_enabled),
        balance=float(t.number("balance", d.balance, minimum=0)),
        overage_price_per_message=float(t.number("overage_price_per_message",
                                                  d.overage_price_per_message, minimum=0)),
        overage_price_per_connection=float(t.number("overage_price_per_connection",
                                                    d.overage_price_per_connection,
                                                    minimum=0)),
        auto_recharge=auto_recharge,
    )
    for key in ("balance", "overage_price_per_message", "overage_price_per_connection",
                "auto_recharge"):
        amount = getattr(plan, key) or 0.0
        if amount > MAX_MONEY:
            raise t.fail(key, f"must be at most {MAX_MONEY:,.0f}, got {amount!r}")
        if 0 < amount < 0.5 / MONEY_UNITS:
            raise t.fail(key, f"must be 0 or at least {1 / MONEY_UNITS:g} (the ledger "
                              f"counts nano-units of money), got {amount!r}")
    t.done()
    return plan


def _parse_key(t: Table) -> Key:
    key_id = t.string("id", required=True)
    secret = t.string("secret", None)
    if key_id.startswith("sk_id_"):
        if secret is None:
            raise t.fail("secret", f"is required for a secret key ({key_id})")
    elif key_id.startswith("pk_"):
        if secret is not None:
            raise t.fail("secret", f"a publishable key ({key_id}) has no secret")
    else:
        raise t.fail("id", f"must start with pk_ (publishable) or sk_id_ (secret), "
                           f"got {key_id!r}")
    key = Key(
        id=key_id,
        secret=secret,
        channel_patterns=t.strings("channel_patterns", ("**",)),
        actions=t.strings("actions", ACTIONS, choices=ACTIONS),
    )
    t.done()
    return key


def _check_unique(apps: tuple[App, ...]) -> None:
    app_ids: set[str] = set()
    key_ids: set[str] = set()
    for i, app in enumerate(apps):
        if app.id in app_ids:
            raise ConfigError(f"apps[{i}].id: duplicate app id {app.id!r}")
        app_ids.add(app.id)
        for j, key in enumerate(app.keys):
            if key.id in key_ids:
                raise ConfigError(f"apps[{i}].keys[{j}].id: duplicate key id {key.id!r}")
            key_ids.add(key.id)


def read_toml(path: str | Path, what: str = "file") -> tuple[dict[str, Any], str]:
    """(parsed data, text) of a TOML file; every problem is a one-line ConfigError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file; every problem is a ConfigError."""
    data, _ = read_toml(path)
    return parse_config(data)
