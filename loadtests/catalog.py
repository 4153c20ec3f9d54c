"""The user behaviours and their parameters, as data (importable without Locust).

Each behaviour's parameters are one frozen dataclass whose fields carry their defaults
and their rule. `parse_params` is the one place a `[swarm.classes.NAME]` table is
checked: the scenario loader calls it at load time (without importing Locust, which
monkey-patches the importing process with gevent), and `users.py` calls it once per
user class when Locust starts. Errors name the key (`swarm.classes.Publisher.rate:
must be > 0, got -1`) and are `server.schema.ConfigError`, a ValueError.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from server.schema import ConfigError, Table

from .intents import DEFAULT_TIMEOUT_S
from .retry import make_policy

MODELS = ("closed", "open")
# Locust's own knobs, fields of every parameter set (named apart for sim/scenario.py).
LOCUST_PARAMS = ("weight", "fixed_count")

# Misbehaving's bad-input classes: name -> (the outcome it must provoke, the frame).
BAD_INPUT: dict[str, tuple[str, Callable[[], str | bytes]]] = {
    "invalid_json": ("malformed_message", lambda: "{not json"),
    "missing_type": ("malformed_message", lambda: '{"channel":"a"}'),
    "unknown_type": ("unknown_type", lambda: '{"type":"teleport"}'),
    "invalid_channel": ("invalid_channel", lambda: '{"type":"subscribe","channel":""}'),
    "reserved_channel": ("channel_reserved",
                         lambda: '{"type":"publish","channel":"_system/x","data":1}'),
    "missing_data": ("missing_data", lambda: '{"type":"publish","channel":"a"}'),
    "oversize_frame": ("close 1009", lambda: '{"type":"publish","channel":"a","data":"'
                       + "x" * 70_000 + '"}'),
}

# A rule reads one key of a class table (with the project's one table reader, so the
# messages are those of every config file) and returns the typed value.
Rule = Callable[[Table, str, Any], Any]


def _param(default: Any, rule: Rule) -> Any:
    return field(default=default, metadata={"rule": rule})


def _positive(table: Table, key: str, default: Any) -> float:
    return float(table.number(key, default, minimum=0, exclusive=True))


def _count(table: Table, key: str, default: Any) -> int | None:
    return table.number(key, default, minimum=0, integer=True)


def _fraction(table: Table, key: str, default: Any) -> float:
    return float(table.number(key, default, minimum=0, maximum=1))


def _seconds(table: Table, key: str, default: Any) -> float:
    return float(table.number(key, default, minimum=0))


def _timeout(table: Table, key: str, default: Any) -> float:
    return float(table.number(key, default, minimum=0, exclusive=True))


def _name(table: Table, key: str, default: Any) -> str | None:
    return table.string(key, default)


def _model(table: Table, key: str, default: Any) -> str | None:
    return table.string(key, default, choices=MODELS)


def _names(table: Table, key: str, default: Any) -> tuple[str, ...] | None:
    names = table.strings(key, default, non_empty=True)
    if names is None or not any("{" in n for n in names):
        return names
    out: list[str] = []
    for name in names:
        out.extend(_expand(table, key, name))
    return tuple(dict.fromkeys(out))


RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
MAX_EXPANDED = 1_000_000


def _expand(table: Table, key: str, name: str) -> list[str]:
    """`room/{1..10000}`: one name per number, for channel sets too long to list."""
    m = RANGE.search(name)
    if m is None:
        return [name]
    lo, hi = int(m.group(1)), int(m.group(2))
    if hi < lo or hi - lo >= MAX_EXPANDED:
        raise table.fail(key, f"{name!r}: a range {{A..B}} needs A <= B and at most "
                         f"{MAX_EXPANDED:,} names")
    head, tail = name[:m.start()], name[m.end():]
    if RANGE.search(tail):
        raise table.fail(key, f"{name!r}: one {{A..B}} range per name")
    return [f"{head}{i}{tail}" for i in range(lo, hi + 1)]


def _kinds(table: Table, key: str, default: Any) -> tuple[str, ...] | None:
    return table.strings(key, default, choices=tuple(BAD_INPUT), non_empty=True)


def _policy(table: Table, key: str, default: Any) -> Any:
    spec = table.get(key, default)
    try:
        make_policy(spec)
    except ValueError as exc:
        raise table.fail(key, str(exc).removeprefix("retry.")) from None
    return spec


@dataclass(frozen=True, slots=True)
class UserParams:
    """What every behaviour takes."""

    rate: float = _param(1.0, _positive)  # operations per second per user
    channels: tuple[str, ...] = _param(("room/1",), _names)
    policy: str | Mapping[str, Any] | None = _param("default", _policy)  # retry.make_policy
    model: str | None = _param(None, _model)  # None: the swarm's ("closed" or "open")
    key: str | None = _param(None, _name)  # None: the swarm's credential
    weight: int | None = _param(None, _count)  # Locust's, None: Locust's default
    fixed_count: int | None = _param(None, _count)
    timeout_s: float = _param(DEFAULT_TIMEOUT_S, _timeout)  # a reply's wait, then "timeout"


@dataclass(frozen=True, slots=True)
class SubscriberParams(UserParams):
    rate: float = _param(0.2, _positive)
    subscriptions: int = _param(3, _count)
    wildcard_fraction: float = _param(0.34, _fraction)


@dataclass(frozen=True, slots=True)
class PublisherParams(UserParams):
    rate: float = _param(5.0, _positive)
    payload_bytes: int = _param(64, _count)


@dataclass(frozen=True, slots=True)
class DirectSenderParams(UserParams):
    rate: float = _param(2.0, _positive)
    presence_channel: str = _param("lobby", _name)


@dataclass(frozen=True, slots=True)
class ChatterParams(UserParams):
    send_fraction: float = _param(0.2, _fraction)


@dataclass(frozen=True, slots=True)
class RateAbuserParams(UserParams):
    rate: float = _param(0.5, _positive)
    burst: int = _param(300, _count)


@dataclass(frozen=True, slots=True)
class QuotaBurnerParams(UserParams):
    rate: float = _param(200.0, _positive)


@dataclass(frozen=True, slots=True)
class MisbehavingParams(UserParams):
    rate: float = _param(2.0, _positive)
    # None: every kind of BAD_INPUT, in its order
    kinds: tuple[str, ...] | None = _param(None, _kinds)


@dataclass(frozen=True, slots=True)
class ChurnerParams(UserParams):
    hold_s: float = _param(0.5, _seconds)


# Behaviour name -> its parameter set; users.py has one Locust class per entry.
USER_CLASSES: dict[str, type[UserParams]] = {
    "Subscriber": SubscriberParams,
    "Publisher": PublisherParams,
    "DirectSender": DirectSenderParams,
    "Chatter": ChatterParams,
    "RateAbuser": RateAbuserParams,
    "QuotaBurner": QuotaBurnerParams,
    "Misbehaving": MisbehavingParams,
    "Churner": ChurnerParams,
}


def parameters(class_name: str) -> dict[str, Any]:
    """Every parameter a behaviour takes, with its default (as a scenario writes it)."""
    return defaults_of(USER_CLASSES[class_name])


def defaults_of(params_type: type[UserParams]) -> dict[str, Any]:
    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
            for f in dataclasses.fields(params_type)}


def parse_params(class_name: str, mapping: object, where: str | None = None) -> UserParams:
    """One `[swarm.classes.NAME]` table, checked and typed; ConfigError naming the key.

    NAME is a behaviour (`Publisher`), or any identifier with `class = "Publisher"`:
    several variants of one behaviour can then run side by side (one per retry policy).
    `where` is the table's path in errors (default `swarm.classes.NAME`).
    """
    path = where or f"swarm.classes.{class_name}"
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{path}: must be a table")
    base = mapping.get("class", class_name)
    if base not in USER_CLASSES:
        at = f"{path}.class" if "class" in mapping else path
        raise ConfigError(f"{at}: unknown user class {base!r} "
                          f"(one of {', '.join(USER_CLASSES)})")
    if not class_name.isidentifier():
        raise ConfigError(f"{path}: a class name must be an identifier")
    values = {k: v for k, v in mapping.items() if k != "class"}
    return build_params(USER_CLASSES[base], values, path, name=class_name)


def build_params(params_type: type[UserParams], mapping: Mapping[str, Any], path: str, *,
                 name: str = "") -> UserParams:
    """`params_type` from `mapping`; a key it does not give takes the field's default."""
    fields = dataclasses.fields(params_type)
    allowed = {f.name for f in fields}
    unknown = sorted(set(mapping) - allowed)
    if unknown:
        known = ", ".join(sorted(allowed | {"class"}))
        raise ConfigError(f"{path}.{unknown[0]}: unknown parameter for "
                          f"{name or params_type.__name__} (one of {known})")
    # None (JSON's null) is "not given", and a tuple is a list (as TOML and JSON give).
    table = Table({k: list(v) if isinstance(v, tuple) else v
                   for k, v in mapping.items() if v is not None}, path)
    return params_type(**{f.name: f.metadata["rule"](table, f.name, f.default)
                          for f in fields})
