"""`python -m bench`'s command line: what every subcommand must accept."""

from __future__ import annotations

import argparse
import sys

import pytest

from bench import __main__ as bench_main
from bench.procs import BenchError, json_child


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = bench_main.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("flag", ["--quiet", "--json"])
def test_every_subcommand_takes_the_flags_main_reads(flag):
    # run() reads args.quiet and main() args.json for every command: calibrate-check
    # had neither, and died in a traceback after its benchmarks had run
    missing = [name for name, p in _subcommands().items()
               if flag not in p._option_string_actions]
    assert not missing, f"no {flag} on: {missing}"


def test_a_json_child_gives_its_result_and_its_progress():
    lines: list[str] = []
    code = "import sys, json; print('step 1', file=sys.stderr); print(json.dumps({'n': 3}))"
    assert json_child([sys.executable, "-c", code], "child", lines.append) == {"n": 3}
    assert lines == ["step 1"]


@pytest.mark.parametrize(("code", "message"), [
    ("import sys; print('it broke', file=sys.stderr); sys.exit(3)", "child exited 3: it broke"),
    ("print('not json')", "child printed no JSON"),
])
def test_a_failed_json_child_is_one_line_naming_it(code, message):
    with pytest.raises(BenchError, match=message):
        json_child([sys.executable, "-c", code], "child", lambda _: None)
