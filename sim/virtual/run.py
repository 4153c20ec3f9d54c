"""`rtmsim simulate`: a scenario in virtual time, written as a run directory.

The same scenario file as `rtmsim run`, the same server configuration, fault
schedule and seed, the same user classes and parameters; the run directory has the
same files (`sim.rundir`), with `run.json` marked `"virtual": true` and the model
named, so `rtmsim analyze`, `report`, `compare` and the notebooks read it unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from loadtests.catalog import parse_params
from loadtests.client import DEFAULT_TIMEOUT_S
from loadtests.eventlog import EventLog, log_dir
from loadtests.schedules import target
from loadtests.swarmconfig import DEFAULT_KEY, instance_of
from server.events import JsonlEventLog
from server.ledgers import MemoryLedgers
from server.memory import MemoryBackend

from .. import rundir
from ..scenario import Scenario, run_meta
from .clients import VirtualClient
from .cluster import ClusterBackend, SharedLedgers, VirtualRedis
from .engine import LATENCY_BOUNDS_MS, Engine
from .instance import Instance
from .mirror import Mirror
from .model import Model
from .rng import SmallRandom
from .spawn import class_order

if TYPE_CHECKING:
    from server.connection import Connection

LOG_TAG = "virtual"  # client-events-virtual/
SAMPLE_S = 1.0  # the server timeline's period, as `rtmsim run` samples it
# A real run starts its servers before the swarm, and scenario time 0 (the fault clock,
# set by the swarm) is the swarm's start: billing periods, opened when a server starts,
# are that much ahead of the scenario. Real runs record theirs (`server_lead_s`): ten
# here on 2026-12-07 took 0.50-0.91 s (the Locust process's start-up), median 0.6.
SERVER_LEAD_S = 0.7
# Locust spawns a second's worth of users (spawn_rate) at once, then waits for the
# next second. How far apart: the connects of the first batch of five real runs here
# (30-50 users each, 2026-12-07) began 0.06-0.14 ms apart (median gap), all within
# 3-9 ms; each user only starts its connect before the next is spawned (the handshake
# is the process's work after, `LoadGenerator.connect_us`). 2 ms until then.
SPAWN_GAP_S = 0.0001
DRAIN_S = 2.0  # after the users stop: closes and in-flight replies land
GC_EVERY_S = 60.0  # virtual seconds between collections of the young generations


class Hangup:
    """A stopping user's close reaching its instance: the disconnect, as a job on the
    instance's core. (Every user stops at once: this is one small object a user where
    two closures were.)"""

    __slots__ = ("conn", "instance")

    def __init__(self, instance: Instance, conn: Connection) -> None:
        self.instance = instance
        self.conn = conn

    def __call__(self) -> None:
        self.instance.submit(self.job)

    def job(self) -> None:
        self.instance.disconnected(self.conn, 1000)


class VirtualRun:
    """One scenario in virtual time; `run()` returns "complete" or "interrupted"."""

    def __init__(self, scenario: Scenario, run_dir: Path, model: Model, *,
                 out: TextIO = sys.stdout, progress: bool = True, epoch: float | None = None,
                 log_deliveries: bool = True, queue: str = "heap",
                 behaviours: dict[str, Any] | None = None,
                 load_generator: bool | str = False, even_spawn: bool = False,
                 server_lead_s: float | None = None, mirror: Mirror | None = None) -> None:
        """`load_generator`: model the Locust processes a real run of the scenario
        would use (True or "locust": `swarm.workers` of them, the model's
        `load_generator` costs), to predict what `rtmsim run` measures rather than
        what clients on their own devices would; "raw": one process of the raw load
        client (`model.raw_client`), as the benchmarks load a server. `even_spawn`:
        spread each second's users evenly over the second, as clients on their own
        devices arrive, instead of Locust's burst (`SPAWN_GAP_S` apart).
        `server_lead_s`: how long the servers run before the swarm starts (a real
        run's `server_lead_s`; None: `SERVER_LEAD_S`), which sets where billing periods
        fall in scenario time. `mirror`: the scenario is `mirror.simulated` instances
        of a deployment of `mirror.instances` (`mirror.mirrored` cut it), the others
        mirrors of these."""
        self.scenario = scenario
        self.mirror = mirror
        self.dir = run_dir
        self.model = model
        self.out = out
        self.progress = progress
        self.epoch = time.time() if epoch is None else epoch
        self.log_deliveries = log_deliveries
        self.queue = queue
        self._behaviours = behaviours
        if load_generator not in (False, True, "locust", "raw"):
            raise ValueError(f"load_generator: {load_generator!r}")
        self.load_generator: str | None = ("locust" if load_generator is True
                                           else load_generator or None)
        self.even_spawn = even_spawn
        # the servers' start (billing periods) to scenario time 0
        self.lead = SERVER_LEAD_S if server_lead_s is None else server_lead_s
        self.clients: list[VirtualClient] = []
        self.meta: dict[str, Any] = {}
        self.wall_s = 0.0
        self.busiest_share = 0.0  # of a modelled Locust process, in its busiest second
        self.redis: VirtualRedis | None = None
        self.batch = 0  # the spawn batch whose spawns still count (`_spawn_batches`)
        self.batch_left, self.batch_rate = 0, 0.0  # its spawns to come, and its rate

    # -- building --------------------------------------------------------------------------

    def _build(self) -> None:
        sc = self.scenario
        config = sc.config
        self.log = EventLog(log_dir(self.dir, LOG_TAG))
        self.origin = self.epoch + self.lead
        self.engine = engine = Engine(self.model, epoch=self.epoch, origin=self.origin,
                                      seed=config.server.seed, log=self.log,
                                      timeout_s=DEFAULT_TIMEOUT_S,
                                      log_deliveries=self.log_deliveries,
                                      queue=self.queue,
                                      **self._load_processes())
        self.events = JsonlEventLog(self.dir / rundir.SERVER_EVENTS)
        n = config.server.instances
        if config.server.backend == "redis" or n > 1:
            self.redis = redis = VirtualRedis(engine)
            if self.mirror is not None:
                redis.copies = self.mirror.factor
                redis.rng = random.Random(f"{config.server.seed}:mirror")
            ledgers: MemoryLedgers = SharedLedgers(config, self.epoch, redis)
            backend = functools.partial(ClusterBackend, redis=redis)
            for at_s, down_s in sc.redis_blips:
                down, _ = redis.blip(self.lead + at_s, down_s)
                self.meta.setdefault("redis_blips", []).append(
                    {"at_s": round(down - self.lead, 3), "down_s": down_s})
        else:
            ledgers, backend = MemoryLedgers(config, self.epoch), MemoryBackend
        engine.instances = [Instance(engine, config, self.model, i, ledgers, self.events,
                                     instance_id=f"i{i}" if n > 1 else None, backend=backend)
                            for i in range(n)]
        if config.server.backend == "redis" or n > 1:
            redis.instances = engine.instances
        if self._behaviours is None:
            from loadtests.behaviours import BEHAVIOURS  # noqa: PLC0415  (not built yet)
            self._behaviours = BEHAVIOURS
        self.params = {}
        self.bases = {}
        # What every user of a class is given, made once: a million users each held
        # their own (a credential tuple, a bound method of the clock: 120 bytes).
        self.credentials = {}
        self.clock = engine.clock
        for name, table in sc.swarm.classes.items():
            self.params[name] = params = parse_params(name, table)
            self.bases[name] = table.get("class", name)
            self.credentials[name] = ("key", params.key or DEFAULT_KEY)
        self.order = class_order({n: (p.weight, p.fixed_count)
                                  for n, p in self.params.items()})

    def _spawn(self, batch: int) -> None:
        if batch != self.batch:  # a later target replaced this spawn, as Locust does
            return
        self.batch_left -= 1
        name = next(self.order, None)
        if name is None:  # every class at its fixed_count: Locust spawns no more
            return
        engine = self.engine
        index = len(self.clients) + 1
        params = self.params[name]
        user = f"{name}-virtual-{index}"
        instances = engine.instances
        instance = instances[instance_of(index, len(instances))]
        client = VirtualClient(engine, user, name, instance, self.credentials[name],
                               engine.process_core(index))
        seed = self.scenario.config.server.seed
        behaviour = self._behaviours[self.bases[name]](
            params, user_id=user, seed=seed, model=self.scenario.swarm.model,
            clock=self.clock, client=client, rng=SmallRandom(f"{seed}:{user}"))
        self.clients.append(client)
        client.drive(behaviour)

    # -- the schedule ---------------------------------------------------------------------------

    def _schedule(self) -> None:
        sc = self.scenario
        swarm = sc.swarm
        engine = self.engine
        self.load_start = self.lead
        self.load_end = self.load_start + swarm.duration_s
        if swarm.shape:
            engine.at(self.load_start, self._shape_tick)
        else:
            self._spawn_batches(swarm.users, swarm.spawn_rate, self.load_start)
        for instance in engine.instances:
            self._plan_strikes(instance)
        engine.at(self.load_end, self._stop_users)
        self._sample_at(0.0)

    def _spawn_batches(self, users: int, rate: float, start: float) -> None:
        """`users` more, as Locust spawns them: `rate` at once each second (a few ms
        apart), the rest a second later. A new batch replaces the spawns of the last
        one still to come (Locust's runner restarts its spawning on every new target,
        from the users it has): a shape's tick each second would otherwise add its
        shortfall again on top of the spawns still on their way. One callable for the
        whole batch (a million spawns hold one, not a million)."""
        self.batch += 1
        self.batch_left, self.batch_rate = users, rate
        spawn = functools.partial(self._spawn, self.batch)
        per = max(1, int(rate))
        # mirrored, each simulated user stands for one on each of `factor` instances,
        # spawned between ours: ours are that much further apart
        factor = 1 if self.mirror is None else self.mirror.factor
        gap = 1.0 / per if self.even_spawn else SPAWN_GAP_S * factor
        for i in range(users):
            self.engine.at(start + i // per + (i % per) * gap, spawn)

    def _shape_tick(self) -> None:
        """Follow the shape as Locust's runner does, once a second."""
        swarm = self.scenario.swarm
        t = self.engine.env.now - self.load_start
        want = target(swarm.shape, t, {"duration_s": swarm.duration_s, **swarm.shape_params})
        if want is None:
            return
        users, rate = want
        live = [c for c in self.clients if not c.stopped]
        if users > len(live):
            # The batch on its way already spawns exactly this: keep it (restarting it
            # each second would schedule a ramp's spawns over and over).
            if (users - len(live), rate) != (self.batch_left, self.batch_rate):
                self._spawn_batches(users - len(live), rate, self.engine.env.now)
        else:
            self.batch += 1  # a lower target (or the same) stops the spawning
            for client in live[users:]:
                self._stop_one(client)
        self.engine.after(1.0, self._shape_tick)

    def _plan_strikes(self, instance: Instance) -> None:
        """The instance's next one-shot fault: a job on its core at the fault's time;
        the one after is planned once that job has run.

        Not when it is queued: until the job runs, the fault is unfired, so planning at
        once would find it due again, now, and (the core busy, the queue not advancing
        within one instant) loop at one virtual time, queueing a strike per turn.
        That is what stopped a million clients at the first deploy wave.
        """
        at = instance.next_strike_at()
        if at is None:
            return

        def strike_job() -> None:
            instance.strike_due()
            self.engine.soon(lambda: self._plan_strikes(instance))
        self.engine.at(at, lambda: instance.submit(strike_job))

    def _sample_at(self, t: float) -> None:
        def sample() -> None:
            now = self.engine.clock()
            lines = [json.dumps({"t": now, "instance": name, "stats": inst.stats()})
                     for name, inst in self._named()]
            self.timeline.write("\n".join(lines) + "\n")
            if self.engine.env.now + SAMPLE_S <= self.load_end + DRAIN_S:
                self._sample_at(self.engine.env.now + SAMPLE_S)
        self.engine.at(t, sample)

    def _named(self) -> list[tuple[str, Instance]]:
        return [(inst.service.instance_id or f"i{k}", inst)
                for k, inst in enumerate(self.engine.instances)]

    def _stop_users(self) -> None:
        for client in self.clients:
            self._stop_one(client)

    def _stop_one(self, client: VirtualClient) -> None:
        """Locust's stop: the user's greenlet is killed and `on_stop` closes it."""
        client.stop()
        conn = client.conn
        if conn is None or not client.view.is_open:
            return
        client.view.closed(1000)
        self.engine.to_server(Hangup(client.instance, conn), client.core)
        client.note("disconnect", "client")

    # -- running ---------------------------------------------------------------------------------

    def run(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / rundir.SCENARIO).write_text(self.scenario.source, encoding="utf-8")
        self.meta.update(started=self.epoch, origin=self.epoch + self.lead, virtual=True)
        if self.mirror is not None and self.mirror.factor > 1:
            self.meta["mirror"] = self.mirror.meta()
        self._write_meta("running")
        self._build()
        status = "complete"
        self.timeline = open(self.dir / rundir.SERVER_TIMELINE, "w", encoding="utf-8")  # noqa: SIM115
        wall = time.monotonic()
        try:
            self._schedule()
            self._drive(self.load_end + DRAIN_S)
        except KeyboardInterrupt:
            status = "interrupted"
            print("\nrtmsim: interrupted: keeping the partial virtual run", file=self.out,
                  flush=True)
        finally:
            self.wall_s = time.monotonic() - wall
            self.timeline.close()
            self.log.close()
            self.events.close()
            stats = {name: inst.stats() for name, inst in self._named()}
            (self.dir / rundir.SERVER_STATS).write_text(json.dumps(stats, indent=2,
                                                                   sort_keys=True))
            self.meta["ended"] = self.engine.clock()
            self._write_meta(status)
        return status

    def _drive(self, until: float) -> None:
        """Run the queue a virtual second at a time, showing progress.

        The cyclic garbage collector is off meanwhile, and only the young generations
        are collected, once a minute of virtual time: a full collection walks every
        live object, and with 20,000 users they took a third of the wall time (and
        the engine's objects live until the run ends anyway). Once a virtual second,
        the young collections still took a tenth of a 50,000-user run (each walks
        what was made since the last, and most of it lives on) and found 418 cyclic
        objects in all.
        """
        env = self.engine.env
        shown = time.monotonic()
        events = 0
        started = time.monotonic()
        t = 0.0
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            cores = self.engine.cores
            busy = [c.busy_s for c in cores]
            while t < until:
                t = min(until, t + 1.0)
                events += env.run(until=t)
                if t % GC_EVERY_S == 0:
                    gc.collect(1)
                if cores:  # as `rtmsim run` samples its Locust processes, each second
                    now = [c.busy_s for c in cores]
                    self.busiest_share = max(self.busiest_share,
                                             *(b - a for a, b in zip(busy, now, strict=True)))
                    busy = now
                shown = self._progress(t, until, events, started, shown)
        finally:
            self.engine.events_run = events
            if was_enabled:
                gc.enable()

    def _progress(self, t: float, until: float, events: int, started: float,
                  shown: float) -> float:
        """One progress line every 2 s of wall time (and at the end); when it was shown."""
        mono = time.monotonic()
        if not self.progress or (mono - shown < 2 and t < until):
            return shown
        wall = mono - started
        conns = sum(len(i.service.connections) for i in self.engine.instances)
        self.out.write(f"  virtual {t - self.lead:7.1f}/{self.scenario.swarm.duration_s:g} s"
                       f"  wall {wall:6.1f} s  events/s {events / max(wall, 1e-9):9.0f}  "
                       f"connections {conns:7d}\n")
        self.out.flush()
        return mono

    def _load_processes(self) -> dict[str, Any]:
        """The engine's arguments for the modelled load processes."""
        if self.load_generator is None:
            return {"load_generator": 0}
        if self.load_generator == "raw":
            return {"load_generator": 1, "load_costs": self.model.raw_client}
        return {"load_generator": self.scenario.swarm.workers,
                "load_costs": self.model.load_generator}

    def _load_generator_meta(self) -> dict[str, Any] | None:
        """What run.json says of the modelled load processes (None: not modelled)."""
        if self.load_generator is None:
            return None
        args = self._load_processes()
        return {"kind": self.load_generator, "processes": args["load_generator"],
                "colocated": self.model.colocated,
                **dataclasses.asdict(args["load_costs"])}

    def _delivery_histogram(self) -> dict[str, Any] | None:
        """Without a log row a delivery (`--no-deliveries`), what the analysis reads
        instead: the deliveries by publish-to-read latency (counts[i]: at or under
        bounds_ms[i], above the one before; the last, above every bound)."""
        if self.log_deliveries or not hasattr(self, "engine"):
            return None
        return {"bounds_ms": LATENCY_BOUNDS_MS.tolist(),
                "counts": self.engine.latency_hist.tolist()}

    def _redis_meta(self) -> dict[str, Any] | None:
        """redis-server's modelled CPU, and what other processes took of the
        instances' cores (`Model.colocated`)."""
        engine = getattr(self, "engine", None)
        redis = getattr(self, "redis", None)
        if engine is None:
            return None
        lent = {i.service.instance_id or str(i.index): round(i.lent_s, 6)
                for i in engine.instances}
        return {"redis_cpu_s": round(redis.busy_s, 6) if redis is not None else None,
                "colocated": self.model.colocated, "lent_cpu_s": lent}

    def _write_meta(self, status: str) -> None:
        self.meta.update(run_meta(self.scenario), status=status)
        if self.load_generator and hasattr(self, "engine"):  # what `rtmsim run` measures
            cores = self.engine.cores
            self.meta["load_generator"] = {
                "processes": len(cores), "cpu_s": round(sum(c.busy_s for c in cores), 3),
                "busiest_share": round(self.busiest_share, 3), "processes_seen": len(cores)}
        self.meta["engine"] = {
            "kind": "virtual", "model": self.model.name, "wall_s": round(self.wall_s, 3),
            "events": self.engine.events_run if hasattr(self, "engine") else 0,
            "server_lead_s": self.lead,
            "deliveries": self.engine.deliveries if hasattr(self, "engine") else 0,
            "deliveries_logged": self.log_deliveries,
            "delivery_histogram": self._delivery_histogram(),
            "load_generator": self._load_generator_meta(), "host": self._redis_meta()}
        (self.dir / rundir.RUN).write_text(json.dumps(self.meta, indent=2, sort_keys=True,
                                                      default=str))
