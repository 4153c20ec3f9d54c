"""What a load child and its orchestrator say to each other: JSON lines out, commands in."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any
from urllib.parse import urlsplit


class LoadError(RuntimeError):
    """The load could not run as designed (a refused connection, an error frame)."""


def emit(**fields: Any) -> None:
    """One JSON line to the orchestrator."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def address(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return parts.hostname or "127.0.0.1", parts.port or 80, path


async def read_command(loop: asyncio.AbstractEventLoop) -> str:
    line = await loop.run_in_executor(None, sys.stdin.readline)
    return line.strip()
