"""A scenario: the server config (same schema as `rtmsim serve`), its faults, a swarm.

`[scenario]` names and describes the run, `[swarm]` says who connects and how hard.
The server's sections are validated by `server.config`; this module validates the
rest, with errors that name the key (`swarm.classes.Publisher.rate: must be > 0`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.catalog import LOCUST_PARAMS, USER_CLASSES, parameters
from server.config import Config, ConfigError, parse_config, read_toml

MODELS = ("closed", "open")
SHAPES = ("step_ramp", "spike", "soak")


@dataclass(frozen=True)
class Swarm:
    users: int = 20
    spawn_rate: float = 10.0
    duration_s: float = 30.0
    model: str = "closed"
    workers: int = 1
    shape: str | None = None
    shape_params: dict[str, Any] = field(default_factory=dict)
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    config: Config
    swarm: Swarm
    source: str  # the TOML text as given
    path: Path | None = None
    redis_blips: tuple[tuple[float, float], ...] = ()  # (at_s, down_s): harness kills Redis

    def with_overrides(self, *, users: int | None = None, duration_s: float | None = None,
                       workers: int | None = None, seed: int | None = None) -> Scenario:
        swarm = dataclasses.replace(self.swarm, **{k: v for k, v in (
            ("users", users), ("duration_s", duration_s), ("workers", workers))
            if v is not None})
        config = self.config
        if seed is not None:
            config = dataclasses.replace(config, server=dataclasses.replace(config.server,
                                                                            seed=seed))
        return dataclasses.replace(self, swarm=swarm, config=config)


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    data, text = read_toml(p, "scenario file")
    return parse_scenario(data, text, default_name=p.stem, path=p)


def parse_scenario(data: dict[str, Any], text: str = "", *, default_name: str = "scenario",
                   path: Path | None = None) -> Scenario:
    config = parse_config(data)
    meta = config.extra.get("scenario") or {}
    if not isinstance(meta, dict):
        raise ConfigError("scenario: must be a table")
    unknown = sorted(set(meta) - {"name", "description", "redis_blips"})
    if unknown:
        raise ConfigError(f"scenario.{unknown[0]}: unknown key")
    name = meta.get("name", default_name)
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"scenario.name: must be a non-empty name without '/', got {name!r}")
    description = meta.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("scenario.description: must be a string")
    swarm = parse_swarm(config.extra.get("swarm") or {})
    blips = _parse_blips(meta.get("redis_blips", []), config, text)
    return Scenario(name=name, description=description, config=config, swarm=swarm,
                    source=text, path=path, redis_blips=blips)


def _parse_blips(raw: object, config: Config, text: str) -> tuple[tuple[float, float], ...]:
    """Real Redis outages the harness causes by killing its private redis-server."""
    if not isinstance(raw, list):
        raise ConfigError("scenario.redis_blips: must be a list of {at_s, down_s}")
    out = []
    for i, blip in enumerate(raw):
        path = f"scenario.redis_blips[{i}]"
        if not isinstance(blip, dict) or set(blip) - {"at_s", "down_s"}:
            raise ConfigError(f"{path}: must be a table with at_s and down_s")
        out.append((_number(blip, "at_s", path, None), _number(blip, "down_s", path, None,
                                                               exclusive=True)))
    if out and config.server.backend != "redis":
        raise ConfigError("scenario.redis_blips: needs [server] backend = \"redis\"")
    if out and re.search(r"(?m)^\s*redis_url\s*=", text):
        raise ConfigError("scenario.redis_blips: the harness can only stop a Redis it "
                          "started: remove [server] redis_url")
    return tuple(sorted(out))


def _number(table: dict[str, Any], key: str, path: str, default: Any, *,
            minimum: float = 0, exclusive: bool = False, integer: bool = False) -> Any:
    value = table.get(key, default)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        wanted = "a whole number" if integer else "a number"
        raise ConfigError(f"{path}.{key}: must be {wanted}, got {value!r}")
    if value < minimum or (exclusive and value == minimum):
        op = ">" if exclusive else ">="
        raise ConfigError(f"{path}.{key}: must be {op} {minimum:g}, got {value!r}")
    return value


def parse_swarm(data: object) -> Swarm:
    if not isinstance(data, dict):
        raise ConfigError("swarm: must be a table")
    known = {"users", "spawn_rate", "duration_s", "model", "workers", "shape", "classes"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"swarm.{unknown[0]}: unknown key")
    model = data.get("model", "closed")
    if model not in MODELS:
        raise ConfigError(f"swarm.model: must be one of {', '.join(MODELS)}, got {model!r}")
    shape = data.get("shape")
    shape_name, shape_params = None, {}
    if isinstance(shape, str):
        shape_name = shape
    elif isinstance(shape, dict):
        shape_params = {k: v for k, v in shape.items() if k != "kind"}
        shape_name = shape.get("kind")
    elif shape is not None:
        raise ConfigError("swarm.shape: must be a shape name or a table with `kind`")
    if shape is not None and shape_name not in SHAPES:
        raise ConfigError(f"swarm.shape: kind must be one of {', '.join(SHAPES)}, "
                          f"got {shape_name!r}")
    classes = data.get("classes", {})
    if not isinstance(classes, dict) or not classes:
        raise ConfigError("swarm.classes: must name at least one user class "
                          "([swarm.classes.Publisher] ...)")
    return Swarm(
        users=_number(data, "users", "swarm", 20, minimum=1, integer=True),
        spawn_rate=_number(data, "spawn_rate", "swarm", 10.0, exclusive=True),
        duration_s=_number(data, "duration_s", "swarm", 30.0, exclusive=True),
        model=model,
        workers=_number(data, "workers", "swarm", 1, minimum=1, integer=True),
        shape=shape_name,
        shape_params=shape_params,
        classes={name: _parse_class(name, params) for name, params in classes.items()},
    )


def _parse_class(name: str, params: object) -> dict[str, Any]:
    """One `[swarm.classes.NAME]` table.

    NAME is a behaviour (`Publisher`), or any name with `class = "Publisher"`: several
    variants of one behaviour can then run side by side (e.g. one per retry policy).
    """
    path = f"swarm.classes.{name}"
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: must be a table")
    base = params.get("class", name)
    if base not in USER_CLASSES:
        where = f"{path}.class" if "class" in params else path
        raise ConfigError(f"{where}: unknown user class {base!r} "
                          f"(one of {', '.join(USER_CLASSES)})")
    if not name.isidentifier():
        raise ConfigError(f"{path}: a class name must be an identifier")
    allowed = set(parameters(base)) | set(LOCUST_PARAMS) | {"class"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(f"{path}.{unknown[0]}: unknown parameter for {name} "
                          f"(one of {', '.join(sorted(allowed))})")
    for key in ("weight", "fixed_count"):
        if key in params:
            _number(params, key, path, 1, minimum=0, integer=True)
    if "rate" in params:
        _number(params, "rate", path, 1.0, exclusive=True)
    if "channels" in params and (not isinstance(params["channels"], list) or not all(
            isinstance(c, str) and c for c in params["channels"]) or not params["channels"]):
        raise ConfigError(f"{path}.channels: must be a non-empty list of channel names")
    if "model" in params and params["model"] not in MODELS:
        raise ConfigError(f"{path}.model: must be one of {', '.join(MODELS)}")
    if "policy" in params:
        from loadtests.retry import make_policy

        try:
            make_policy(params["policy"])
        except ValueError as exc:
            raise ConfigError(f"{path}.policy: {str(exc).removeprefix('retry.')}") from None
    return dict(params)

