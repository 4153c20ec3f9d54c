"""Refuse new connections, cleanly, before the process runs out of file descriptors.

When `accept()` fails with EMFILE the event loop can only drop the waiting connections
(libuv, under uvloop, accepts and closes them: the client sees a reset) or stop
accepting for a while (the stock loop). Instead the server keeps the top `reserve`
descriptors below RLIMIT_NOFILE for what it already serves (Redis, REST, the event
log) and answers an upgrade that lands there with HTTP 503 and `Retry-After`.

The test is O(1) and exact in one direction: the kernel gives a new socket the lowest
free descriptor, so a socket numbered `fd` means every descriptor below it is in use.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("rtmsim.server")

RESERVE = 64  # descriptors kept for the server's own work
RETRY_AFTER_S = 1  # the Retry-After of a refused upgrade


class DescriptorGuard:
    """Says whether an accepted socket may become a connection; logs state changes."""

    def __init__(self, reserve: int = RESERVE) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.limit = soft if soft != resource.RLIM_INFINITY else 1 << 30
        self.reserve = min(reserve, self.limit // 8)
        self.refusing = False
        self.refused = 0  # upgrades answered 503 since the server started
        self._refused_in_spell = 0

    def admits(self, fd: int) -> bool:
        """False when socket `fd` reached into the reserve: refuse it with 503."""
        full = fd >= self.limit - self.reserve
        if full:
            self.refused += 1
            self._refused_in_spell += 1
        if full != self.refusing:
            self.refusing = full
            if full:
                log.warning("out of file descriptors (socket fd %d, limit %d): refusing "
                            "new connections with HTTP 503", fd, self.limit)
            else:
                log.warning("file descriptors free again: accepting connections "
                            "(%d refused meanwhile)", self._refused_in_spell)
                self._refused_in_spell = 0
        return not full
