"""rtmsim's Locust hooks: its command-line options, its settings, the fault clock.

Registered on import, as Locust plugins do, and imported by `loadtests.users`: so any
locustfile that uses the user classes, the provided one or a user's own few lines,
takes rtmsim's options (`swarmconfig.OPTIONS`: `--rtmsim-key`, `--rtmsim-run-dir`,
`--rtmsim-config`, ...), checks the hosts before the first user starts, serves the
swarm's Prometheus metrics (`--rtmsim-metrics-port`), carries the event logs of workers
without a run directory to the master (`locustlog`), keeps the process's own start-up
out of what it measures (`_quiet_start`) and aligns the servers' fault clocks at test
start. (`users` checks its classes' parameters.)
"""

from __future__ import annotations

import gc
import json
import time
import urllib.request

from locust import events
from locust.runners import WorkerRunner
from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from .eventlog import warm
from .locustlog import connect_event_logs
from .metrics import serve_metrics
from .swarmconfig import OPTIONS, settings_for


@events.init_command_line_parser.add_listener
def _options(parser, **_kwargs):
    for option in OPTIONS:
        parser.add_argument(option.flag, default=None, env_var=option.env_var,
                            help=option.help, type=option.type)


@events.test_start.add_listener
def _align_fault_clock(environment, **_kwargs):
    """Scenario time 0 is when the swarm starts: tell every server instance."""
    if isinstance(environment.runner, WorkerRunner):
        return
    origin = int(time.time() * 1000)
    for url in settings_for(environment).admin_urls:
        request = urllib.request.Request(f"{url}/sim/v1/clock", method="POST",
                                         data=json.dumps({"origin": origin}).encode())
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except OSError as exc:
            print(f"rtmsim: could not align the fault clock of {url}: {exc}")


@events.init.add_listener
def _check_hosts(environment, **_kwargs):
    """A bad host stops here, with one line, not a traceback per user."""
    settings = settings_for(environment)
    for url in settings.hosts or [settings.host]:
        try:
            parse_uri(url)
        except InvalidURI as exc:
            raise SystemExit(f"rtmsim: --host must be a ws:// or wss:// URL: {exc}") from None


@events.init.add_listener
def _event_logs_over_locust(environment, **_kwargs):
    """A worker on another machine ships its event log to the master's run directory."""
    connect_event_logs(environment)


@events.init.add_listener
def _quiet_start(environment, **_kwargs):
    """Keep the load process's own start-up out of what it measures.

    The event log's first flush is done now (`eventlog.warm`), and everything the
    process holds after its imports and init (Locust, gevent, pyarrow, pandas) is moved
    out of the collector's sight (`gc.freeze`): a full collection had to walk it, and
    took 60-96 ms of the loop four times in a 50 s quota-exhaustion run here, every
    user of the process held up meanwhile. Objects made from here on are collected as
    before."""
    warm()
    gc.collect()
    gc.freeze()


@events.init.add_listener
def _serve_metrics(environment, **_kwargs):
    """--rtmsim-metrics-port: only where Locust's stats are the aggregate (the master, or
    a standalone runner); a worker's are its share, already sent to the master."""
    port = getattr(environment.parsed_options, "rtmsim_metrics_port", None)
    if not port or isinstance(environment.runner, WorkerRunner):
        return
    if not 0 < port < 65536:
        raise SystemExit(f"rtmsim: --rtmsim-metrics-port must be 1..65535, got {port}")
    try:
        server = serve_metrics(environment, port)
    except OSError as exc:
        raise SystemExit(f"rtmsim: --rtmsim-metrics-port {port}: {exc.strerror}") from None
    print(f"rtmsim: swarm metrics on http://127.0.0.1:{port}/metrics", flush=True)

    @environment.events.quitting.add_listener
    def _stop_metrics(**_kw):
        server.shutdown()
        server.server_close()
