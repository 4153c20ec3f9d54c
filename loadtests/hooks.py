"""rtmsim's Locust hooks: its command-line options, its settings, the fault clock.

Registered on import, as Locust plugins do, and imported by `loadtests.users`: so any
locustfile that uses the user classes, the provided one or a user's own few lines,
takes `--rtmsim-key`, `--rtmsim-run-dir` and `--rtmsim-config`, reads the settings
before the first user starts, and aligns the servers' fault clocks at test start.
"""

from __future__ import annotations

import json
import time
import urllib.request

from locust import events
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from .swarmconfig import load_settings


@events.init_command_line_parser.add_listener
def _options(parser, **_kwargs):
    parser.add_argument("--rtmsim-key", default=None, env_var="RTMSIM_KEY",
                        help="credential (publishable key); default pk_live_demo")
    parser.add_argument("--rtmsim-run-dir", default=None, env_var="RTMSIM_RUN_DIR",
                        help="write the raw client event log into this directory")
    parser.add_argument("--rtmsim-config", default=None, env_var="RTMSIM_SWARM_CONFIG",
                        help="JSON swarm settings written by `rtmsim run`")


@events.test_start.add_listener
def _align_fault_clock(environment, **_kwargs):
    """Scenario time 0 is when the swarm starts: tell every server instance."""
    from locust.runners import WorkerRunner

    from .swarmconfig import SETTINGS

    if isinstance(environment.runner, WorkerRunner):
        return
    origin = int(time.time() * 1000)
    for url in SETTINGS.admin_urls:
        request = urllib.request.Request(f"{url}/sim/v1/clock", method="POST",
                                         data=json.dumps({"origin": origin}).encode())
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except OSError as exc:
            print(f"rtmsim: could not align the fault clock of {url}: {exc}")


@events.init.add_listener
def _init(environment, **_kwargs):
    """Settings before the first user: a bad host stops here; scenario weights apply."""
    settings = load_settings(environment.parsed_options)
    for url in settings.hosts or [settings.host]:
        try:
            parse_uri(url)
        except InvalidURI as exc:  # one line, not a traceback per user
            raise SystemExit(f"rtmsim: --host must be a ws:// or wss:// URL: {exc}") from None
    for cls in environment.user_classes:
        params = settings.params(cls.__name__)
        if "weight" in params:
            cls.weight = params["weight"]
        if "fixed_count" in params:
            cls.fixed_count = params["fixed_count"]
