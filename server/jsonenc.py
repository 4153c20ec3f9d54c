"""JSON encoding of frames that carry client `data`.

orjson parses 1024 levels of nesting but serializes only 254, so a valid, deeply nested
`data` would fail on its way out. Such payloads take the standard library's encoder,
with room on the recursion limit for every depth the parser accepts.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import orjson

_DEEP_RECURSION_LIMIT = 4000


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes for any value the frame parser accepted."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        pass
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, _DEEP_RECURSION_LIMIT))
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    finally:
        sys.setrecursionlimit(previous)
