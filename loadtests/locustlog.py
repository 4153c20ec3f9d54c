"""One raw event log per Locust process, flushed by a greenlet, closed at quit.

Locust workers (`--processes N`, or master/worker on several machines) each write
`client-events-<tag>/` (Parquet batches) into the same run directory; the analysis
reads them all.

A worker given no run directory of its own (`--rtmsim-run-dir`) while its master has
one ships its batches instead, over Locust's own worker-to-master messages, and the
master writes them into its run directory: a run on several machines needs nothing
between them but Locust's connection. Workers with a run directory (`--processes N`,
the harness, a shared mount) write into it themselves, as before. The master says that it
collects in an attribute of its parsed options, which Locust forwards to every worker
in the spawn message, so a worker knows before its first user starts.

The last batch: Locust's master, at the end of a headless run, tells its workers to
quit and stops reading them half a second later, while a worker is still stopping its
users (up to --stop-timeout) and logging their last replies. So at test stop, before
that, the master asks each shipping worker still running users to stop them and ship
what is left (`FINISH`), and waits for every answer (`FINISHED`), which a worker sends
after its last batch on the same ordered connection. (When the master stops a test
without quitting, the web UI's Stop, its workers have stopped, and sent their last
batch before saying so, by the time its test_stop fires: there is no one to ask.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import gevent.event
from locust.runners import MasterRunner, WorkerRunner

from .eventlog import FLUSH_S, EventLog, ShippedLogs, log_dir
from .swarmconfig import settings_for

FINISH_MARGIN_S = 30.0  # beyond --stop-timeout, for a worker's last stop and batch
# Locust message types (worker -> master unless said otherwise).
OPENED = "rtmsim_events_open"  # {"tag"}: this worker ships its log
BATCH = "rtmsim_events_batch"  # {"tag", "seq", "parquet"}: one batch's Parquet bytes
FINISH = "rtmsim_events_finish"  # master -> worker {"round"}: stop users, ship the rest
FINISHED = "rtmsim_events_finished"  # {"round"}: every batch is sent
# Set on the master's parsed options when it collects; Locust forwards it to workers.
COLLECTS = "rtmsim_master_collects_events"

_LOG: EventLog | None = None


def process_event_log(environment: Any) -> EventLog | None:
    """This process's event log (created on first use), or None without a run dir (of
    its own, or, for a worker, its master's)."""
    global _LOG
    if _LOG is not None:
        return _LOG
    settings = settings_for(environment)
    if settings.run_dir:
        _LOG = EventLog(log_dir(settings.run_dir, settings.process_tag))
    elif ships_to_master(environment):
        environment.runner.send_message(OPENED, {"tag": settings.process_tag})
        _LOG = EventLog(send=_shipper(environment.runner, settings.process_tag))
    else:
        return None
    gevent.spawn(_flush_forever, _LOG)
    if environment is not None:
        # Fired in reverse order: before the worker's own "quit" message to the master.
        environment.events.quitting.add_listener(lambda **_: close_event_log())
        environment.events.test_stop.add_listener(lambda **_: _LOG and _LOG.flush())
    return _LOG


def ships_to_master(environment: Any) -> bool:
    """A worker whose master collects event logs (known from the spawn message on)."""
    return (environment is not None and isinstance(environment.runner, WorkerRunner)
            and bool(getattr(environment.parsed_options, COLLECTS, False)))


def close_event_log() -> None:
    global _LOG
    if _LOG is not None:
        _LOG.close()
        _LOG = None


def connect_event_logs(environment: Any) -> None:
    """At init: a master with a run directory collects shipped logs; a worker answers
    the master's last call. (A worker's own settings are read here, before the master's
    forwarded options overwrite its parsed options at spawn.)"""
    runner = environment.runner
    settings = settings_for(environment)
    if isinstance(runner, WorkerRunner):
        runner.register_message(FINISH, _finish)
    elif isinstance(runner, MasterRunner) and settings.run_dir \
            and environment.parsed_options is not None:
        collector = Collector(Path(settings.run_dir))
        setattr(environment.parsed_options, COLLECTS, True)
        runner.register_message(OPENED, lambda msg, **_: collector.opened(msg.node_id,
                                                                          msg.data))
        runner.register_message(BATCH, lambda msg, **_: collector.write(msg.node_id, msg.data))
        runner.register_message(FINISHED, lambda msg, **_: collector.finished(
            msg.node_id, msg.data))

        @environment.events.test_stop.add_listener
        def _collect_last_batches(**_kw):
            timeout_s = (environment.stop_timeout or 0) + FINISH_MARGIN_S
            missing = collector.finish(runner, timeout_s)
            if missing:
                print(f"rtmsim: no last event-log batch from worker(s) {', '.join(missing)} "
                      f"within {timeout_s:g} s: their logs may end early", flush=True)


class Collector:
    """The master's side: the batches workers ship (into the run directory, under each
    worker's tag) and the last call at test stop."""

    def __init__(self, run_dir: Path) -> None:
        self.logs = ShippedLogs(run_dir)
        self._round = 0
        self._waiting: set[str] = set()
        self._all_in = gevent.event.Event()

    def opened(self, client_id: str, data: dict[str, Any]) -> None:
        self.logs.directory(client_id, data["tag"])

    def write(self, client_id: str, data: dict[str, Any]) -> None:
        self.logs.write(client_id, data["tag"], data["seq"], data["parquet"])

    def finish(self, runner: Any, timeout_s: float) -> list[str]:
        """Ask every shipping worker still running users to stop them and ship the rest;
        wait for all answers (a worker that quits meanwhile sent its rest before its
        "quit"). The client ids that did not answer within `timeout_s`."""
        self._round += 1
        self._all_in.clear()
        self._waiting = {c.id for c in runner.clients.running + runner.clients.spawning
                         if c.id in self.logs.dirs}
        for client_id in self._waiting:
            runner.send_message(FINISH, {"round": self._round}, client_id=client_id)
        deadline = time.monotonic() + timeout_s
        while self._waiting and time.monotonic() < deadline:
            self._all_in.wait(1.0)  # set by the last answer; a second to notice a quit
            self._waiting &= set(runner.clients)
        return sorted(self._waiting)

    def finished(self, client_id: str, data: dict[str, Any]) -> None:
        if data.get("round") == self._round:
            self._waiting.discard(client_id)
            if not self._waiting:
                self._all_in.set()


def _finish(environment: Any, msg: Any, **_kw: Any) -> None:
    """The master's last call, on a worker: stop the users (their last replies are
    logged), send what is left, then say so (after it, on the same connection)."""
    environment.runner.stop()
    if _LOG is not None:
        _LOG.flush()
    environment.runner.send_message(FINISHED, msg.data)


def _shipper(runner: Any, tag: str) -> Callable[[int, bytes], None]:
    def send(seq: int, data: bytes) -> None:
        runner.send_message(BATCH, {"tag": tag, "seq": seq, "parquet": data})
    return send


def _flush_forever(log: EventLog) -> None:
    while True:
        gevent.sleep(FLUSH_S)
        log.flush()
