"""The notebooks run, every cell, on fresh run directories that the harness writes here.

Three short scenarios (`tests/scenarios/nb-*.toml`: faults with a deploy and a kick, a
small retry bake-off, a step ramp) run side by side through the real `Runner`; each
notebook is then executed with nbclient (papermill-style: a cell with the parameters is
injected after the one tagged `parameters`), and any failing cell fails the test.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from serverproc import ROOT

from sim.run import Runner
from sim.scenario import load_scenario

NOTEBOOKS = ROOT / "notebooks"
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
CELL_TIMEOUT_S = 120
NAMES = ("error_rates", "retry_behavior", "capacity_planning")

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/<kind>/<run>: nb-faults, nb-retry and nb-ramp, run side by side.

    One results directory per kind, so a notebook left to pick "the newest run under
    RESULTS" finds the right one.
    """
    root = tmp_path_factory.mktemp("results")

    def run(kind: str) -> None:
        scenario = load_scenario(SCENARIOS / f"nb-{kind}.toml")
        out = io.StringIO()
        status = Runner(scenario, root / kind / scenario.name, out=out, progress=False).run()
        assert status == "complete", out.getvalue()

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(run, ("faults", "retry", "ramp")))
    return root


def execute(name: str, **params: object) -> str:
    """Run notebooks/<name>.ipynb with `params` injected; all text output, joined."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, injected)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # CellExecutionError on the first failing cell
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            texts += [out.get("text", ""), data.get("text/plain", ""),
                      data.get("text/markdown", "")]
    return "\n".join(str(t) for t in texts)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_stripped_with_a_question_and_parameters(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    first, params = nb.cells[0], nb.cells[1]
    assert first.cell_type == "markdown" and "**Question:**" in first.source
    assert params.cell_type == "code" and params.metadata.get("tags") == ["parameters"]
    assert "RUN_DIR" in params.source
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.id
    assert nb.metadata.kernelspec.name == "python3"


def test_error_rates_on_the_newest_run(results: Path) -> None:
    text = execute("error_rates", RUN_DIR="", RESULTS=str(results / "faults"))
    assert f"run: {results / 'faults' / 'nb-faults'}" in text
    assert "backend_error" in text and "invalid_channel" in text
    assert "service error rate per 1000 requests by users, across 1 runs" in text


def test_retry_behavior_on_two_runs_flags_the_looper(results: Path) -> None:
    text = execute("retry_behavior", RUN_DIRS=[str(results / "retry" / "nb-retry"),
                                               str(results / "faults" / "nb-faults")])
    assert "FLAGGED nb-retry: Looper-" in text
    assert "retried channel_reserved" in text
    assert "FLAGGED nb-faults" not in text  # the default policy follows the guidance


def test_capacity_planning_sets_the_model_beside_the_ramp_and_answers_from_the_planner(
        results: Path) -> None:
    text = execute("capacity_planning", RUN_DIRS=[], RESULTS=str(results / "ramp"),
                   SCENARIO="nb-ramp", TARGET_CONNECTIONS=100, TARGET_MSGS_PER_S=50,
                   MAX_INSTANCES=2, STEADY_S=2.0, RECOVER_S=0.0, PLAN_JOBS=1)
    assert "nb-ramp: scenario 'nb-ramp', shape step_ramp" in text
    # The same axes: the ramp replayed in virtual time, its steps measured alike.
    assert "nb-ramp: what differs between the three curves" in text
    # Step 3's 6 publishers at 10 a second, read from the server's samples inside it
    # (interpolated across the sample after the load stopped it read 54.4).
    assert ("knee, model, clients on their own devices: sustainable: 12 users, "
            "12 connections, 60.0 msgs/s (step 3)") in text
    # The planner's answer, its headroom, its assumptions and its points.
    assert ("answer: 1 instance(s) (memory backend) for 100 connections, 50 msgs/s, "
            "fan-out 50") in text
    assert "headroom: keeps the limits up to" in text
    assert "- the load generator is not modelled: clients are on their own devices" in text
    assert "offered_msgs_per_s" in text


def test_a_notebook_without_runs_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CellExecutionError) as err:
        execute("error_rates", RUN_DIR="", RESULTS=str(tmp_path))
    assert "Nothing to analyse: no run directory under" in str(err.value)
    assert "rtmsim run scenarios/default.toml" in str(err.value)
