"""examples/ci: the workflow's rtmsim commands are real commands with real files."""

from __future__ import annotations

import shlex

import pytest
import yaml
from serverproc import ROOT

from sim.cli import build_parser

WORKFLOW = ROOT / "examples" / "ci" / "github-actions.yml"


def rtmsim_steps() -> list[list[str]]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    steps = [s for job in doc["jobs"].values() for s in job["steps"]]
    return [shlex.split(s["run"]) for s in steps if s.get("run", "").startswith("rtmsim ")]


def test_the_workflow_gates_on_thresholds_clients_and_a_baseline():
    commands = [argv[1] for argv in rtmsim_steps()]
    assert commands == ["run", "clients", "compare"]


@pytest.mark.parametrize("argv", rtmsim_steps(), ids=lambda a: a[1])
def test_each_rtmsim_step_parses_and_names_files_that_exist(argv):
    args = build_parser().parse_args(argv[1:])  # a bad flag would exit 2 here
    assert args.junit, "every gate step writes JUnit for the checks tab"
    if args.command in ("run", "clients"):
        assert (ROOT / args.scenario).is_file()
    if args.command == "clients":
        script = shlex.split(args.cmd)[1]
        assert (ROOT / script).is_file()
