"""Channel names and glob patterns (PROTOCOL.md section 3).

A pattern is a whole-name glob: `*` is any run (maybe empty) without `/`, `**` any
run including `/`, `\\*` and `\\\\` are literals. A backslash before any other
character is itself a literal backslash (choice: only the two documented escapes
exist). Patterns compile once to a regex; the cache keeps hot paths cheap.
"""

from __future__ import annotations

import re
from functools import lru_cache

MAX_CHANNEL_BYTES = 256
MAX_PEER_ID_BYTES = 128
RESERVED_PREFIXES = ("_metered/", "_internal/", "_system/")

# U+0000-U+001F, U+007F, U+0080-U+009F are never allowed in a channel name.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def channel_problem(channel: object) -> str | None:
    """Why `channel` is not a valid channel name, or None when it is."""
    if not isinstance(channel, str):
        return "channel must be a string" if channel is not None else "channel is missing"
    if not channel:
        return "channel is empty"
    if len(channel) > MAX_CHANNEL_BYTES:
        return f"channel is longer than {MAX_CHANNEL_BYTES} bytes"
    if not channel.isascii():
        try:
            size = len(channel.encode())
        except UnicodeEncodeError:
            # A lone surrogate escape is valid JSON but has no UTF-8 form: it could not
            # be a Redis key, a close reason or a log line, so it is not a channel name.
            return "channel is not valid UTF-8 (unpaired surrogate)"
        if size > MAX_CHANNEL_BYTES:
            return f"channel is longer than {MAX_CHANNEL_BYTES} bytes"
    if _CONTROL.search(channel):
        return "channel contains control characters"
    return None


def peer_id_problem(peer_id: object) -> str | None:
    """Why `peer_id` is not a valid peerId (1..128 printable ASCII), or None."""
    if not isinstance(peer_id, str):
        return "peerId must be a string" if peer_id is not None else "peerId is missing"
    if not peer_id:
        return "peerId is empty"
    if len(peer_id) > MAX_PEER_ID_BYTES:
        return f"peerId is longer than {MAX_PEER_ID_BYTES} bytes"
    if not (peer_id.isascii() and peer_id.isprintable()):
        return "peerId must be printable ASCII"
    return None


def is_reserved(channel: str) -> bool:
    """True when the channel starts with a reserved prefix (case-insensitive)."""
    if channel[:1] != "_":
        return False
    lowered = channel[:10].lower()
    return lowered.startswith(RESERVED_PREFIXES)


def is_wildcard(name: str) -> bool:
    """True when `name` holds an unescaped `*` (a subscription to a pattern)."""
    if "*" not in name:
        return False
    return any(kind != "lit" for kind, _ in _tokens(name))


def unescape(name: str) -> str:
    """The concrete channel a pattern without wildcards stands for."""
    if "\\" not in name:
        return name
    return "".join(text for _, text in _tokens(name))


def subscription_key(name: str) -> tuple[str, bool]:
    """(index key, is_wildcard) for a subscription name."""
    if is_wildcard(name):
        return name, True
    return unescape(name), False


def _tokens(pattern: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n and pattern[i + 1] in "*\\":
            out.append(("lit", pattern[i + 1]))
            i += 2
        elif ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                out.append(("any", "**"))
                i += 2
            else:
                out.append(("seg", "*"))
                i += 1
        else:
            out.append(("lit", ch))
            i += 1
    return out


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The anchored regex for a glob pattern."""
    parts = []
    for kind, text in _tokens(pattern):
        if kind == "any":
            parts.append(".*")
        elif kind == "seg":
            parts.append("[^/]*")
        else:
            parts.append(re.escape(text))
    return re.compile("".join(parts), re.DOTALL)


def match_channel(pattern: str, channel: str) -> bool:
    """True when the whole `channel` matches the glob `pattern`."""
    if pattern == "**":
        return True
    return compile_pattern(pattern).fullmatch(channel) is not None


def match_any(patterns: tuple[str, ...], channel: str) -> bool:
    """True when `channel` matches at least one of `patterns`."""
    return any(match_channel(p, channel) for p in patterns)
