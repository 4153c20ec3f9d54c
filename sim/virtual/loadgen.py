"""The load generator of a real run, in virtual time: one FIFO core per Locust process.

Under `rtmsim run` every user lives in a Locust process: one gevent loop on one core
that builds, writes, reads and reports every frame its users exchange. What the users
measure is the server's time plus that process's: a reply waits behind the deliveries
read before it, and a closed loop's rate is bounded by the process, not the server.
`--load-generator` puts that process in the model (`model.LoadGenerator` gives its
costs); without it each virtual user is a client on its own device, which is what a
capacity plan wants.

A core here is only a clock: `free_at`, the virtual time it has done all the work given
it. Work is given in virtual-time order (a frame is read when it arrives, written when
its user yields it), so that clock is a FIFO queue. On one machine with the server
(`Model.colocated`) the process has no core of its own: each piece of its work is also
handed to `steal`, which puts it on the least busy instance core, where it delays the
server's jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .model import LoadGenerator


class ProcessCore:
    """One Locust process's core: when the frames its users send leave, and when the
    frames they receive have been read."""

    __slots__ = ("busy_s", "delivery_s", "free_at", "receive_s", "send_s", "steal")

    def __init__(self, costs: LoadGenerator,
                 steal: Callable[[float, float], None] | None = None) -> None:
        self.send_s = costs.send_us / 1e6
        self.receive_s = costs.receive_us / 1e6
        self.delivery_s = costs.delivery_us / 1e6
        self.free_at = 0.0
        self.busy_s = 0.0  # CPU given
        self.steal = steal  # (start, seconds): the same work on a shared core

    def sent(self, now: float) -> float:
        """A frame a user writes at `now`: when it leaves the process."""
        start = self.free_at if self.free_at > now else now
        self.free_at = start + self.send_s
        self.busy_s += self.send_s
        if self.steal is not None:
            self.steal(start, self.send_s)
        return self.free_at

    def read(self, arrival: float, cost: float) -> float:
        """A frame that reached the process at `arrival`: when it has been read."""
        free = self.free_at
        start = free if free > arrival else arrival
        self.free_at = start + cost
        self.busy_s += cost
        if self.steal is not None:
            self.steal(start, cost)
        return self.free_at

    def read_many(self, arrivals: Sequence[float], cost: float) -> list[float]:
        """`read` for each of `arrivals` (ascending): when each has been read."""
        free = self.free_at
        done = []
        for a in arrivals:
            free = (free if free > a else a) + cost
            done.append(free)
        self.free_at = free
        self.busy_s += cost * len(done)
        if self.steal is not None and done:
            self.steal(done[0] - cost, cost * len(done))
        return done


def process_cores(costs: LoadGenerator, processes: int,
                  steal: Callable[[float, float], None] | None = None) -> list[ProcessCore]:
    """The cores of `processes` load processes with these costs."""
    return [ProcessCore(costs, steal) for _ in range(max(1, processes))]
