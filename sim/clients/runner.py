"""`rtmsim clients`: run any client program against the simulated service, then grade it.

Starts the server with the scenario's config and fault schedule (as `rtmsim run` does,
through the same `Runner` steps), a small token endpoint, then N copies of a command,
each with:

    RTMSIM_URL           the WebSocket origin (ws://127.0.0.1:PORT; SDKs append /v1)
    RTMSIM_TOKEN         a JWT for peerId `client-<index>`: every process has its own
                         peerId, which is how the grading ties server events to processes
    RTMSIM_TOKEN_URL     GET or POST it for a fresh token for the same peerId:
                         {"token": "...", "expiresAt": unix_s}; a client that refreshes
                         after 4002 calls it (every call is logged for the grading)
    RTMSIM_KEY           a publishable key of the same app, for key-only clients; their
                         peerIds are random per connection, so reconnect rules cannot
                         tie their connections together (graded per connection only)
    RTMSIM_CHANNEL       the channel to subscribe and publish on
    RTMSIM_CLIENT_INDEX  0 .. N-1
    RTMSIM_CLIENT_COUNT  N

Each client's stdout and stderr go to `clients/client-<index>.out|.err` in the run
directory. At the end (or on Ctrl-C) every client's process group gets SIGTERM, then
SIGKILL after a grace period, so a shell wrapper's children go too. The fault clock's
origin (scenario time 0) is set when the clients start.

The scenario may carry a `[clients]` table (count, duration_s, channel, token_ttl_s,
command); command-line flags override it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from server.config import ConfigError
from server.schema import Table

from .. import rundir
from ..report.junit import rule_cases, write_junit
from ..run import ROOT, Instances, RunError, Runner, default_run_dir, sample_stats
from ..scenario import Scenario, Swarm, parse_scenario
from .grading import grade_run, print_grades
from .report import write_client_report

STOP_GRACE_S = 5.0
CLIENTS_TABLE = "clients"


@dataclass(frozen=True)
class ClientsSettings:
    command: str = ""
    count: int = 5
    duration_s: float = 60.0
    channel: str = "room/clients"
    token_ttl_s: int = 3600  # short values make every client meet 4002

    def with_overrides(self, **values: Any) -> ClientsSettings:
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})


def peer_of(index: int) -> str:
    """The peerId every token of client `index` carries."""
    return f"client-{index}"


def index_of(peer: str) -> int | None:
    m = re.fullmatch(r"client-(\d+)", peer or "")
    return int(m.group(1)) if m else None


# -- the scenario -----------------------------------------------------------------------

def load_clients_scenario(path: str | Path) -> tuple[Scenario, ClientsSettings]:
    """A scenario file for `rtmsim clients`: any scenario, plus an optional [clients].

    The server sections are validated by `server.config` through `parse_scenario`; a
    [swarm] is not needed (it is ignored when present). The [clients] table is taken
    out of the text the server reads.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    settings = parse_clients(data.pop(CLIENTS_TABLE, {}))
    # parse_scenario wants a swarm; `rtmsim clients` has none of its own.
    data["swarm"] = {"classes": {"Subscriber": {}}}
    scenario = parse_scenario(data, strip_table(text, CLIENTS_TABLE), default_name=p.stem,
                              path=p)
    swarm = Swarm(users=settings.count, spawn_rate=float(settings.count),
                  duration_s=settings.duration_s, classes={})
    return dataclasses.replace(scenario, swarm=swarm), settings


def parse_clients(table: object) -> ClientsSettings:
    t = Table(table, "clients")
    d = ClientsSettings()
    command = t.get("command", d.command)
    if not isinstance(command, str):
        raise t.fail("command", "must be a string")
    channel = t.get("channel", d.channel)
    if not isinstance(channel, str) or not channel:
        raise t.fail("channel", f"must be a channel name, got {channel!r}")
    whole = {key: t.get(key, getattr(d, key)) for key in ("count", "token_ttl_s")}
    for key, v in whole.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise t.fail(key, f"must be a whole number >= 1, got {v!r}")
    duration = t.get("duration_s", d.duration_s)
    if isinstance(duration, bool) or not isinstance(duration, int | float) or not (
            math.isfinite(duration) and duration > 0):
        raise t.fail("duration_s", f"must be a number > 0, got {duration!r}")
    known = ", ".join(sorted(f.name for f in dataclasses.fields(ClientsSettings)))
    t.done(f"unknown key (one of {known})")
    return ClientsSettings(command=command, count=whole["count"], duration_s=duration,
                           channel=channel, token_ttl_s=whole["token_ttl_s"])


def strip_table(text: str, name: str) -> str:
    """TOML text without the flat table `[name]` (the server does not know it)."""
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        header = re.match(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?", line)
        if header:
            skipping = header.group(1) == name or header.group(1).startswith(name + ".")
        if not skipping:
            out.append(line)
    return "".join(out)


# -- tokens ----------------------------------------------------------------------------

class TokenDesk:
    """Mints tokens for `client-<i>` through the server's REST API; logs every fetch."""

    def __init__(self, admin_url: str, secret: str, ttl_s: int, log: Path) -> None:
        self.admin_url = admin_url
        self.secret = secret
        self.ttl_s = ttl_s
        self._log = log.open("a", encoding="utf-8")
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    def mint(self, index: int, *, initial: bool = False) -> dict[str, Any]:
        body = json.dumps({"peerId": peer_of(index), "expiresInSec": self.ttl_s}).encode()
        req = urllib.request.Request(f"{self.admin_url}/v1/tokens", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {self.secret}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            out = json.loads(resp.read())
        with self._lock:
            self._log.write(json.dumps({"t": time.time(), "client": index,
                                        "peer": peer_of(index), "expiresAt": out["expiresAt"],
                                        "initial": initial}) + "\n")
            self._log.flush()
        return out

    def start(self) -> str:
        desk = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                try:
                    index = int(query["client"][0])
                    if index < 0:
                        raise ValueError
                except (KeyError, ValueError, IndexError):
                    self._reply(400, {"error": "invalid_request",
                                      "message": "?client=<index> is required"})
                    return
                try:
                    self._reply(200, desk.mint(index))
                except (OSError, ValueError) as exc:
                    self._reply(502, {"error": "mint_failed", "message": str(exc)})

            do_GET = do_POST = _answer

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._log.close()


# -- client processes ---------------------------------------------------------------------

@dataclass
class ClientProc:
    index: int
    proc: subprocess.Popen[bytes]
    started: float
    files: list[TextIO] = field(default_factory=list)
    ended: float | None = None


def _stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the client's process group, SIGKILL what is left after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; its group may not be (a shell's children).
        if sig == signal.SIGTERM and group_alive(proc.pid):
            deadline = time.monotonic() + grace_s
            while group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if group_alive(proc.pid):
                continue
        return


def group_alive(pgid: int) -> bool:
    """True if any process of the group still runs (zombies waiting for init don't)."""
    proc = Path("/proc")
    if proc.is_dir():
        for stat in proc.glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ClientsRunner(Runner):
    """The server side of `Runner` (redis, server, stats, stop), with client processes."""

    def __init__(self, scenario: Scenario, settings: ClientsSettings, run_dir: Path, *,
                 out: TextIO = sys.stdout, progress: bool = True) -> None:
        super().__init__(scenario, run_dir, out=out, progress=progress)
        self.settings = settings
        self.clients: list[ClientProc] = []
        self.desk: TokenDesk | None = None
        self.load_name = "the clients"
        self.meta["clients"] = dataclasses.asdict(settings)

    def credentials(self) -> tuple[str, str]:
        """(publishable key, "sk_id:sk_secret") of the first app that has both."""
        for app in self.scenario.config.apps:
            public = next((k.id for k in app.keys if k.secret is None), None)
            secret = next((f"{k.id}:{k.secret}" for k in app.keys if k.secret is not None),
                          None)
            if public and secret:
                return public, secret
        raise RunError("the scenario's apps need a publishable key and a secret key in the "
                       "same app (tokens for client-<i> are minted with the secret key)")

    def start_clients(self, inst: Instances) -> None:
        key, secret = self.credentials()
        self.desk = TokenDesk(inst.admin_urls[0], secret, self.settings.token_ttl_s,
                              self.dir / rundir.CLIENT_TOKENS)
        token_url = self.desk.start()
        (self.dir / rundir.CLIENTS_DIR).mkdir(exist_ok=True)
        ws_origin = inst.ws_urls[0]
        _set_origin(inst.admin_urls)
        self.meta["clients_origin"] = time.time()
        for i in range(self.settings.count):
            try:
                token = self.desk.mint(i, initial=True)["token"]
            except (OSError, ValueError) as exc:
                raise RunError(f"could not mint a token for {peer_of(i)}: {exc}") from None
            env = {**os.environ, "PYTHONUNBUFFERED": "1",
                   "RTMSIM_URL": ws_origin, "RTMSIM_KEY": key, "RTMSIM_TOKEN": token,
                   "RTMSIM_TOKEN_URL": f"{token_url}?client={i}",
                   "RTMSIM_CHANNEL": self.settings.channel,
                   "RTMSIM_CLIENT_INDEX": str(i),
                   "RTMSIM_CLIENT_COUNT": str(self.settings.count)}
            stdout = open(self.dir / rundir.client_log(i, "out"), "w")  # noqa: SIM115
            stderr = open(self.dir / rundir.client_log(i, "err"), "w")  # noqa: SIM115
            proc = subprocess.Popen(self.settings.command, shell=True, cwd=ROOT, env=env,
                                    stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            self.clients.append(ClientProc(i, proc, time.time(), [stdout, stderr]))

    def watch_clients(self, inst: Instances) -> None:
        """Sample server stats every second until the duration is up (or all exited)."""
        deadline = time.monotonic() + self.settings.duration_s
        timeline = open(self.dir / rundir.SERVER_TIMELINE, "a", encoding="utf-8")  # noqa: SIM115
        shown = 0.0
        last_published, last_t = 0, time.monotonic()
        try:
            while time.monotonic() < deadline:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                now = time.time()
                for c in self.clients:
                    if c.ended is None and c.proc.poll() is not None:
                        c.ended = now
                        print(f"  client {c.index} exited with {c.proc.returncode}",
                              file=self.out, flush=True)
                samples = sample_stats(inst.admin_urls, timeline, now)
                origin = self.meta.get("clients_origin", now)
                if self.scenario.redis_blips:
                    self._redis_blips(now - origin)
                if all(c.ended is not None for c in self.clients):
                    print("  every client has exited", file=self.out, flush=True)
                    break
                mono = time.monotonic()
                if self.progress and samples and (mono - shown >= 5 or self.out.isatty()):
                    shown = mono
                    published = sum(s["totals"]["messages"]["published"]
                                    for s in samples.values())
                    rate = (published - last_published) / max(1e-6, mono - last_t)
                    last_published, last_t = published, mono
                    self._print_progress(now - origin, self.settings.duration_s, samples, rate)
        finally:
            timeline.close()
            if self.out.isatty():
                self.out.write("\n")

    def stop_clients(self) -> None:
        """Every client's process group, concurrently: SIGTERM, then SIGKILL."""
        threads = [threading.Thread(target=_stop_group, args=(c.proc, STOP_GRACE_S))
                   for c in self.clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        now = time.time()
        for c in self.clients:
            if c.ended is None:
                c.ended = now
            for f in c.files:
                f.close()
        procs = [{"index": c.index, "peer": peer_of(c.index), "pid": c.proc.pid,
                  "started": c.started, "ended": c.ended, "rc": c.proc.returncode}
                 for c in self.clients]
        (self.dir / rundir.CLIENT_PROCS).write_text(json.dumps(procs, indent=2))

    def drive(self, inst: Instances) -> None:
        s = self.settings
        print(f"rtmsim: running {s.count} x `{s.command}` against {self.scenario.name} "
              f"for {s.duration_s:g} s -> {self.dir}", file=self.out, flush=True)
        self.start_clients(inst)
        self.watch_clients(inst)

    def stop_load(self) -> None:
        try:
            self.stop_clients()
        finally:
            if self.desk is not None:
                self.desk.stop()

def _set_origin(admin_urls: list[str]) -> None:
    """Scenario time 0 is now, for every instance's fault schedule."""
    origin = int(time.time() * 1000)
    for url in admin_urls:
        req = urllib.request.Request(f"{url}/sim/v1/clock", method="POST",
                                     data=json.dumps({"origin": origin}).encode())
        try:
            urllib.request.urlopen(req, timeout=5).close()
        except OSError as exc:
            raise RunError(f"could not set the fault clock of {url}: {exc}") from None


# -- the command -------------------------------------------------------------------------

def run_clients(scenario_path: str, *, command: str | None = None, count: int | None = None,
                duration_s: float | None = None, out_dir: str | None = None,
                seed: int | None = None, progress: bool = True,
                out: TextIO = sys.stdout, junit: str | None = None) -> int:
    """`rtmsim clients`: run, grade, report. Exit 0 when every rule passes or warns,
    1 when a rule fails, 130 when interrupted."""
    scenario, settings = load_clients_scenario(scenario_path)
    settings = settings.with_overrides(command=command, count=count, duration_s=duration_s)
    if not settings.command.strip():
        raise ConfigError("no client command: pass --cmd \"COMMAND\" (or [clients] command)")
    if settings.count < 1:
        raise ConfigError(f"--count must be >= 1, got {settings.count}")
    if settings.duration_s <= 0:
        raise ConfigError(f"--duration must be > 0, got {settings.duration_s:g}")
    scenario = dataclasses.replace(
        scenario.with_overrides(seed=seed, duration_s=settings.duration_s),
        swarm=dataclasses.replace(scenario.swarm, users=settings.count,
                                  duration_s=settings.duration_s))
    run_dir = Path(out_dir) if out_dir else default_run_dir(
        dataclasses.replace(scenario, name=f"clients-{scenario.name}"))
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir}: exists and is not empty; choose another --out")
    status = ClientsRunner(scenario, settings, run_dir, out=out, progress=progress).run()
    grades = grade_run(run_dir)
    (run_dir / rundir.CLIENTS_JSON).write_text(json.dumps(grades, indent=2, sort_keys=True))
    report = write_client_report(run_dir, grades)
    print_grades(grades, out)
    junit_path = write_junit(junit or run_dir / rundir.JUNIT, f"rtmsim.clients.{scenario.name}",
                             rule_cases(grades))
    print(f"rtmsim: {run_dir / rundir.CLIENTS_JSON}\nrtmsim: {report}\nrtmsim: {junit_path}",
          file=out, flush=True)
    if status != "complete":
        print(f"rtmsim: the run was {status}; results so far are in {run_dir}", file=out)
        return 130
    return 1 if grades["grade"] == "fail" else 0
