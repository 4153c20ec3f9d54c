"""`rtmsim serve` on the command line: bad input, the banner, and signals.

Bad input must cost the user one stderr line starting `rtmsim:` that names the key or
the problem, exit code 2, and no traceback. The config schema's messages are also
checked directly through `parse_config` (fast, no processes).
"""

from __future__ import annotations

import json
import math
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from serverproc import READY, ROOT, start_server
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from server.config import ConfigError, default_config, load_config, parse_config

RUN_TIMEOUT_S = 30
RECV_TIMEOUT_S = 5
MAX_LINES = 200
PERIOD_MINUS_5 = """
[[apps]]
id = "a"
[apps.plan]
period_seconds = -5
[[apps.keys]]
id = "pk_x"
"""


@dataclass
class Run:
    returncode: int | None  # None: the server started (and was killed)
    stdout: str
    stderr: str

    @property
    def started(self) -> bool:
        return self.returncode is None


def run_serve(*args: str, command: list[str] | None = None) -> Run:
    """Run `rtmsim serve ARGS` until it exits or announces that it listens.

    A server that starts is killed at once: for these tests, starting is the failure.
    A watchdog kills anything still running after RUN_TIMEOUT_S.
    """
    cmd = (command or [sys.executable, "-m", "sim.cli"]) + ["serve", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    watchdog = threading.Timer(RUN_TIMEOUT_S, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        out, started = [], False
        for _ in range(MAX_LINES):
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if READY.search(line):
                started = True
                proc.kill()
                break
        rest, err = proc.communicate()
    finally:
        watchdog.cancel()
    return Run(None if started else proc.returncode, "".join(out) + rest, err)


def assert_one_line_error(run: Run) -> str:
    """Exit 2, nothing on stdout, one stderr line, no traceback; return that line."""
    assert not run.started, f"the server started:\n{run.stdout}"
    assert "Traceback" not in run.stderr + run.stdout
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


def write(tmp_path: Path, text: str, name: str = "server.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- bad config files ----------------------------------------------------------------------

def test_nonexistent_config(tmp_path):
    missing = tmp_path / "nope.toml"
    line = assert_one_line_error(run_serve("--config", str(missing)))
    assert line == f"rtmsim: {missing}: no such file"


def test_invalid_toml(tmp_path):
    path = write(tmp_path, '[server]\nport = = 5\n')
    line = assert_one_line_error(run_serve("--config", str(path)))
    assert line.startswith(f"rtmsim: {path}: invalid TOML: ")
    assert "line 2" in line


def test_config_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[server]\nhost = "caf\xe9"\n')
    line = assert_one_line_error(run_serve("--config", str(path)))
    assert line.startswith(f"rtmsim: {path}: cannot read: ")


def test_config_that_is_a_directory(tmp_path):
    line = assert_one_line_error(run_serve("--config", str(tmp_path)))
    assert line.startswith(f"rtmsim: {tmp_path}: cannot read: ")


@pytest.mark.parametrize(("text", "expected"), [
    (PERIOD_MINUS_5, "rtmsim: apps[0].plan.period_seconds: must be > 0, got -5"),
    ("[server]\nportt = 5\n", "rtmsim: server.portt: unknown key"),
    ('[[apps]]\nid = "a"\ncolour = "red"\n[[apps.keys]]\nid = "pk_x"\n',
     "rtmsim: apps[0].colour: unknown key"),
    ('[[apps]]\nid = "a"\n[[apps.keys]]\nid = "pk_x"\n'
     '[[apps]]\nid = "b"\n[[apps.keys]]\nid = "pk_x"\n',
     "rtmsim: apps[1].keys[0].id: duplicate key id 'pk_x'"),
    ('[server]\nport = "8765"\n', "rtmsim: server.port: must be a whole number, got '8765'"),
], ids=["negative-period", "unknown-key", "unknown-app-key", "duplicate-key-id", "port-type"])
def test_bad_config_value(tmp_path, text, expected):
    """A few representatives end to end; parse_config's messages are pinned below."""
    path = write(tmp_path, text)
    assert assert_one_line_error(run_serve("--config", str(path))) == expected


def test_config_port_above_65535(tmp_path):
    # 65536 wraps to 0 (any free port), so the buggy server binds nothing fixed.
    path = write(tmp_path, "[server]\nport = 65536\nadmin_port = 65536\n")
    line = assert_one_line_error(run_serve("--config", str(path)))
    assert line.startswith("rtmsim: server.port: ")


# -- bad flags ---------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "needle"), [
    (["--port", "70000"], "--port: port must be 0..65535, got 70000"),
    (["--port", "abc"], "--port: not a port number: 'abc'"),
    (["--admin-port", "65536"], "--admin-port: port must be 0..65535, got 65536"),
    (["--seed", "x"], "--seed: not a whole number: 'x'"),
])
def test_bad_flag(args, needle):
    line = assert_one_line_error(run_serve(*args))
    assert line.startswith("rtmsim")
    assert needle in line


def test_bad_flag_line_starts_with_rtmsim_colon():
    line = assert_one_line_error(run_serve("--port", "70000"))
    assert line.startswith("rtmsim: ")


def test_unknown_flag():
    assert assert_one_line_error(run_serve("--bogus")) == (
        "rtmsim: unrecognized arguments: --bogus")


def test_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = assert_one_line_error(run_serve("--port", str(port), "--admin-port", "0"))
    assert line.startswith("rtmsim: cannot listen on 127.0.0.1: ")
    assert "in use" in line.lower()


def test_admin_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = assert_one_line_error(run_serve("--port", "0", "--admin-port", str(port)))
    assert line.startswith("rtmsim: cannot listen on 127.0.0.1: ")
    assert "in use" in line.lower()


def test_console_script_reports_the_same_line(tmp_path):
    script = Path(sys.executable).with_name("rtmsim")
    if not script.exists():
        pytest.skip("no rtmsim console script next to this interpreter")
    path = write(tmp_path, PERIOD_MINUS_5)
    run = run_serve("--config", str(path), command=[str(script)])
    assert assert_one_line_error(run) == (
        "rtmsim: apps[0].plan.period_seconds: must be > 0, got -5")


def test_debug_shows_the_traceback(tmp_path):
    path = write(tmp_path, PERIOD_MINUS_5)
    run = run_serve("--config", str(path), command=[sys.executable, "-m", "sim.cli",
                                                    "--debug"])
    assert run.returncode == 1
    assert "Traceback" in run.stderr
    assert run.stderr.splitlines()[-1] == (
        "server.schema.ConfigError: apps[0].plan.period_seconds: must be > 0, got -5")


# -- the banner and signals ---------------------------------------------------------------

class LiveServe:
    """A running `rtmsim serve` whose stdout lines arrive on a queue."""

    def __init__(self, *args: str) -> None:
        cmd = [sys.executable, "-m", "sim.cli", "serve", "--port", "0", "--admin-port", "0",
               *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def read_until(self, needle: str) -> list[str]:
        """Lines up to and including the first that contains `needle`."""
        seen: list[str] = []
        for _ in range(MAX_LINES):
            line = self.lines.get(timeout=RUN_TIMEOUT_S)
            if line is None:
                raise AssertionError(f"exited before {needle!r}:\n" + "\n".join(seen))
            seen.append(line)
            if needle in line:
                return seen
        raise AssertionError(f"no {needle!r} in {MAX_LINES} lines")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(RUN_TIMEOUT_S)


def test_banner_shows_urls_and_demo_credentials():
    serve = LiveServe()
    try:
        lines = serve.read_until("Ctrl-C stops")
        m = READY.search(lines[0])
        assert m, lines
        ws_url, admin_url = m.group(1), m.group(2)
        assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/v1", ws_url)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", admin_url)
        text = "\n".join(lines)
        assert f"{ws_url}?key=<publishable key>" in text
        assert f"{admin_url}/v1/" in text
        assert f"{admin_url}/sim/v1/stats" in text
        assert re.search(r"publishable\s+pk_live_demo\b", text)
        assert re.search(r"publishable\s+pk_live_readonly\b", text)
        assert re.search(r"secret\s+sk_id_demo:sk_secret_demo\b", text)
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(RUN_TIMEOUT_S) == 0
    finally:
        serve.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_sends_going_away_then_1001_and_exits_0(tmp_path, sig):
    server = start_server(tmp=tmp_path)
    try:
        with connect(server.url(key="pk_live_demo"), open_timeout=RECV_TIMEOUT_S) as a, \
                connect(server.url(key="pk_live_demo"), open_timeout=RECV_TIMEOUT_S) as b:
            for ws in (a, b):
                assert json.loads(ws.recv(timeout=RECV_TIMEOUT_S))["type"] == "welcome"
            a.send('{"type":"subscribe","channel":"room","requestId":"s"}')
            assert json.loads(a.recv(timeout=RECV_TIMEOUT_S)) == {"type": "ack",
                                                                   "requestId": "s"}
            assert json.loads(a.recv(timeout=RECV_TIMEOUT_S))["type"] == "presence"
            server.proc.send_signal(sig)
            for ws in (a, b):
                assert json.loads(ws.recv(timeout=RECV_TIMEOUT_S)) == {
                    "type": "going_away", "retryAfterMs": 1000}
                with pytest.raises(ConnectionClosed) as info:
                    ws.recv(timeout=RECV_TIMEOUT_S)
                assert info.value.rcvd is not None
                assert info.value.rcvd.code == 1001
        assert server.proc.wait(RUN_TIMEOUT_S) == 0
    finally:
        server.stop()
    output = "".join(server.output)
    assert "rtmsim: stopping: going_away + 1001 to every connection" in output
    assert "Traceback" not in output


def test_signal_with_no_connections_exits_0(tmp_path):
    server = start_server(tmp=tmp_path)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(RUN_TIMEOUT_S) == 0


# -- parse_config messages (no processes) ----------------------------------------------------

def _app(plan: dict[str, Any] | None = None, key: dict[str, Any] | None = None,
         **fields: Any) -> dict[str, Any]:
    app: dict[str, Any] = {"id": "a", "keys": [key or {"id": "pk_x"}], **fields}
    if plan is not None:
        app["plan"] = plan
    return app


@pytest.mark.parametrize(("data", "message"), [
    ({"server": []}, "server: must be a table, got list"),
    ({"server": {"port": "x"}}, "server.port: must be a whole number, got 'x'"),
    ({"server": {"port": 1.5}}, "server.port: must be a whole number, got 1.5"),
    ({"server": {"port": True}}, "server.port: must be a whole number, got True"),
    ({"server": {"admin_port": -2}}, "server.admin_port: must be >= 0, got -2"),
    ({"server": {"host": ""}}, "server.host: must be a non-empty string, got ''"),
    ({"server": {"backend": "mongo"}},
     "server.backend: must be one of memory, redis, got 'mongo'"),
    ({"server": {"seed": -1}}, "server.seed: must be >= 0, got -1"),
    ({"server": {"sim_token": ""}}, "server.sim_token: must be a non-empty string, got ''"),
    ({"server": {"close_on_unauthorized": "yes"}},
     "server.close_on_unauthorized: must be true or false, got 'yes'"),
    ({"server": {"colour": 1}}, "server.colour: unknown key"),
    ({"limits": {"rate_per_second": 0}}, "limits.rate_per_second: must be > 0, got 0"),
    ({"limits": {"burst": 0.5}}, "limits.burst: must be >= 1, got 0.5"),
    ({"limits": {"max_subscriptions": 0}}, "limits.max_subscriptions: must be >= 1, got 0"),
    ({"limits": {"max_frame_bytes": 63}}, "limits.max_frame_bytes: must be >= 64, got 63"),
    ({"limits": {"max_outbound_bytes": 1000}},
     "limits.max_outbound_bytes: must be >= 1024, got 1000"),
    ({"limits": {"max_frame_bytes": 1e5}},
     "limits.max_frame_bytes: must be a whole number, got 100000.0"),
    ({"apps": []}, "apps: must be a non-empty array of tables ([[apps]])"),
    ({"apps": {"id": "a"}}, "apps: must be a non-empty array of tables ([[apps]])"),
    ({"apps": ["a"]}, "apps[0]: must be a table, got str"),
    ({"apps": [{"keys": [{"id": "pk_x"}]}]}, "apps[0].id: is required"),
    ({"apps": [{"id": "a"}]},
     "apps[0].keys: must be a non-empty array of tables ([[apps.keys]])"),
    ({"apps": [_app(suspended="no")]}, "apps[0].suspended: must be true or false, got 'no'"),
    ({"apps": [_app(), _app(plan={"period_seconds": -5}, id="b")]},
     "apps[1].plan.period_seconds: must be > 0, got -5"),
    ({"apps": [_app(plan={"period_seconds": 0})]},
     "apps[0].plan.period_seconds: must be > 0, got 0"),
    ({"apps": [_app(plan={"max_concurrent_connections": -1})]},
     "apps[0].plan.max_concurrent_connections: must be >= 0, got -1"),
    ({"apps": [_app(plan={"max_messages_per_period": 2.5})]},
     "apps[0].plan.max_messages_per_period: must be a whole number, got 2.5"),
    ({"apps": [_app(plan={"overages_enabled": 1})]},
     "apps[0].plan.overages_enabled: must be true or false, got 1"),
    ({"apps": [_app(plan={"balance": "10"})]},
     "apps[0].plan.balance: must be a number, got '10'"),
    ({"apps": [_app(plan={"overage_price_per_message": -0.1})]},
     "apps[0].plan.overage_price_per_message: must be >= 0, got -0.1"),
    ({"apps": [_app(plan={"auto_recharge": 0})]},
     "apps[0].plan.auto_recharge: must be an amount > 0 or false, got 0"),
    ({"apps": [_app(plan={"overage_price_per_message": 1e-10})]},
     "apps[0].plan.overage_price_per_message: must be 0 or at least 1e-09 (the ledger "
     "counts nano-units of money), got 1e-10"),
    ({"apps": [_app(plan={"balance": 1e7})]},
     "apps[0].plan.balance: must be at most 9,000,000, got 10000000.0"),
    ({"apps": [_app(plan={"auto_recharge": True})]},
     "apps[0].plan.auto_recharge: must be an amount > 0 or false, got True"),
    ({"apps": [_app(plan={"colour": "red"})]}, "apps[0].plan.colour: unknown key"),
    ({"apps": [_app(key={"id": "key1"})]},
     "apps[0].keys[0].id: must start with pk_ (publishable) or sk_id_ (secret), got 'key1'"),
    ({"apps": [_app(key={"id": "sk_id_x"})]},
     "apps[0].keys[0].secret: is required for a secret key (sk_id_x)"),
    ({"apps": [_app(key={"id": "pk_x", "secret": "s"})]},
     "apps[0].keys[0].secret: a publishable key (pk_x) has no secret"),
    ({"apps": [_app(key={"id": "pk_x", "actions": ["fly"]})]},
     "apps[0].keys[0].actions: 'fly' is not one of subscribe, publish, presence, send"),
    ({"apps": [_app(key={"id": "pk_x", "channel_patterns": "a/*"})]},
     "apps[0].keys[0].channel_patterns: must be a list of non-empty strings, got 'a/*'"),
    ({"apps": [_app(key={"id": "pk_x", "channel_patterns": [""]})]},
     "apps[0].keys[0].channel_patterns: must be a list of non-empty strings, got ['']"),
    ({"apps": [_app(key={"id": "pk_x", "colour": 1})]},
     "apps[0].keys[0].colour: unknown key"),
    ({"apps": [_app(), _app()]}, "apps[1].id: duplicate app id 'a'"),
    ({"apps": [_app(), _app(id="b")]}, "apps[1].keys[0].id: duplicate key id 'pk_x'"),
    ({"bogus": {}}, "bogus: unknown key"),
])
def test_parse_config_error_names_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value) == message


@pytest.mark.parametrize("key", ["port", "admin_port"])
def test_parse_config_port_above_65535(key):
    with pytest.raises(ConfigError, match=rf"^server\.{key}: "):
        parse_config({"server": {key: 70000}})


@pytest.mark.parametrize(("data", "key"), [
    ({"apps": [_app(plan={"period_seconds": math.nan})]}, "apps[0].plan.period_seconds"),
    ({"apps": [_app(plan={"period_seconds": math.inf})]}, "apps[0].plan.period_seconds"),
    ({"apps": [_app(plan={"balance": math.nan})]}, "apps[0].plan.balance"),
    ({"limits": {"rate_per_second": math.nan}}, "limits.rate_per_second"),
    ({"limits": {"burst": math.inf}}, "limits.burst"),
])
def test_parse_config_rejects_non_finite_numbers(data, key):
    with pytest.raises(ConfigError, match="^" + re.escape(key) + ": "):
        parse_config(data)


def test_parse_config_without_apps_is_the_demo():
    config = parse_config({})
    assert config.apps == default_config().apps
    assert [k.id for k in config.apps[0].keys] == ["pk_live_demo", "pk_live_readonly",
                                                   "sk_id_demo"]


def test_parse_config_accepts_extension_sections():
    config = parse_config({"scenario": {"name": "x"}, "swarm": {"n": 1}})
    assert config.extra == {"scenario": {"name": "x"}, "swarm": {"n": 1}}


def test_load_config_names_the_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml")
    assert str(info.value) == f"{tmp_path / 'missing.toml'}: no such file"
    bad = write(tmp_path, "x = \n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value).startswith(f"{bad}: invalid TOML: ")
    assert "line 1" in str(info.value)
