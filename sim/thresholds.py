"""`[thresholds]`: pass/fail conditions on a run's summary, as k6's `thresholds` are.

    [thresholds]
    "errors.backend_error.per_1000_requests" = "< 50"
    "latency.publish.p99" = "< 100"
    "delivery.lost" = "== 0"
    "reconciled" = "== true"
    "errors.internal_error.server" = { condition = "== 0", abort_on_fail = true }

A metric names a number of `summary.json` (the table `METRICS` says which); a
condition is an operator and a value, or a list of them that must all hold. Both are
checked when the scenario loads, so a typo is one line naming it before anything
runs. `evaluate` judges a summary at the end of the run; `live_failures` judges the
server's live counters during it, for the thresholds that can fail early: a count that
only grows, bounded from above, fails for good once it passes its bound.

Pure functions over plain data: the scenario loader, the analysis and the runner all
call them, and none of them re-parses a threshold.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from server.codes import CLOSE_CODES, ERROR_CODES
from server.schema import ConfigError

OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
    "<": operator.lt, ">": operator.gt}
_CONDITION = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")
OPS = ("connect", "subscribe", "unsubscribe", "publish", "send", "presence")
STATS = ("count", "mean", "p50", "p90", "p99", "p99.9", "max")
ERROR_FIELDS = ("client", "server", "per_1000_requests", "client_per_s", "server_per_s")
CLOSE_FIELDS = ("client", "server", "server_per_s")
DELIVERY_FIELDS = ("published", "expected", "delivered", "lost", "duplicates", "reordered",
                   "excluded", "unexpected", "reused_message_ids")
THROUGHPUT_FIELDS = ("published_per_s_mean", "published_per_s_peak", "delivered_per_s_mean",
                     "delivered_per_s_peak")
RECOVERY_FIELDS = ("recovered_s", "recovered_at_s")
ERROR_GROUPS = ("total", "service")  # every code; the codes that are not the client's bug
_IDENT = r"[A-Za-z0-9_.\-]+"


@dataclass(frozen=True, slots=True)
class Condition:
    op: str
    value: float | bool

    def holds(self, actual: float | bool) -> bool:
        return OPERATORS[self.op](actual, self.value)

    def __str__(self) -> str:
        value = str(self.value).lower() if isinstance(self.value, bool) else f"{self.value:g}"
        return f"{self.op} {value}"


@dataclass(frozen=True, slots=True)
class Threshold:
    metric: str
    conditions: tuple[Condition, ...]
    abort_on_fail: bool = False

    @property
    def condition_text(self) -> str:
        return " and ".join(str(c) for c in self.conditions)

    def to_spec(self) -> dict[str, Any]:
        """As data for run.json; `parse_thresholds` gives back an equal threshold."""
        return {"condition": [str(c) for c in self.conditions],
                "abort_on_fail": self.abort_on_fail}


@dataclass(frozen=True, slots=True)
class Metric:
    """One family of metric names: its pattern, what it reads, how it may fail early."""

    pattern: str  # a regex over the whole name; groups are the name's variable parts
    doc: str
    read: Callable[..., Any]  # (summary, *groups) -> number, bool or None (no data)
    boolean: bool = False
    live: Callable[..., int] | None = None  # (server stats totals, *groups) -> count

    def match(self, name: str) -> tuple[str, ...] | None:
        m = re.fullmatch(self.pattern, name)
        return m.groups() if m else None


# -- reading a summary ----------------------------------------------------------------------

def _get(tree: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _error_count(summary: Mapping[str, Any], code: str, field: str) -> Any:
    """A code absent from the run had no errors: 0, not "no data" (rates too)."""
    if code in ERROR_GROUPS:
        rows = [r for r in (summary.get("errors") or {}).values()
                if code == "total" or not r.get("client_fault")]
        values = [r.get(field) for r in rows]
        if any(v is None for v in values):
            return None
        return sum(values)
    row = _get(summary, "errors", code)
    return 0 if row is None else row.get(field)


def _close_count(summary: Mapping[str, Any], code: str, field: str) -> Any:
    row = _get(summary, "closes", code)
    return 0 if row is None else row.get(field)


def _recovery(summary: Mapping[str, Any], fault_id: str, field: str) -> Any:
    rows = [r for r in summary.get("recovery") or [] if r.get("id") == fault_id]
    return rows[0].get(field) if rows else None


def _live_errors(totals: Mapping[str, Any], code: str, field: str) -> int:
    errors = totals.get("errors") or {}
    if code == "total":
        return sum(errors.values())
    if code == "service":
        return sum(n for c, n in errors.items()
                   if c not in ERROR_CODES or not ERROR_CODES[c].is_client_fault)
    return int(errors.get(code, 0))


def _live_closes(totals: Mapping[str, Any], code: str, field: str) -> int:
    return int((totals.get("closes") or {}).get(code, 0))


def _one_of(names: Iterable[str]) -> str:
    return "(" + "|".join(re.escape(n) for n in names) + ")"


_ERROR_NAMES = _one_of([*ERROR_CODES, *ERROR_GROUPS])
_CLOSE_NAMES = _one_of(str(int(c)) for c in CLOSE_CODES)

METRICS: tuple[Metric, ...] = (
    Metric(r"requests\.(total|ok)", "client requests (retries included), ok ones",
           lambda s, f: _get(s, "requests", f)),
    Metric(rf"requests\.{_one_of(OPS)}", "client requests of one op",
           lambda s, op: _get(s, "requests", "per_op", op) or 0),
    Metric(rf"errors\.{_ERROR_NAMES}\.{_one_of(ERROR_FIELDS)}",
           "one error code's count or rate; `total` sums every code, `service` the codes "
           "that are not the client's fault", _error_count, live=_live_errors),
    Metric(rf"closes\.{_CLOSE_NAMES}\.{_one_of(CLOSE_FIELDS)}", "one close code's count",
           _close_count, live=_live_closes),
    Metric(rf"latency\.{_one_of(OPS)}\.{_one_of(STATS)}", "request latency (ms) of ok "
           "requests", lambda s, op, stat: _get(s, "latency_ms", op, stat)),
    Metric(rf"delivery_latency\.{_one_of(STATS)}", "publish to delivery (ms)",
           lambda s, stat: _get(s, "delivery_latency_ms", stat)),
    Metric(rf"delivery\.{_one_of(DELIVERY_FIELDS)}", "end-to-end delivery accounting",
           lambda s, f: _get(s, "delivery", f)),
    Metric(r"reconciled", "client and server counts agree", boolean=True,
           read=lambda s: _get(s, "reconciliation", "agree")),
    Metric(rf"recovery\.({_IDENT})\.{_one_of(RECOVERY_FIELDS)}", "seconds from a fault "
           "window's end until the service was healthy (no data: not recovered)",
           _recovery),
    Metric(rf"retry_amplification\.({_IDENT})", "attempts per operation of one retry "
           "policy", lambda s, policy: _get(s, "retry_amplification", policy,
                                            "amplification")),
    Metric(r"never_retry_violations\.(connections|repeats)", "never-retry codes retried",
           lambda s, f: _get(s, "never_retry_violations", f)),
    Metric(rf"throughput\.{_one_of(THROUGHPUT_FIELDS)}", "messages per second",
           lambda s, f: _get(s, "throughput", f)),
    Metric(r"warnings", "how many warnings the summary has",
           lambda s: len(s.get("warnings") or [])),
)


def read_metric(summary: Mapping[str, Any], name: str) -> Any:
    """A metric's value in a summary (None: no data); KeyError for an unknown name."""
    found = metric_for(name)
    if found is None:
        raise KeyError(name)
    metric, groups = found
    return metric.read(summary, *groups)


def metric_for(name: str) -> tuple[Metric, tuple[str, ...]] | None:
    for metric in METRICS:
        groups = metric.match(name)
        if groups is not None:
            return metric, groups
    return None


# -- parsing ------------------------------------------------------------------------------

def parse_thresholds(table: Any, *, fault_ids: Iterable[str] = (),
                     where: str = "thresholds") -> tuple[Threshold, ...]:
    """`[thresholds]` as given in a scenario; ConfigError names the first bad entry."""
    if table is None:
        return ()
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: must be a table of metric = condition")
    faults = set(fault_ids)
    out = []
    for name, spec in table.items():
        key = f'{where}."{name}"'
        found = metric_for(name)
        if found is None:
            raise ConfigError(f"{key}: unknown metric (known: {', '.join(known_metrics())})")
        metric, groups = found
        if metric.pattern.startswith("recovery") and groups[0] not in faults:
            raise ConfigError(f"{key}: no fault {groups[0]!r} in the scenario (its faults: "
                              f"{', '.join(sorted(faults)) or 'none'})")
        conditions, abort = _parse_spec(spec, key)
        parsed = tuple(_parse_condition(c, metric.boolean, key) for c in conditions)
        if abort and not can_fail_early(name, metric, parsed):
            raise ConfigError(f"{key}.abort_on_fail: only a server count bounded from "
                              "above can fail early (errors.<code>.server or "
                              "closes.<code>.server, with <, <= or ==)")
        out.append(Threshold(name, parsed, abort))
    return tuple(out)


def _parse_spec(spec: Any, key: str) -> tuple[list[Any], bool]:
    if isinstance(spec, str):
        return [spec], False
    if isinstance(spec, list) and spec:
        return spec, False
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"condition", "abort_on_fail"}
        if unknown:
            raise ConfigError(f"{key}.{sorted(unknown)[0]}: unknown key (condition, "
                              "abort_on_fail)")
        if "condition" not in spec:
            raise ConfigError(f"{key}.condition: missing")
        abort = spec.get("abort_on_fail", False)
        if not isinstance(abort, bool):
            raise ConfigError(f"{key}.abort_on_fail: must be true or false, got {abort!r}")
        conditions, _ = _parse_spec(spec["condition"], f"{key}.condition")
        return conditions, abort
    raise ConfigError(f"{key}: must be a condition such as \"< 100\", a list of them, or "
                      "{ condition = ..., abort_on_fail = true }")


def _parse_condition(text: Any, boolean: bool, key: str) -> Condition:
    m = _CONDITION.match(text) if isinstance(text, str) else None
    if m is None:
        raise ConfigError(f"{key}: bad condition {text!r}: write an operator "
                          f"({', '.join(OPERATORS)}) and a value, e.g. \"< 100\"")
    op, raw = m.groups()
    if boolean:
        if raw not in ("true", "false") or op not in ("==", "!="):
            raise ConfigError(f"{key}: {text!r}: this metric is true or false: write "
                              "\"== true\" or \"== false\"")
        return Condition(op, raw == "true")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key}: {text!r}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{key}: {text!r}: the value must be finite")
    return Condition(op, value)


def can_fail_early(name: str, metric: Metric, conditions: Iterable[Condition]) -> bool:
    """A server count (it only grows) against upper bounds: once past, it stays past."""
    return (metric.live is not None and name.endswith(".server")
            and all(c.op in ("<", "<=", "==") for c in conditions))


def known_metrics() -> list[str]:
    """Readable forms of every metric family, for error messages and the docs."""
    return ["requests.total|ok|<op>", "errors.<code|total|service>.<field>",
            "closes.<code>.<field>", "latency.<op>.<stat>", "delivery_latency.<stat>",
            "delivery.<field>", "reconciled", "recovery.<fault id>.<field>",
            "retry_amplification.<policy>", "never_retry_violations.<field>",
            "throughput.<field>", "warnings"]


# -- judging ---------------------------------------------------------------------------------

def evaluate(thresholds: Iterable[Threshold], summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per threshold: metric, condition, value, ok, and why when it failed.

    A metric with no data (no sample of that op, a fault not recovered from) fails:
    a gate that cannot see its number does not pass.
    """
    rows = []
    for t in thresholds:
        metric, groups = metric_for(t.metric)  # type: ignore[misc]  # parsed: it matches
        value = metric.read(summary, *groups)
        if value is None:
            ok, why = False, "no data"
        else:
            failed = [c for c in t.conditions if not c.holds(value)]
            ok = not failed
            why = "" if ok else f"{_show(value)} is not {' and '.join(map(str, failed))}"
        rows.append({"metric": t.metric, "condition": t.condition_text, "value": value,
                     "ok": ok, "reason": why, "abort_on_fail": t.abort_on_fail})
    return rows


def live_failures(thresholds: Iterable[Threshold], stats: Iterable[Mapping[str, Any]], *,
                  all_live: bool = False) -> list[str]:
    """Thresholds that can no longer pass, from every instance's /sim/v1/stats.

    Judged are those marked `abort_on_fail`, or (`all_live`, the `--abort-on-fail`
    flag) every server count bounded from above. One sentence per failure.
    """
    totals = [s.get("totals") or {} for s in stats]
    out = []
    for t in thresholds:
        metric, groups = metric_for(t.metric)  # type: ignore[misc]
        if not (t.abort_on_fail or all_live) or not can_fail_early(t.metric, metric,
                                                                    t.conditions):
            continue
        count = sum(metric.live(tot, *groups) for tot in totals)  # type: ignore[misc]
        failed = [c for c in t.conditions if not c.holds(count)
                  and (c.op != "==" or count > c.value)]
        if failed:
            out.append(f"{t.metric} is {count}, not {' and '.join(map(str, failed))}")
    return out


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)
