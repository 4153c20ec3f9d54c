"""How late a Locust process's timers fire: `[model.load_generator] timer_ms` and
`timer_wake_curve`, measured in a gevent loop of its own on the load CPUs.

A user's `sleep` in a Locust process is a libev timer. An idle loop waits for its first
timer in `epoll_wait`, whose timeout is whole milliseconds rounded up (libev's
`EV_TS_TO_MSEC`), then takes a while longer to run again, the longer it slept (timer
slack, a halted vCPU's wake-up). Measured here: a sleep of 25 ms lasts 25.3 ms, one of
5.3 ms 6.1 ms. Users whose timers end in the same millisecond therefore run together,
and a closed loop's period is longer than its sleep: both shape the convoys of a real
run (`sim.virtual.loadgen`).

`python -m sim.calibrate.timers` prints, for each idle time of `IDLE_MS`, the median of
how much later than its whole milliseconds a sleep ending there ran.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gevent  # the child's loop is gevent's (importing it patches nothing)

from .servers import CalibrationError

TIMER_MS = 1.0  # libev's epoll backend waits whole milliseconds (EV_TS_TO_MSEC)
IDLE_MS = (1.0, 3.333, 10.0, 50.0, 200.0)  # the server's wake curve's idle times
REPEATS_S = 0.6  # about this long asleep at each idle time (at least 5 sleeps)
LEAD_MS = 0.3  # each sleep ends this far before a whole millisecond
TIMEOUT_S = 60.0


def sleep_points() -> list[list[float]]:
    """In a gevent loop (this process): [idle ms, us past the whole ms] medians."""
    points = []
    for idle_ms in IDLE_MS:
        wait = idle_ms - LEAD_MS if idle_ms > 1.0 else idle_ms * 0.7
        whole = math.ceil(wait / TIMER_MS - 1e-9) * TIMER_MS
        late = []
        for _ in range(max(5, math.ceil(REPEATS_S * 1e3 / idle_ms))):
            start = time.perf_counter()
            gevent.sleep(wait / 1e3)
            late.append((time.perf_counter() - start) * 1e3 - whole)
        late.sort()
        points.append([whole, round(max(0.0, late[len(late) // 2]) * 1e3, 1)])
    return points


def measure(cpus: set[int] | None, root: Path) -> dict[str, Any]:
    """The points, from a child process pinned to `cpus` (the Locust processes')."""
    cmd = [sys.executable, "-m", "sim.calibrate.timers"]
    try:
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    except OSError as exc:
        raise CalibrationError(f"the timer probe did not start: {exc.strerror or exc}"
                               ) from None
    if cpus:
        os.sched_setaffinity(proc.pid, cpus)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise CalibrationError("the timer probe did not finish") from None
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["(no output)"])[-1]
        raise CalibrationError(f"the timer probe failed: {last}")
    points = [[float(ms), float(us)] for ms, us in json.loads(out)]
    # whole milliseconds are ascending and distinct by construction of IDLE_MS
    return {"timer_ms": TIMER_MS, "timer_wake_curve": points,
            "method": f"gevent.sleep ending {LEAD_MS} ms before a whole millisecond: "
                      "the median of how much later than that millisecond it ran"}


if __name__ == "__main__":
    print(json.dumps(sleep_points()))
