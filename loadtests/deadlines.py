"""Request timeouts for a whole process: one sweeper instead of a timer per request.

Waiting on a gevent `Event` with a timeout arms and disarms a timer on every call,
which costs the swarm a few percent of its round trips at tens of thousands a
second. Here a waiter registers its deadline and waits without one; a single sweeper
(a thread, a greenlet once gevent has patched threading) wakes every `TICK_S` and
sets the events whose deadline has passed. A timeout therefore fires up to `TICK_S`
late; the request's reported latency is the time it really waited.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Protocol

TICK_S = 0.05


class _Settable(Protocol):
    def set(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


class Deadlines:
    """Waits on events with a deadline enforced by one sweeper per process."""

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self._waiting: dict[_Settable, float] = {}
        self._started = False
        # A forked child (Locust's --processes) has no sweeper thread: it starts its own.
        os.register_at_fork(after_in_child=self._forked)

    def wait(self, event: _Settable, timeout: float) -> None:
        """Block until `event` is set, or `timeout` seconds have passed (then set it)."""
        self._waiting[event] = time.monotonic() + timeout
        if not self._started:
            self._started = True
            threading.Thread(target=self._sweep, daemon=True, name="rtmsim-deadlines").start()
        try:
            event.wait()
        finally:
            self._waiting.pop(event, None)

    def _forked(self) -> None:
        self._started = False
        self._waiting = {}

    def _sweep(self) -> None:
        while True:
            time.sleep(self.tick_s)
            now = time.monotonic()
            for event, deadline in list(self._waiting.items()):
                if deadline <= now:
                    event.set()


DEADLINES = Deadlines()
