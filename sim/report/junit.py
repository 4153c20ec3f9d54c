"""JUnit XML: the one report format every CI system shows natively.

A gate (a scenario's thresholds, a client's grading rules) becomes a test suite, each
check a test case that fails with its reason, so a red build names what failed
without anyone opening report.html.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .. import rundir


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    failure: str | None = None  # the one-line reason; None: passed
    details: str = ""  # the failure's body, or the output of a passing case
    skipped: str | None = None  # why it was not judged


def write_junit(path: str | Path, suite: str, cases: Iterable[Case], *,
                time_s: float = 0.0) -> Path:
    """`<testsuites><testsuite name=suite>` with one `<testcase>` per case."""
    cases = list(cases)
    root = ET.Element("testsuites")
    failures = sum(c.failure is not None for c in cases)
    skipped = sum(c.skipped is not None and c.failure is None for c in cases)
    attrs = {"name": suite, "tests": str(len(cases)), "failures": str(failures),
             "errors": "0", "skipped": str(skipped), "time": f"{time_s:.3f}"}
    root.attrib.update({k: attrs[k] for k in ("name", "tests", "failures", "errors", "time")})
    ts = ET.SubElement(root, "testsuite", attrs)
    for case in cases:
        tc = ET.SubElement(ts, "testcase", {"classname": suite, "name": case.name,
                                            "time": "0"})
        if case.failure is not None:
            ET.SubElement(tc, "failure", {"message": case.failure,
                                          "type": "failed"}).text = case.details or case.failure
        elif case.skipped is not None:
            ET.SubElement(tc, "skipped", {"message": case.skipped})
        elif case.details:
            ET.SubElement(tc, "system-out").text = case.details
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def threshold_cases(summary: dict) -> list[Case]:
    """One case per threshold of a run's summary.json."""
    checks = (summary.get("thresholds") or {}).get("checks") or []
    return [Case(f"{c['metric']} {c['condition']}",
                 None if c["ok"] else f"{c['metric']}: {c.get('reason') or 'failed'}",
                 f"value: {c.get('value')}") for c in checks]


def gate_thresholds(summary: dict, run_dir: str | Path, junit: str | Path | None = None) -> int:
    """Write the thresholds' JUnit file, say which failed; 1 if any did, else 0."""
    name = (summary.get("run") or {}).get("name") or Path(run_dir).name
    path = write_junit(junit or Path(run_dir) / rundir.JUNIT, f"rtmsim.thresholds.{name}",
                       threshold_cases(summary))
    checks = (summary.get("thresholds") or {}).get("checks") or []
    failed = [c for c in checks if not c["ok"]]
    print(f"junit: {path}")
    for c in failed:
        print(f"rtmsim: threshold failed: {c['metric']} {c['condition']}: {c.get('reason')}")
    return 1 if failed else 0


def rule_cases(grades: dict) -> list[Case]:
    """One case per grading rule of `rtmsim clients` (clients.json): fail fails, a
    warning passes with its text, a rule that saw no incident is skipped."""
    cases = []
    for rid, rule in (grades.get("rules") or {}).items():
        name = f"{rid}: {rule.get('title', '')}".rstrip(": ")
        lines = [f"{v.get('client')} at {v.get('ts', 0):.2f} s: {v.get('text')}"
                 for v in [*rule.get("violations", []), *rule.get("warnings", [])]]
        if rule.get("grade") == "fail":
            failing = ", ".join(rule.get("clients_failing") or [])
            cases.append(Case(name, f"{len(rule['violations'])} violations ({failing})",
                              "\n".join(lines)))
        elif rule.get("grade") == "n/a":
            cases.append(Case(name, skipped="no incident to judge"))
        else:
            cases.append(Case(name, details="\n".join(lines)))
    return cases
