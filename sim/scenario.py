"""A scenario: the server config (same schema as `rtmsim serve`), its faults, a swarm.

`[scenario]` names and describes the run, `[swarm]` says who connects and how hard.
The server's sections are validated by `server.config`; this module validates the
rest, with errors that name the key (`swarm.classes.Publisher.rate: must be > 0`).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtests.catalog import MODELS, parse_params
from server.config import Config, parse_config, read_toml
from server.faults import FaultEngine
from server.faults.base import next_fault_id
from server.schema import ConfigError, Table

from .thresholds import Threshold, parse_thresholds

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
    thresholds: tuple[Threshold, ...] = ()

    def with_overrides(self, *, users: int | None = None, duration_s: float | None = None,
                       workers: int | None = None, seed: int | None = None,
                       instances: int | None = None) -> Scenario:
        swarm = dataclasses.replace(self.swarm, **{k: v for k, v in (
            ("users", users), ("duration_s", duration_s), ("workers", workers))
            if v is not None})
        config = self.config
        server = {k: v for k, v in (("seed", seed), ("instances", instances)) if v is not None}
        if server:
            config = dataclasses.replace(config, server=dataclasses.replace(config.server,
                                                                            **server))
        return dataclasses.replace(self, swarm=swarm, config=config)


def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    data, text = read_toml(p, "scenario file")
    return parse_scenario(data, text, default_name=p.stem, path=p)


def parse_scenario(data: dict[str, Any], text: str = "", *, default_name: str = "scenario",
                   path: Path | None = None) -> Scenario:
    config = parse_config(data)
    meta = Table(config.extra.get("scenario") or {}, "scenario")
    name = meta.get("name", default_name)
    if not isinstance(name, str) or not name or "/" in name:
        raise meta.fail("name", f"must be a non-empty name without '/', got {name!r}")
    description = meta.get("description", "")
    if not isinstance(description, str):
        raise meta.fail("description", "must be a string")
    blips = _parse_blips(meta.get("redis_blips", []), config, text)
    meta.done()
    swarm = parse_swarm(config.extra.get("swarm") or {})
    thresholds = parse_thresholds(config.extra.get("thresholds"), fault_ids=fault_ids(config))
    return Scenario(name=name, description=description, config=config, swarm=swarm,
                    source=text, path=path, redis_blips=blips, thresholds=thresholds)


def fault_ids(config: Config) -> list[str]:
    """The ids the server gives the config's faults (`f1`, `f2`, ... unless named)."""
    ids: list[str] = []
    counter = 0
    for spec in config.faults:
        fault_id, counter = next_fault_id(spec.id, ids, counter)
        ids.append(fault_id)
    return ids


def _parse_blips(raw: object, config: Config, text: str) -> tuple[tuple[float, float], ...]:
    """Real Redis outages the harness causes by killing its private redis-server."""
    if not isinstance(raw, list):
        raise ConfigError("scenario.redis_blips: must be a list of {at_s, down_s}")
    out = []
    for i, blip in enumerate(raw):
        path = f"scenario.redis_blips[{i}]"
        if not isinstance(blip, dict) or set(blip) != {"at_s", "down_s"}:
            raise ConfigError(f"{path}: must be a table with at_s and down_s")
        t = Table(blip, path)
        out.append((t.number("at_s", None, minimum=0),
                    t.number("down_s", None, minimum=0, exclusive=True)))
    if out and config.server.backend != "redis":
        raise ConfigError("scenario.redis_blips: needs [server] backend = \"redis\"")
    if out and re.search(r"(?m)^\s*redis_url\s*=", text):
        raise ConfigError("scenario.redis_blips: the harness can only stop a Redis it "
                          "started: remove [server] redis_url")
    return tuple(sorted(out))


def parse_swarm(data: object) -> Swarm:
    t = Table(data, "swarm")
    model = t.choice("model", "closed", MODELS)
    shape = t.get("shape")
    shape_name, shape_params = None, {}
    if isinstance(shape, str):
        shape_name = shape
    elif isinstance(shape, dict):
        shape_params = {k: v for k, v in shape.items() if k != "kind"}
        shape_name = shape.get("kind")
    elif shape is not None:
        raise t.fail("shape", "must be a shape name or a table with `kind`")
    if shape is not None and shape_name not in SHAPES:
        raise t.fail("shape", f"kind must be one of {', '.join(SHAPES)}, got {shape_name!r}")
    classes = t.get("classes", {})
    if not isinstance(classes, dict) or not classes:
        raise t.fail("classes", "must name at least one user class "
                                "([swarm.classes.Publisher] ...)")
    swarm = Swarm(
        users=t.number("users", 20, minimum=1, integer=True),
        spawn_rate=t.number("spawn_rate", 10.0, minimum=0, exclusive=True),
        duration_s=t.number("duration_s", 30.0, minimum=0, exclusive=True),
        model=model,
        workers=t.number("workers", 1, minimum=1, integer=True),
        shape=shape_name,
        shape_params=shape_params,
        classes={name: _parse_class(name, params) for name, params in classes.items()},
    )
    t.done()
    return swarm


def _parse_class(name: str, params: object) -> dict[str, Any]:
    """One `[swarm.classes.NAME]` table, checked by the Locust side's own parameter types.

    NAME is a behaviour (`Publisher`), or any name with `class = "Publisher"`: several
    variants of one behaviour can then run side by side (e.g. one per retry policy).
    """
    parse_params(name, params, f"swarm.classes.{name}")
    assert isinstance(params, dict)  # parse_params refuses anything else
    return dict(params)



def run_meta(scenario: Scenario) -> dict[str, Any]:
    """What `run.json` says of the scenario and the machine (real and virtual runs)."""
    sc = scenario
    return {
        "name": sc.name, "description": sc.description,
        "duration_s": sc.swarm.duration_s, "users": sc.swarm.users,
        "spawn_rate": sc.swarm.spawn_rate, "workers": sc.swarm.workers,
        "model": sc.swarm.model, "shape": sc.swarm.shape,
        "seed": sc.config.server.seed, "backend": sc.config.server.backend,
        "instances": sc.config.server.instances,
        "faults": fault_windows(sc),
        "thresholds": {t.metric: t.to_spec() for t in sc.thresholds},
        "classes": sc.swarm.classes,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }


def fault_windows(scenario: Scenario) -> list[dict[str, Any]]:
    """The scenario's faults with the ids and windows the server gives them."""
    engine = FaultEngine(scenario.config.server.seed, 0.0)
    engine.load(scenario.config.faults)
    out = []
    for fault in engine.faults.values():
        spec = {k: v for k, v in fault.describe().items() if k != "hits"}
        spec["start_s"], spec["end_s"] = fault.start_s, fault.end_s
        out.append(spec)
    return out
