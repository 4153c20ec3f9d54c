"""The swarm's settings for one Locust process: where to connect, as whom, how hard.

The only module of `loadtests` that reads environment variables. Its `OPTIONS` are
rtmsim's Locust options (`--rtmsim-key`, ...; `hooks` registers them, each with the
environment variable that stands in for it), and `settings_for(environment)` builds the
settings from Locust's parsed options and the harness's JSON once per Locust
environment. Two things are needed before Locust parses options, when it imports the
locustfile: the variant classes and the load shape (`locustfile_variants`,
`locustfile_shape`), read from RTMSIM_SWARM_CONFIG and RTMSIM_SHAPE.
"""

from __future__ import annotations

import json
import os
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_HOST = "ws://127.0.0.1:8765"
DEFAULT_KEY = "pk_live_demo"
HOST_ENV = "RTMSIM_URL"  # the host when Locust's --host is not given
SHAPE_ENV = "RTMSIM_SHAPE"
WORKER_TAG_ENV = "RTMSIM_WORKER_TAG"  # names this process's event log


@dataclass(frozen=True)
class Option:
    flag: str
    env_var: str
    help: str
    type: Callable[[str], Any] = str  # what Locust's parser converts the value with

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


OPTIONS = (
    Option("--rtmsim-key", "RTMSIM_KEY", f"credential (publishable key); default {DEFAULT_KEY}"),
    Option("--rtmsim-run-dir", "RTMSIM_RUN_DIR",
           "write the raw client event log into this directory (a Locust worker "
           "without one sends its log to the master's)"),
    Option("--rtmsim-config", "RTMSIM_SWARM_CONFIG", "JSON swarm settings written by `rtmsim run`"),
    Option("--rtmsim-token-url", "RTMSIM_TOKEN_URL",
           "REST endpoint that mints tokens (recovery after close 4002)"),
    Option("--rtmsim-secret", "RTMSIM_SECRET", "sk_id:sk_secret for --rtmsim-token-url"),
    Option("--rtmsim-metrics-port", "RTMSIM_METRICS_PORT",
           "serve the swarm's Prometheus metrics on 127.0.0.1:PORT (master or standalone "
           "only; 0: off)", int),
)
CONFIG_OPTION = OPTIONS[2]


@dataclass(frozen=True, eq=False)
class SwarmSettings:
    host: str = DEFAULT_HOST
    key: str = DEFAULT_KEY
    token_url: str | None = None  # REST endpoint that mints tokens (4002 recovery)
    secret: str | None = None  # sk_id:sk_secret for the token endpoint
    run_dir: str | None = None  # where the raw event log goes (None: no raw log)
    seed: int = 0
    model: str = "closed"  # or "open": fixed arrival schedule, latency from intended time
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)  # per user class
    hosts: list[str] = field(default_factory=list)  # several instances: users spread
    admin_urls: list[str] = field(default_factory=list)  # clock alignment at test start
    shape_params: dict[str, Any] = field(default_factory=dict)  # [swarm.shape]
    worker_tag: str | None = None  # names this process's event log (default host-pid)
    # Each user class's parameters, built once (users.RealtimeUser.params_in).
    parsed_params: dict[type, Any] = field(default_factory=dict, repr=False)

    def params(self, class_name: str) -> dict[str, Any]:
        """The scenario's `[swarm.classes.NAME]` table ({} when it names none)."""
        return self.classes.get(class_name, {})

    @property
    def process_tag(self) -> str:
        """A name for this process's log, unique across the machines of a distributed run."""
        return self.worker_tag or f"{socket.gethostname()}-{os.getpid()}"


_BY_ENVIRONMENT: weakref.WeakKeyDictionary[Any, SwarmSettings] = weakref.WeakKeyDictionary()


def settings_for(environment: Any) -> SwarmSettings:
    """The settings of this Locust environment (None: outside Locust, from the
    environment variables alone), built on first use."""
    if environment is None:
        return load_settings(None)
    settings = _BY_ENVIRONMENT.get(environment)
    if settings is None:
        settings = _BY_ENVIRONMENT[environment] = load_settings(environment.parsed_options)
    return settings


def load_settings(options: Any) -> SwarmSettings:
    """Settings from Locust's parsed options (None: the environment variables that stand
    in for them), then the harness's JSON file laid over them."""
    values = {o.dest: getattr(options, o.dest, None) if options is not None
              else os.environ.get(o.env_var) for o in OPTIONS}
    found = {"host": getattr(options, "host", None) or os.environ.get(HOST_ENV),
             "key": values["rtmsim_key"], "run_dir": values["rtmsim_run_dir"],
             "token_url": values["rtmsim_token_url"], "secret": values["rtmsim_secret"],
             "worker_tag": os.environ.get(WORKER_TAG_ENV)}
    data: dict[str, Any] = {k: v for k, v in found.items() if v}
    if values["rtmsim_config"]:
        data.update(_read_json(values["rtmsim_config"]))
    known = {"host", "key", "token_url", "secret", "run_dir", "seed", "model", "classes",
             "hosts", "admin_urls", "shape_params", "worker_tag"}
    return SwarmSettings(**{k: v for k, v in data.items() if k in known})


def locustfile_variants() -> dict[str, str]:
    """Variant class name -> its behaviour (`[swarm.classes.FastRetry] class =
    "Publisher"`), from the harness's JSON named by RTMSIM_SWARM_CONFIG."""
    path = os.environ.get(CONFIG_OPTION.env_var)
    classes = _read_json(path).get("classes", {}) if path else {}
    return {name: params["class"] for name, params in classes.items()
            if params.get("class") and params["class"] != name}


def locustfile_shape() -> str | None:
    """The load shape's name (`step_ramp`, `spike`, `soak`), or None."""
    return os.environ.get(SHAPE_ENV) or None


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def instance_of(index: int, instances: int) -> int:
    """The instance (of `SwarmSettings.hosts`) user number `index` connects to: the
    instances in turn, by the process's user number. The one rule of it, read by the
    Locust users and by the virtual engine and its checks (`sim.virtual.spawn`)."""
    return index % instances
