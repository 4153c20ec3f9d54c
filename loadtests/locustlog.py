"""One raw event log per Locust process, flushed by a greenlet, closed at quit.

Locust workers (`--processes N`, or master/worker on several machines) each write
`client-events-<tag>/` (Parquet batches) into the same run directory; the analysis
reads them all.
"""

from __future__ import annotations

from typing import Any

import gevent

from .eventlog import EventLog, log_dir
from .swarmconfig import settings_for

FLUSH_S = 1.0
_LOG: EventLog | None = None


def process_event_log(environment: Any) -> EventLog | None:
    """This process's event log (created on first use), or None without a run dir."""
    global _LOG
    if _LOG is not None:
        return _LOG
    settings = settings_for(environment)
    if not settings.run_dir:
        return None
    _LOG = EventLog(log_dir(settings.run_dir, settings.process_tag))
    gevent.spawn(_flush_forever, _LOG)
    if environment is not None:
        environment.events.quitting.add_listener(lambda **_: close_event_log())
        environment.events.test_stop.add_listener(lambda **_: _LOG and _LOG.flush())
    return _LOG


def close_event_log() -> None:
    global _LOG
    if _LOG is not None:
        _LOG.close()
        _LOG = None


def _flush_forever(log: EventLog) -> None:
    while True:
        gevent.sleep(FLUSH_S)
        log.flush()
