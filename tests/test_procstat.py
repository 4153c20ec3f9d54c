"""CPU of a process tree from /proc: what `rtmsim run` records of its Locust processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from sim.procstat import TreeCpu, process_cpu_s, process_tree, tree_cpu_s

SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 30: pass\n"
WAIT_S = 20.0  # bound on every wait below


def _until(predicate) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_tree_counts_its_children_and_their_cpu() -> None:
    # A parent that starts a spinning child and waits for it.
    parent = subprocess.Popen([sys.executable, "-c",
                               f"import subprocess, sys; subprocess.run([sys.executable, "
                               f"'-c', {SPIN!r}])"])
    children: list[int] = []
    try:
        _until(lambda: len(process_tree(parent.pid)) == 2)
        child = process_tree(parent.pid)[1]
        children.append(child)
        meter = TreeCpu(parent.pid)
        meter.sample(time.monotonic())
        start = process_cpu_s(child)
        # 0.25 s of spinning between the samples: over 0.05 s the jitter of reading a
        # clock and /proc at slightly different instants once made a one-thread
        # spinner look 5.3% busier than a core.
        _until(lambda: process_cpu_s(child) > start + 0.25)
        meter.sample(time.monotonic())
        summary = meter.summary()
        assert summary["processes_seen"] == 2
        assert summary["cpu_s"] >= 0.25 and 0 < summary["busiest_share"] <= 1.05
        assert set(tree_cpu_s(parent.pid)) == {parent.pid, child}
    finally:
        for pid in children:  # before the parent: once it is gone, so is the link
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()


def test_a_gone_process_has_no_cpu_and_no_children() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert process_cpu_s(proc.pid) == 0.0
    assert process_tree(proc.pid) == [proc.pid]
