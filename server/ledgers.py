"""Where the apps' ledgers live: in this process, or (Redis backend) shared by instances.

The arithmetic is `billing.Ledger`'s; this seam only decides where the numbers are
kept. It is async because a shared store is across the network.
"""

from __future__ import annotations

from typing import Any, Protocol

from .billing import Ledger
from .config import Config


class Ledgers(Protocol):
    async def admit_connection(self, app_id: str, now: float) -> bool: ...

    async def release_connection(self, app_id: str, now: float) -> None: ...

    async def charge_message(self, app_id: str, now: float) -> bool: ...

    async def usage(self, app_id: str, now: float) -> dict[str, Any]: ...


class MemoryLedgers:
    """One `Ledger` per app in this process (the in-memory backend's quotas)."""

    def __init__(self, config: Config, now: float) -> None:
        self.ledgers = {app.id: Ledger.open(app.plan, now) for app in config.apps}

    async def admit_connection(self, app_id: str, now: float) -> bool:
        return self.ledgers[app_id].admit_connection(now)

    async def release_connection(self, app_id: str, now: float) -> None:
        self.ledgers[app_id].release_connection(now)

    async def charge_message(self, app_id: str, now: float) -> bool:
        return self.ledgers[app_id].charge_message(now)

    async def usage(self, app_id: str, now: float) -> dict[str, Any]:
        return self.ledgers[app_id].usage(app_id, now)
