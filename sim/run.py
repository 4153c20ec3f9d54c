"""`rtmsim run`: one scenario end to end.

Starts a private redis-server when the scenario wants Redis and names none, the
server instance(s), then Locust headless; shows progress from `/sim/v1/stats`; stops
everything at the end or on Ctrl-C (partial results are kept); writes the run
directory (`sim.rundir`) and hands it to the analysis. Every child runs in its own
session, so a terminal's Ctrl-C reaches only us and we stop them in order.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from . import rundir
from .procstat import TreeCpu
from .scenario import Scenario, run_meta
from .thresholds import live_failures

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"rtmsim listening ws=(\S+) admin=(\S+)")
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 20
SAMPLE_S = 1.0


class RunError(RuntimeError):
    """The run could not start or failed; phrased for the user."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[str]
    log: TextIO
    lines: list[str] = field(default_factory=list)


@dataclass
class Instances:
    ws_urls: list[str]
    admin_urls: list[str]


def default_run_dir(scenario: Scenario, results: Path = ROOT / "results", *,
                    virtual: bool = False) -> Path:
    return timestamped_dir(results, f"{scenario.name}-virtual" if virtual else scenario.name)


def timestamped_dir(parent: Path, name: str) -> Path:
    """parent/<name>-<YYYYmmdd-HHMMSS>, or with -2, -3 ... when that exists already."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = parent / f"{name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = parent / f"{name}-{stamp}-{n}"
    return path


class Runner:
    def __init__(self, scenario: Scenario, run_dir: Path, *, out: TextIO = sys.stdout,
                 progress: bool = True, abort_on_fail: bool = False,
                 metrics_port: int = 0) -> None:
        self.scenario = scenario
        self.dir = run_dir
        self.out = out
        self.progress = progress
        self.abort_on_fail = abort_on_fail  # every threshold that can fail early may stop it
        self.aborted: list[str] = []  # the thresholds that stopped the run early
        self.metrics_port = metrics_port or _free_port()  # the swarm's /metrics
        self.children: list[Child] = []
        self.redis_url: str | None = None
        self.interrupted = False
        self.meta: dict[str, Any] = {}
        self.redis_cmd: list[str] = []
        self._blip_state: dict[tuple[float, float], str] = {}

    # -- children -------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], log_name: str,
               env: dict[str, str] | None = None) -> Child:
        log = open(self.dir / log_name, "a", encoding="utf-8")  # noqa: SIM115
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        child = Child(name, proc, log)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                child.lines.append(line)
                log.write(line)
                log.flush()

        threading.Thread(target=pump, daemon=True).start()
        self.children.append(child)
        return child

    def _stop(self, child: Child, sig: int = signal.SIGINT) -> int | None:
        if child.proc.poll() is None:
            child.proc.send_signal(sig)
            try:
                child.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        return child.proc.returncode

    def stop_all(self) -> None:
        for child in reversed(self.children):  # Locust first, Redis last
            self._stop(child)
            child.log.close()

    # -- steps -------------------------------------------------------------------------------

    def start_redis(self) -> None:
        srv = self.scenario.config.server
        if srv.backend != "redis":
            return
        if _names_redis_url(self.scenario.source):
            self.redis_url = srv.redis_url
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise RunError("the scenario uses the Redis backend but redis-server is not "
                           "installed: `apt-get install redis-server` (or set "
                           "[server] redis_url to a Redis you run)")
        self.redis_cmd = [binary, "--port", str(_free_port()), "--bind", "127.0.0.1",
                          "--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        port = self._start_redis_process()
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def _start_redis_process(self) -> int:
        port = int(self.redis_cmd[2])
        child = self._spawn("redis", self.redis_cmd, "redis.log")
        _wait_for_port(port, child, "redis-server")
        return port

    def _redis_blips(self, scenario_t: float) -> None:
        """Kill or restart the private redis-server as the scenario's blips say."""
        for at_s, down_s in self.scenario.redis_blips:
            key = (at_s, down_s)
            if key not in self._blip_state and scenario_t >= at_s:
                redis = next(c for c in reversed(self.children) if c.name == "redis")
                self._stop(redis, signal.SIGKILL)
                self._blip_state[key] = "down"
                self.meta.setdefault("redis_blips", []).append(
                    {"at_s": round(scenario_t, 3), "down_s": down_s})
                print(f"  redis-server killed at {scenario_t:.1f} s (blip)", file=self.out)
            elif self._blip_state.get(key) == "down" and scenario_t >= at_s + down_s:
                self._start_redis_process()
                self._blip_state[key] = "up"
                print(f"  redis-server back at {scenario_t:.1f} s", file=self.out)

    def start_server(self) -> Instances:
        n = self.scenario.config.server.instances
        cmd = [sys.executable, "-m", "sim.cli", "serve", "--config",
               str(self.dir / rundir.SCENARIO), "--port", "0", "--admin-port", "0",
               "--events", str(self.dir / rundir.SERVER_EVENTS)]
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        if n > 1:
            cmd += ["--instances", str(n)]
        child = self._spawn("server", cmd, rundir.SERVER_LOG)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            found = [READY.search(line) for line in child.lines]
            ready = [m for m in found if m]
            if len(ready) >= n:
                return Instances([m.group(1).removesuffix("/v1") for m in ready],
                                 [m.group(2) for m in ready])
            if child.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = "".join(child.lines[-5:]).strip() or "(no output)"
        raise RunError(f"the server did not start: {tail.splitlines()[-1]}")

    def write_swarm(self, inst: Instances) -> Path:
        swarm = self.scenario.swarm
        data = {"hosts": inst.ws_urls, "admin_urls": inst.admin_urls,
                "seed": self.scenario.config.server.seed, "model": swarm.model,
                "classes": swarm.classes,
                "shape_params": {"duration_s": swarm.duration_s, **swarm.shape_params}}
        path = self.dir / rundir.SWARM
        path.write_text(json.dumps(data, indent=2, sort_keys=True))
        return path

    def start_locust(self, inst: Instances, swarm_json: Path) -> Child:
        swarm = self.scenario.swarm
        cmd = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
               "--headless", "-u", str(swarm.users), "-r", str(swarm.spawn_rate),
               "--run-time", f"{swarm.duration_s:g}s", "--stop-timeout", "10",
               "--host", inst.ws_urls[0], "--csv", str(self.dir / rundir.LOCUST_PREFIX),
               "--csv-full-history", "--rtmsim-run-dir", str(self.dir),
               "--rtmsim-config", str(swarm_json), "--exit-code-on-error", "0",
               "--only-summary", "--loglevel", "WARNING",
               "--rtmsim-metrics-port", str(self.metrics_port)]
        if swarm.workers > 1:
            cmd += ["--processes", str(swarm.workers)]
        cmd += list(swarm.classes)
        env = {"RTMSIM_SWARM_CONFIG": str(swarm_json)}
        if swarm.shape:
            env["RTMSIM_SHAPE"] = swarm.shape
        (self.dir / rundir.LOCUST_DIR).mkdir(exist_ok=True)
        return self._spawn("locust", cmd, rundir.LOCUST_LOG, env)

    def watch(self, locust: Child, inst: Instances) -> None:
        """Sample server stats every second until Locust exits; show progress."""
        total = self.scenario.swarm.duration_s
        started = time.monotonic()
        timeline = open(self.dir / rundir.SERVER_TIMELINE, "a", encoding="utf-8")  # noqa: SIM115
        loadgen = TreeCpu(locust.proc.pid)
        last_published = 0
        last_t = time.monotonic()
        shown = 0.0
        try:
            while locust.proc.poll() is None:
                time.sleep(SAMPLE_S)
                now = time.time()
                samples = sample_stats(inst.admin_urls, timeline, now)
                loadgen.sample(time.monotonic())
                if self._abort_early(samples):
                    break
                origin = next((s.get("faults", {}).get("origin") for s in samples.values()),
                              None)
                if origin and self.scenario.redis_blips:
                    self._redis_blips(now - origin)
                if not self.progress or not samples:
                    continue
                mono = time.monotonic()
                elapsed = now - origin if origin else mono - started  # scenario time
                published = sum(s["totals"]["messages"]["published"] for s in samples.values())
                rate = (published - last_published) / max(1e-6, mono - last_t)
                last_published, last_t = published, mono
                if mono - shown >= 5 or self.out.isatty():
                    shown = mono
                    self._print_progress(elapsed, total, samples, rate)
        finally:
            timeline.close()
            self.meta["load_generator"] = {"processes": self.scenario.swarm.workers,
                                           **loadgen.summary()}
            if self.out.isatty():
                self.out.write("\n")

    def _abort_early(self, samples: dict[str, Any]) -> bool:
        """True (and why, in `aborted`) once a threshold can no longer pass."""
        failures = live_failures(self.scenario.thresholds, samples.values(),
                                 all_live=self.abort_on_fail)
        for failure in failures:
            print(f"rtmsim: threshold failed: {failure}: stopping the run early",
                  file=self.out, flush=True)
        self.aborted = failures
        return bool(failures)

    def _print_progress(self, elapsed: float, total: float, samples: dict[str, Any],
                        rate: float) -> None:
        conns = sum(s["totals"]["connections"]["now"] for s in samples.values())
        errors: dict[str, int] = {}
        for s in samples.values():
            for code, n in s["totals"]["errors"].items():
                errors[code] = errors.get(code, 0) + n
        top = ", ".join(f"{c} {n}" for c, n in sorted(errors.items(), key=lambda x: -x[1])[:4])
        line = (f"  {elapsed:5.0f}/{total:.0f} s  connections {conns:5d}  "
                f"msgs/s {rate:8.0f}  errors: {top or 'none'}")
        if self.out.isatty():
            self.out.write("\r" + line[:150].ljust(150))
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def collect(self, inst: Instances) -> None:
        final = {}
        for i, url in enumerate(inst.admin_urls):
            stats = _get_json(f"{url}/sim/v1/stats")
            if stats is not None:
                final[stats.get("instance") or f"i{i}"] = stats
        (self.dir / rundir.SERVER_STATS).write_text(json.dumps(final, indent=2, sort_keys=True))
        origins = [s.get("faults", {}).get("origin") for s in final.values()]
        self.meta["origin"] = next((o for o in origins if o), self.meta.get("started"))
        ready = self.meta.get("servers_ready")
        if ready is not None and self.meta["origin"] is not None:
            # what `rtmsim simulate --server-lead` takes to open billing periods as here
            self.meta["server_lead_s"] = round(self.meta["origin"] - ready, 3)

    def write_meta(self, status: str) -> None:
        self.meta.update(run_meta(self.scenario), status=status)
        (self.dir / rundir.RUN).write_text(json.dumps(self.meta, indent=2, sort_keys=True,
                                                      default=str))

    # -- the whole run ------------------------------------------------------------------------

    load_name = "the swarm"  # what `run` starts against the server, for messages

    def run(self) -> str:
        """Run the scenario; "complete", "aborted" (a threshold failed early) or
        "interrupted" (results kept either way).

        The skeleton every run shares: server side up, `drive` the load, then collect
        and stop everything whatever happened. Subclasses change `drive`/`stop_load`.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / rundir.SCENARIO).write_text(self.scenario.source, encoding="utf-8")
        self.meta["started"] = time.time()
        self.write_meta("running")
        status = "complete"
        inst: Instances | None = None
        try:
            self.start_redis()
            inst = self.start_server()
            self.meta["servers_ready"] = time.time()  # billing periods open about now
            self.meta.update(ws_urls=inst.ws_urls, admin_urls=inst.admin_urls,
                             redis_url=self.redis_url)
            self.drive(inst)
            if self.aborted:
                status = "aborted"
                self.meta["aborted_by"] = self.aborted
        except KeyboardInterrupt:
            status = "interrupted"
            self.interrupted = True
            print(f"\nrtmsim: interrupted: stopping {self.load_name} and the server, keeping "
                  "partial results", file=self.out, flush=True)
        finally:
            try:
                self.stop_load()
            finally:
                if inst is not None:
                    self.collect(inst)
                self.meta["ended"] = time.time()
                self.stop_all()
                self.write_meta(status)
        return status

    def drive(self, inst: Instances) -> None:
        """Run Locust against the instances until the scenario's end."""
        swarm_json = self.write_swarm(inst)
        print(f"rtmsim: running {self.scenario.name} for {self.scenario.swarm.duration_s:g} s"
              f" ({self.scenario.swarm.users} users) -> {self.dir}", file=self.out,
              flush=True)
        print(f"rtmsim: Prometheus metrics: swarm http://127.0.0.1:{self.metrics_port}/metrics"
              f", server {', '.join(f'{u}/metrics' for u in inst.admin_urls)}", file=self.out,
              flush=True)
        locust = self.start_locust(inst, swarm_json)
        self.watch(locust, inst)
        if not self.aborted and locust.proc.returncode not in (0, None):
            tail = "".join(locust.lines[-8:]).strip()
            raise RunError(f"locust exited with {locust.proc.returncode}: "
                           f"{tail.splitlines()[-1] if tail else 'no output'} "
                           f"(see {self.dir / rundir.LOCUST_LOG})")

    def stop_load(self) -> None:
        """Stop the load first (Locust writes its CSVs on SIGINT), before the server."""
        locust = next((c for c in self.children if c.name == "locust"), None)
        if locust is not None:
            self._stop(locust)

def sample_stats(admin_urls: list[str], timeline: TextIO, now: float) -> dict[str, Any]:
    """Every instance's /sim/v1/stats, appended to the timeline; {instance: stats}."""
    samples = {}
    for i, url in enumerate(admin_urls):
        stats = _get_json(f"{url}/sim/v1/stats")
        if stats is not None:
            name = stats.get("instance") or f"i{i}"
            samples[name] = stats
            timeline.write(json.dumps({"t": now, "instance": name, "stats": stats}) + "\n")
    timeline.flush()
    return samples


def _names_redis_url(source: str) -> bool:
    return re.search(r"(?m)^\s*redis_url\s*=", source) is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, child: Child, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if child.proc.poll() is not None:
            raise RunError(f"{what} exited at start: {''.join(child.lines[-3:]).strip()}")
        time.sleep(0.05)
    raise RunError(f"{what} did not open port {port}")


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None
