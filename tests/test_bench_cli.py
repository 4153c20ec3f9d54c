"""`python -m bench`'s command line: what every subcommand must accept."""

from __future__ import annotations

import argparse

from bench import __main__ as bench_main


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = bench_main.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_subcommand_takes_quiet():
    # run() reads args.quiet for every command: one without it died in a traceback
    missing = [name for name, p in _subcommands().items()
               if "--quiet" not in p._option_string_actions]
    assert not missing, f"no --quiet on: {missing}"
