"""TOML text for what the harness writes (the calibrated model file, the planner's
scenarios): tables, arrays of tables, inline tables for the small ones, scalars and
lists of scalars (tomllib reads, nothing in the standard library writes)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# Small tables are inlined from this depth: [model.network] keeps its header, as the
# format's documentation shows it, while `ops = {publish = 3}` in a step does not.
INLINE_FROM = 2


def toml_text(data: dict[str, Any], comment: str = "") -> str:
    """`data` as a TOML document, `comment` as its leading `#` lines."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    _table(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _table(data: dict[str, Any], path: list[str], lines: list[str]) -> None:
    subtables = []
    for key, value in data.items():
        if _is_table(value, inline=len(path) >= INLINE_FROM):
            subtables.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in subtables:
        name = ".".join(_key(k) for k in [*path, key])
        if isinstance(value, dict):
            lines += ["", f"[{name}]"]
            _table(value, [*path, key], lines)
        else:
            for item in value:
                lines += ["", f"[[{name}]]"]
                _table(item, [*path, key], lines)


def _is_table(value: Any, inline: bool) -> bool:
    """Written under a [header]: a dict (too big to inline, or not deep enough), or a
    list of dicts."""
    if isinstance(value, dict):
        return not (inline and _is_small(value))
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _is_small(value: dict[str, Any]) -> bool:
    """Written inline: a few scalars (an operation count, a placement)."""
    return len(value) <= 4 and all(not isinstance(v, dict | list) for v in value.values())


def _key(key: str) -> str:
    return key if BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # TOML basic strings escape alike
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        return '"none"'
    raise TypeError(f"no TOML for {type(value).__name__}")
