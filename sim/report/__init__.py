"""What a run directory becomes for people: the terminal summary, report.html, the
charts, and the comparison of several runs.

    formatting   cell text: numbers, times, a code's name, meaning and guidance
    page         HTML building blocks and the stylesheets (pages are self-contained)
    text         the terminal summary, one function per report section
    charts       one PNG per question, each `(run, out_dir) -> Path`
    run_report   report.html and `build_all` (summary.json + charts + report.html)
    compare      `rtmsim analyze` and `rtmsim compare` (compare.html, compare.json)
    junit        JUnit XML for CI: thresholds, client grading rules, the regression gate

Every number comes from `sim.analysis`; nothing here computes a rate or a percentile.
The names below are the entry points; the modules hold the rest.
"""

from __future__ import annotations

from .junit import gate_thresholds, write_junit
from .run_report import build_all, require_run_dir, write_report
from .text import print_summary, summary_lines

__all__ = ["build_all", "gate_thresholds", "print_summary", "require_run_dir",
           "summary_lines", "write_junit", "write_report"]
