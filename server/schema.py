"""Reading a config table: typed getters whose errors name the key (`where.key: problem`).

One reader for every file the project reads (the server config, its fault specs,
scenario and client settings), so a key is checked and phrased the same way wherever
it appears. It imports nothing from the project: every part that reads config can use
it without depending on another.
"""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A config problem, already phrased for the user as `key: problem`."""


class Table:
    """One table (a dict) at `where`; `done()` rejects the keys no getter asked for.

    A getter returns the default, unchecked, when the key is absent: pass `None` as the
    default of a required key and report its absence with `fail`, in the words that fit.
    TOML has no null; for JSON input (the REST API), `null_is_absent` makes a null
    number or list mean "not given" (a null number with no default is refused).
    """

    def __init__(self, data: object, where: str, *, noun: str = "table",
                 null_is_absent: bool = False) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a {noun}, got {type(data).__name__}")
        self.data: dict[str, Any] = data
        self.where = where
        self.null_is_absent = null_is_absent
        self.seen: set[str] = set()

    def name(self, key: str) -> str:
        """The full name of `key` as errors show it (`apps[0].plan.balance`)."""
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> ConfigError:
        """The error to raise about `key`: `where.key: problem`."""
        return ConfigError(f"{self.name(key)}: {problem}")

    def get(self, key: str, default: Any = None) -> Any:
        """The raw value (marked as known to `done`), or `default`."""
        self.seen.add(key)
        return self.data.get(key, default)

    def table(self, key: str) -> Table:
        """The nested table `key` (an empty one when absent)."""
        return Table(self.get(key, {}), self.name(key))

    def number(self, key: str, default: Any, *, minimum: float | None = None,
               maximum: float | None = None, exclusive: bool = False,
               integer: bool = False) -> Any:
        """A finite number (a whole one if `integer`) within the bounds; `exclusive`
        makes the minimum itself out of range."""
        value = self.get(key)
        wanted = "a whole number" if integer else "a number"
        if key not in self.data:
            return default
        if value is None and self.null_is_absent:
            if default is None:
                raise self.fail(key, f"must be {wanted}")
            return default
        if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            raise self.fail(key, f"must be {wanted}, got {value!r}")
        if not math.isfinite(value):
            raise self.fail(key, f"must be a finite number, got {value!r}")
        if minimum is not None and (value < minimum or (exclusive and value == minimum)):
            raise self.fail(key, f"must be {'>' if exclusive else '>='} {minimum:g}, "
                                 f"got {value!r}")
        if maximum is not None and value > maximum:
            raise self.fail(key, f"must be <= {maximum:g}, got {value!r}")
        return value

    def string(self, key: str, default: str | None = None, *,
               choices: tuple[str, ...] | None = None, required: bool = False) -> Any:
        """A non-empty string, one of `choices` when given."""
        if required and key not in self.data:
            raise self.fail(key, "is required")
        value = self.get(key, default)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        """One of `choices`, whatever the type of a wrong value."""
        value = self.get(key, default)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def strings(self, key: str, default: tuple[str, ...] | None, *,
                choices: tuple[str, ...] | None = None, non_empty: bool = False,
                one_or_list: bool = False) -> Any:
        """A tuple of non-empty strings, each one of `choices` when given.

        `non_empty` refuses an empty list; `one_or_list` also takes a single string.
        """
        value = self.get(key)
        if key not in self.data or (value is None and self.null_is_absent):
            return default
        if one_or_list and isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or (non_empty and not value) or not all(
                isinstance(v, str) and v for v in value):
            wanted = "a non-empty list of strings" if non_empty else \
                "a list of non-empty strings"
            raise self.fail(key, f"must be {wanted}, got {value!r}")
        for v in value:
            if choices and v not in choices:
                raise self.fail(key, f"{v!r} is not one of {', '.join(choices)}")
        return tuple(value)

    def done(self, problem: str = "unknown key") -> None:
        """Refuse the first (sorted) key no getter asked for."""
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.fail(unknown[0], problem)
