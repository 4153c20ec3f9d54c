"""`python -m bench`'s command line: what every subcommand must accept."""

from __future__ import annotations

import argparse

import pytest

from bench import __main__ as bench_main


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
