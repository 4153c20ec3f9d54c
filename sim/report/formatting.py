"""Cell text for the reports: numbers, times, and the name, meaning and guidance of a code.

The terminal summary, report.html and compare share these, so a number reads the same
everywhere (`1,234`, `-` for missing). A code's words come from `server.codes`, the one
code table; a code the table does not know falls back to what summary.json recorded.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from typing import Any

from server.codes import CLOSE_CODES, ERROR_CODES

MISSING = "-"


def num(value: Any, digits: int = 0) -> str:
    """1234 -> "1,234"; floats to `digits` decimals; None/NaN -> "-"."""
    if value is None or isinstance(value, bool):
        return MISSING if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(f):
        return MISSING
    if digits == 0:
        return f"{round(f):,}"
    return f"{f:,.{digits}f}"


def signed(value: Any) -> str:
    if isinstance(value, int | float) and value and math.isfinite(value):
        return f"{value:+,}" if isinstance(value, int) else f"{value:+,.0f}"
    return num(value)


def error_guidance(code: str, entry: dict[str, Any]) -> str:
    known = ERROR_CODES.get(code)
    return known.guidance if known else str(entry.get("retry") or "unknown code: tolerate it")


def error_meaning(code: str, entry: dict[str, Any]) -> str:
    known = ERROR_CODES.get(code)
    return known.meaning if known else str(entry.get("meaning") or "not in the code table")


def close_name(code: str | int, entry: dict[str, Any]) -> str:
    known = CLOSE_CODES.get(int(code)) if str(code).lstrip("-").isdigit() else None
    return known.name if known else str(entry.get("name") or "unknown")


def close_guidance(code: str | int, entry: dict[str, Any]) -> str:
    known = CLOSE_CODES.get(int(code)) if str(code).lstrip("-").isdigit() else None
    return known.guidance if known else str(entry.get("guidance") or "")


def close_meaning(code: str | int, entry: dict[str, Any]) -> str:
    known = CLOSE_CODES.get(int(code)) if str(code).lstrip("-").isdigit() else None
    return known.meaning if known else str(entry.get("meaning") or "not in the code table")


def by_count(section: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Most frequent code first (the larger of the two sides), ties by code.

    summary.json is written with sorted keys; a reader scans a table from the top.
    """
    def most(item: tuple[str, dict[str, Any]]) -> tuple[float, str]:
        entry = item[1]
        return (-max(float(entry.get("client") or 0), float(entry.get("server") or 0)),
                str(item[0]))

    return sorted(section.items(), key=most)


def threshold_value(check: dict[str, Any]) -> str:
    """A threshold's measured value: true/false, or a number ("-" for no data)."""
    value = check.get("value")
    if isinstance(value, bool):
        return str(value).lower()
    return num(value, 3) if isinstance(value, float) else num(value)


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def when(unix: Any) -> str:
    if not isinstance(unix, int | float) or unix <= 0:
        return MISSING
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")



DELIVERY_FIELDS = {
    "published": "acked publishes carrying a message id",
    "expected": "(message, subscriber) pairs owed a delivery",
    "delivered": "owed pairs delivered at least once",
    "lost": "owed pairs never delivered",
    "duplicates": "extra copies received",
    "reordered": "deliveries older than one already seen from the same publisher",
    "excluded": "subscribers whose subscription changed while the message was in flight "
                "(not owed it under at-most-once delivery)",
    "unexpected": "deliveries to a subscriber that was not owed the message",
    "reused_message_ids": "message ids a client used twice (its sequence restarted after a "
                          "reconnect): duplicates and reordered are inflated by these",
}
