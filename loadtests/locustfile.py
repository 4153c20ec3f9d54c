"""The provided locustfile: every rtmsim user class, against any running server.

    locust -f loadtests/locustfile.py --host ws://127.0.0.1:8765
    locust -f loadtests/locustfile.py --host ws://127.0.0.1:8765 --headless -u 100 -r 20 \\
        --run-time 1m --rtmsim-key pk_live_demo --rtmsim-run-dir results/mine Publisher Subscriber

The credential defaults to the demo key; `--rtmsim-key` or RTMSIM_KEY overrides it.
`--rtmsim-config FILE` (JSON written by `rtmsim run`) sets per-class parameters, the
retry policy per class and the load shape (RTMSIM_SHAPE=step_ramp|spike|soak).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request

from locust import events
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from loadtests.swarmconfig import load_settings
from loadtests.users import (  # noqa: F401  (Locust collects the User classes)
    Chatter,
    Churner,
    DirectSender,
    Misbehaving,
    Publisher,
    QuotaBurner,
    RateAbuser,
    Subscriber,
)


def _variants() -> None:
    """Scenario classes like `[swarm.classes.FastRetry] class = "Publisher"` become
    subclasses here, so Locust can run several variants of one behaviour."""
    path = os.environ.get("RTMSIM_SWARM_CONFIG")
    if not path:
        return
    with open(path, encoding="utf-8") as f:
        classes = json.load(f).get("classes", {})
    for name, params in classes.items():
        base = params.get("class")
        if base and base != name and name not in globals():
            globals()[name] = type(name, (globals()[base],), {"__module__": __name__})


_variants()

if os.environ.get("RTMSIM_SHAPE"):
    from loadtests.shapes import SHAPES

    Shape = SHAPES[os.environ["RTMSIM_SHAPE"]]


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

    from loadtests.swarmconfig import SETTINGS

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
