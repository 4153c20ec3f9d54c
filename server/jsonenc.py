"""JSON in both directions with JavaScript's semantics: `JSON.parse` in, `JSON.stringify` out.

orjson does the work on every hot path; the standard library runs only when orjson
raises, for the few texts and values where orjson is stricter than JavaScript:

- Reading: RFC 8259's grammar allows unpaired surrogate escapes (`"\\ud800"`) and
  numbers beyond the double range (`1e400`), which `JSON.parse` reads as a lone UTF-16
  code unit and as Infinity; orjson refuses both. `loads_fallback` accepts exactly
  those on top of what orjson accepts, and nothing else: no `NaN`/`Infinity` literals,
  no BOM, no invalid UTF-8, no more than orjson's 1024 levels of nesting.
- Writing: orjson parses 1024 levels of nesting but serializes only 254, and refuses a
  str holding a lone surrogate. The fallback writes what `JSON.stringify` writes:
  `null` for an infinity or NaN, `\\udxxx` (lowercase) for a lone surrogate, other
  text raw in UTF-8, with room on the recursion limit for every depth the parser accepts.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

MAX_DEPTH = 1024  # orjson's parser limit, documented as the protocol's
_DEEP_RECURSION_LIMIT = 4000
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # orjson keeps these as int, larger as double
_INT_MAX_CHARS = 20  # len(str(_INT_MIN)) == len(str(_INT_MAX)) == 20

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_RAW_SURROGATE = re.compile("[\ud800-\udfff]")
_NON_FINITE_OR_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|-?Infinity|NaN', re.DOTALL)
_WTF8_SURROGATE = re.compile(rb"\xed[\xa0-\xbf][\x80-\xbf]")


class _Refused(ValueError):
    """The fallback parser's own refusals (a JSON.parse-valid text it still rejects)."""


# -- reading ------------------------------------------------------------------------------

def loads(data: str | bytes) -> Any:
    """The value of a JSON text as `JSON.parse` reads it; orjson.JSONDecodeError if none."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        try:
            return loads_fallback(data)
        except (ValueError, RecursionError):
            pass
        raise  # orjson's own error: one exception type and message for every caller


def loads_fallback(data: str | bytes) -> Any:
    """The standard library's reading of what orjson refused, held to orjson's rules.

    Raises ValueError (or RecursionError) for anything but a lone surrogate escape or
    an out-of-range number.
    """
    text = _utf8_text(data)
    if _depth(text) > MAX_DEPTH:
        raise _Refused(f"nesting deeper than {MAX_DEPTH} levels")
    with _deep_recursion():
        return json.loads(text, parse_int=_int_or_double, parse_constant=_refuse_constant)


def _utf8_text(data: str | bytes) -> str:
    """The text of a frame, refusing what is not UTF-8 (as orjson does).

    Decoding ourselves keeps `json.loads` from guessing UTF-16/32 or skipping a BOM,
    and a str with a raw surrogate could never have come from UTF-8.
    """
    if isinstance(data, str):
        if _RAW_SURROGATE.search(data):
            raise _Refused("str is not valid UTF-8: surrogates not allowed")
        return data
    return bytes(data).decode("utf-8")


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects outside string literals."""
    depth = deepest = 0
    for ch in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _int_or_double(text: str) -> int | float:
    """An int within orjson's 64-bit range, else the double JSON.parse makes of it."""
    if len(text) <= _INT_MAX_CHARS:
        value = int(text)
        if _INT_MIN <= value <= _INT_MAX:
            return value
    return float(text)  # may be inf, as JSON.parse gives Infinity


def _refuse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON")


@contextmanager
def _deep_recursion() -> Iterator[None]:
    """Room for MAX_DEPTH levels in the stdlib's recursive C encoder and scanner."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, _DEEP_RECURSION_LIMIT))
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


# -- writing ------------------------------------------------------------------------------

def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON for any value `loads` returns, as `JSON.stringify` writes it."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return dumps_fallback(obj)


def dumps_fallback(obj: Any) -> bytes:
    """The standard library's encoding, corrected to `JSON.stringify`'s output."""
    with _deep_recursion():
        try:
            text = _stdlib_dumps(obj, allow_nan=False)
        except ValueError:  # an infinity or NaN: rare, so only then a second pass
            text = _NON_FINITE_OR_STRING.sub(_null_unless_string,
                                             _stdlib_dumps(obj, allow_nan=True))
    raw = text.encode("utf-8", "surrogatepass")
    return _WTF8_SURROGATE.sub(_escape_surrogate, raw)


def _stdlib_dumps(obj: Any, *, allow_nan: bool) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=allow_nan)


def _null_unless_string(match: re.Match[str]) -> str:
    token = match.group()
    return token if token[0] == '"' else "null"


def _escape_surrogate(match: re.Match[bytes]) -> bytes:
    """`\\udxxx` for the 3-byte form surrogatepass gives a lone surrogate."""
    code_point = match.group().decode("utf-8", "surrogatepass")
    return b"\\u%04x" % ord(code_point)
