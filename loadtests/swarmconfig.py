"""The swarm's settings for one Locust process: where to connect, as whom, how hard.

One place reads them (environment variables, Locust options, the harness's JSON), so
users, the locustfile and the harness agree. A user class is configured by a table
of parameters (`rate`, `channels`, `policy`, ...) from the scenario's `[swarm]`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

DEFAULT_HOST = "ws://127.0.0.1:8765"
DEFAULT_KEY = "pk_live_demo"


@dataclass
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

    def params(self, class_name: str) -> dict[str, Any]:
        return self.classes.get(class_name, {})


SETTINGS = SwarmSettings()


def load_settings(options: Any = None) -> SwarmSettings:
    """Fill SETTINGS from the environment, Locust's parsed options and a config file."""
    s = SETTINGS
    s.host = os.environ.get("RTMSIM_URL", s.host)
    s.key = os.environ.get("RTMSIM_KEY", s.key)
    s.run_dir = os.environ.get("RTMSIM_RUN_DIR", s.run_dir)
    s.token_url = os.environ.get("RTMSIM_TOKEN_URL", s.token_url)
    s.secret = os.environ.get("RTMSIM_SECRET", s.secret)
    config_path = os.environ.get("RTMSIM_SWARM_CONFIG")
    if options is not None:
        host = getattr(options, "host", None)
        if host:
            s.host = host
        for attr, name in (("rtmsim_key", "key"), ("rtmsim_run_dir", "run_dir")):
            value = getattr(options, attr, None)
            if value:
                setattr(s, name, value)
        config_path = getattr(options, "rtmsim_config", None) or config_path
    if config_path:
        with open(config_path, encoding="utf-8") as f:
            apply_config(s, json.load(f))
    return s


def apply_config(s: SwarmSettings, data: dict[str, Any]) -> None:
    """Lay a harness-written JSON object over the settings."""
    for name in ("host", "key", "token_url", "secret", "run_dir", "seed", "model", "hosts",
                 "admin_urls", "shape_params"):
        if name in data:
            setattr(s, name, data[name])
    s.classes.update(data.get("classes", {}))
