"""CPU time of processes on this machine, read from /proc (Linux).

From `/proc/PID/task/*/schedstat` (nanoseconds on the CPU, per thread) rather than
`/proc/PID/stat`'s utime + stime, which count 10 ms ticks: a calibration step at test
scale uses a few milliseconds of server CPU.
"""

from __future__ import annotations

import contextlib
import os

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """CPU seconds all threads of `pid` have run (ns-precise), 0.0 once it is gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    if total == 0:  # no schedstat (a kernel without CONFIG_SCHED_INFO): ticks, then
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total / 1e9


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descended from it (Locust's workers), while alive."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError), \
                    open(f"/proc/{p}/task/{task}/children") as f:
                todo += [int(c) for c in f.read().split()]
    return found


def tree_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of `pid` and each of its descendants, by pid."""
    return {p: process_cpu_s(p) for p in process_tree(pid)}


class TreeCpu:
    """A process tree's CPU, sampled now and then: the total it used between the first
    and the last sample, and the busiest process's share of a core over the busiest
    interval between two samples (1.0: a whole core, the process was the bottleneck)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.last_t: float | None = None
        self.busiest_share = 0.0

    def sample(self, now: float) -> None:
        cpu = tree_cpu_s(self.pid)
        dt = None if self.last_t is None else now - self.last_t
        for pid, used in cpu.items():
            # A process born since the last sample used all its CPU since then.
            self.first.setdefault(pid, used if self.last_t is None else 0.0)
            before = self.last.get(pid, self.first[pid])
            if dt is not None and dt > 0:
                self.busiest_share = max(self.busiest_share, (used - before) / dt)
            self.last[pid] = used
        self.last_t = now

    def summary(self) -> dict[str, float | int]:
        return {"cpu_s": round(sum(self.last[p] - self.first[p] for p in self.last), 3),
                "busiest_share": round(self.busiest_share, 3),
                "processes_seen": len(self.last)}
