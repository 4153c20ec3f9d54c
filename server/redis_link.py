"""One instance's link to Redis: calls that fail fast, and recovery with backoff.

Every Redis call goes through `call`: an error marks the link down (one log line) and
becomes a `BackendError`, so the client gets `backend_error` and its connection stays
open. While down, calls fail at once instead of waiting on timeouts; a supervisor
pings with backoff (capped well under the 2 s recovery target) and, once Redis
answers, runs the resync hooks (Redis may have restarted empty) before calls go
through again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .backend import BackendError

log = logging.getLogger("rtmsim.redis")
FAILURES = (RedisError, OSError, asyncio.TimeoutError)
BACKOFF_START_S = 0.05
BACKOFF_CAP_S = 0.4


class RedisLink:
    def __init__(self, url: str, prefix: str, *, timeout_s: float = 1.0) -> None:
        self.url = url
        self.prefix = prefix
        self.redis = Redis.from_url(url, socket_timeout=timeout_s,
                                    socket_connect_timeout=timeout_s,
                                    retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.up = False
        self.errors = 0  # Redis failures seen (each became a backend_error or a retry)
        self.state_changes = 0
        self.down_since: float | None = None
        self.on_up: list[Callable[[], Awaitable[None]]] = []
        self._wake = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def start(self) -> None:
        """Connect, or start down and keep trying (the server serves either way)."""
        self._supervisor = asyncio.create_task(self._supervise())
        try:
            await self.redis.ping()
        except FAILURES as exc:
            self.mark_down(exc)
            return
        await self._come_up()

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
        await self.redis.aclose()

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one Redis command or script; BackendError when Redis is unavailable."""
        if not self.up:
            raise BackendError("backend unavailable (redis down)")
        try:
            return await fn(*args, **kwargs)
        except FAILURES as exc:
            self.mark_down(exc)
            raise BackendError("backend unavailable (redis error)") from None

    def mark_down(self, exc: BaseException | None = None) -> None:
        self.errors += 1
        if self.up or self.state_changes == 0:
            self.up = False
            self.state_changes += 1
            self.down_since = asyncio.get_running_loop().time()
            log.warning("redis %s: down (%s)", self.url, type(exc).__name__ if exc else "?")
            self._wake.set()

    async def _come_up(self) -> None:
        for hook in self.on_up:
            await hook()
        self.up = True
        self.state_changes += 1
        self.down_since = None
        log.warning("redis %s: up", self.url)

    async def _supervise(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            delay = BACKOFF_START_S
            while not self.up:
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_CAP_S)
                try:
                    await self.redis.ping()
                    await self._come_up()
                except FAILURES:
                    continue
                except Exception:
                    log.exception("redis resync failed")

    def state(self) -> dict[str, Any]:
        return {"url": self.url, "prefix": self.prefix, "up": self.up,
                "errors": self.errors, "stateChanges": self.state_changes}
