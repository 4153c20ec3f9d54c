"""Several instances behind one Redis, in virtual time.

`ClusterBackend` does what `server.redis_backend.RedisBackend` does, with the same
visible rules, on a `VirtualRedis` that is a dict and a clock instead of a server:

- a publish is delivered, a Redis hop later, by every other instance through its own
  hub: the sender's core pays `redis.send_us`, each other's `redis.receive_us`, and
  redis-server `redis.server_us` of its own core (a FIFO queue between the two
  latencies; with `Model.colocated`, of the least busy instance core);
- the sender awaits Redis as `RedisBackend` does: the quota charge (a Lua script) and
  the PUBLISH each take a round trip, and only then does the local hub deliver and the
  ack go out; the instance serves other jobs meanwhile (each await resumes as a job);
- `send` reaches the peer's connections on every instance, and counts them (a round
  trip to read where the peer is, and one for the PUBLISH when it is elsewhere);
- presence is global: `joined`/`left` go out once per peer across instances, and a
  subscribe's snapshot lists peers on every instance;
- while Redis is down (a scenario's `redis_blips`), subscribe, unsubscribe, publish
  and send fail with `backend_error`, as do quota charges; connection admission fails
  open, as `RedisLedgers.admit_connection` does. The blip's timing is the harness's
  (`VirtualRedis.blip`), and the link is back a reconnect after Redis is. The real
  link's flapping after a restart (seen in a real run) is not modelled.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from server.actions import Direct, Message
from server.backend import BackendError
from server.hub import Hub, PresenceChange, presence_entry
from server.ledgers import MemoryLedgers
from server.patterns import subscription_key

from .instance import Hold

if TYPE_CHECKING:
    from server.connection import Connection

    from .engine import Engine
    from .instance import Instance

DOWN = "backend unavailable (redis down)"
RECONNECT_S = 0.25  # RedisLink's backoff (0.05 s doubling to 0.4 s), on average
HARNESS_LAG_S = 0.5  # rtmsim run acts on a blip at its next 1 s sample
REDIS_START_S = 0.5  # a restarted redis-server until it accepts connections
# A mirror's copy of a message is published up to this much later (uniformly): long
# enough that the copies do not reach an instance as one burst (at a million clients an
# instance receives a message a millisecond; ten at one instant would be one wake-up
# where the deployment has ten), short enough that they meet the storms the original
# met. Measured at 200,000 clients on 4 instances against one in full (2026-12-08):
# 0 s gave 10% less instance CPU than the deployment run in full; 1 s, twice as many
# deliveries over 31.6 ms (copies of messages sent before a wave landing in its strike);
# 0.1 s, the CPU within 1% and that share 1.08% against 1.09%.
MIRROR_SPREAD_S = 0.1


class VirtualRedis:
    """The shared state: which instance holds which peer, global presence, up or down."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.up = True
        self.instances: list[Instance] = []
        # app -> peer -> where its connections are: an instance's index (its one
        # connection), or {index: connections} (a million peers with one connection
        # each would otherwise hold a million one-entry dicts and key tuples).
        self.peers: dict[str, dict[str, int | dict[int, int]]] = {}
        # (app, wildcard, key) -> peer -> {instance: metadata}
        self.presence: dict[tuple[str, bool, str], dict[str, dict[int, Any]]] = {}
        self.free_at = 0.0  # redis-server's core: when it has done all it was given
        self.busy_s = 0.0  # its CPU
        # `mirror.Mirror.factor`: each instance stands for this many, and a channel
        # message for as many publishes (its mirrors' copies, spread by `rng`)
        self.copies = 1
        self.rng = random.Random(0)

    def peer_counts(self, app_id: str, peer_id: str) -> dict[int, int]:
        """{instance index: connections} of a peer."""
        where = self.peers.get(app_id, {}).get(peer_id)
        if where is None:
            return {}
        return {where: 1} if isinstance(where, int) else where

    def peer_added(self, app_id: str, peer_id: str, index: int) -> None:
        peers = self.peers.setdefault(app_id, {})
        where = peers.get(peer_id)
        if where is None:
            peers[peer_id] = index
        elif isinstance(where, int):
            peers[peer_id] = {index: 2} if where == index else {where: 1, index: 1}
        else:
            where[index] = where.get(index, 0) + 1

    def peer_removed(self, app_id: str, peer_id: str, index: int) -> None:
        peers = self.peers.get(app_id, {})
        where = peers.get(peer_id)
        if where is None:
            return
        if isinstance(where, int):
            if where == index:
                del peers[peer_id]
            return
        n = where.get(index, 0) - 1
        if n > 0:
            where[index] = n
        else:
            where.pop(index, None)
            if not where:
                del peers[peer_id]

    def blip(self, at: float, down_s: float) -> tuple[float, float]:
        """A scenario's blip at `at` (virtual s) for `down_s`, as `rtmsim run` makes it:
        its once-a-second sampler kills redis-server half a period late on average
        and starts it again as late, and a new redis-server takes a moment to accept;
        the link is back a reconnect after that. The (down, up) virtual times."""
        down = at + HARNESS_LAG_S
        up = at + down_s + HARNESS_LAG_S + REDIS_START_S
        self.engine.at(down, lambda: setattr(self, "up", False))
        self.engine.at(up + RECONNECT_S, lambda: setattr(self, "up", True))
        return down, up

    def hop(self, source: Instance, job: Any, copies: int = 1) -> float:
        """`job(instance)` on every other instance, a Redis round later, after its hop;
        the virtual time Redis's reply is back at `source` (as the others get it).

        One event for all of them, not one each (19 a publish at 20 instances): they
        arrive at the same instant and are submitted in instance order, as the
        consecutive events were, each a job on its own core. On the way redis-server
        spends `server_us`: on its own core, a FIFO queue (at 37 us a message it runs
        out near 27,000 messages/s), or as work lent to an instance core.

        `copies` (a channel message under `mirror`): the mirrors' publishes of it,
        `copies - 1` more, each at its own moment (`MIRROR_SPREAD_S`), reach every
        instance here, `source` too.
        """
        latency = self.engine.model.redis.latency_ms / 1000.0
        for _ in range(copies - 1):
            shift = self.rng.random() * MIRROR_SPREAD_S
            self.engine.at(source.cursor + shift, lambda shift=shift: self._forward(
                self.engine.env.now + latency, self.instances, job, shift))
        others = [other for other in self.instances if other is not source]
        if not others:
            return source.cursor + 2 * latency
        return self._forward(source.cursor + latency, others, job)

    def _forward(self, reached: float, targets: list[Instance], job: Any,
                 shift: float = 0.0) -> float:
        """A message reaching redis-server at `reached`, forwarded to `targets`; when
        its reply is back at the sender. `shift`: how much later than the message's
        own publish this copy of it was made (its latency is counted from then)."""
        engine = self.engine
        latency = engine.model.redis.latency_ms / 1000.0
        cost = engine.model.redis.server_us / 1e6

        def forward(done: float) -> None:
            engine.at(done + latency, lambda: _arrived(targets, job, shift))
        if cost <= 0:
            forward(reached)
            return reached + latency
        if engine.model.colocated:  # the core it borrows is not known yet: no queue
            engine.at(reached, lambda: engine.host_core().lend(cost, forward))
            return reached + cost + latency
        start = self.free_at if self.free_at > reached else reached
        self.free_at = start + cost
        self.busy_s += cost
        forward(self.free_at)
        return self.free_at + latency

    def round_trip_s(self) -> float:
        """A command's round trip to Redis and back (a quota charge's Lua script)."""
        return 2 * self.engine.model.redis.latency_ms / 1000.0


def _arrived(others: list[Instance], job: Any, shift: float) -> None:
    if shift:
        for other in others:
            other.submit(lambda other=other: _hopped_late(other, job, shift))
        return
    for other in others:
        other.submit(lambda other=other: _hopped(other, job))


def _hopped(instance: Instance, job: Any) -> None:
    instance.spend_s(instance.model.redis.receive_us / 1e6)
    job(instance)


def _hopped_late(instance: Instance, job: Any, shift: float) -> None:
    """A mirror's copy of a message, published `shift` after the original."""
    engine = instance.engine
    engine.ts_shift = shift
    try:
        _hopped(instance, job)
    finally:
        engine.ts_shift = 0.0


class SharedLedgers(MemoryLedgers):
    """The apps' ledgers as Redis holds them: shared, and unreachable while it is down."""

    def __init__(self, config: Any, now: float, redis: VirtualRedis) -> None:
        super().__init__(config, now)
        self.redis = redis

    async def admit_connection(self, app_id: str, now: float) -> bool:
        return self.ledgers[app_id].admit_connection(now)  # fails open while down

    async def charge_message(self, app_id: str, now: float) -> bool:
        if not self.redis.up:
            raise BackendError(DOWN)
        charged = self.ledgers[app_id].charge_message(now)
        await Hold(self.redis.round_trip_s())
        return charged


class ClusterBackend:
    """One instance's backend in a `VirtualRedis` cluster."""

    def __init__(self, hub: Hub, node: Instance, redis: VirtualRedis) -> None:
        self.hub = hub
        self.node = node
        self.redis = redis

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def _check(self) -> None:
        if not self.redis.up:
            raise BackendError(DOWN)

    async def connect(self, conn: Connection) -> None:
        self.hub.add(conn)
        self.redis.peer_added(conn.app_id, conn.peer_id, self.node.index)

    async def disconnect(self, conn: Connection) -> None:
        for change in self.hub.remove(conn):
            self._presence(change)
        self.redis.peer_removed(conn.app_id, conn.peer_id, self.node.index)

    async def subscribe(self, conn: Connection, name: str, with_meta: bool
                        ) -> list[dict[str, Any]]:
        self._check()
        change = self.hub.subscribe(conn, name, with_meta, is_new=name not in conn.subscriptions)
        if change is not None:
            self._presence(change)
        if not conn.has_presence:
            return []
        key, wild = subscription_key(name)
        return self._snapshot(conn.app_id, key, wild, conn.peer_id)

    async def unsubscribe(self, conn: Connection, name: str) -> None:
        self._check()
        change = self.hub.unsubscribe(conn, name)
        if change is not None:
            self._presence(change)

    def _presence(self, change: PresenceChange) -> None:
        table = self.redis.presence.setdefault((change.app_id, change.wildcard, change.key), {})
        held = table.setdefault(change.peer_id, {})
        me = self.node.index
        if change.joined:
            first = not held
            held[me] = change.metadata
        else:
            held.pop(me, None)
            first = not held
            if not held:
                del table[change.peer_id]
        if not first:
            return
        self.node.deliver(self.hub.presence_deliveries(change))
        self.redis.hop(self.node, lambda other: other.deliver(
            other.backend.hub.presence_deliveries(change)))

    def _snapshot(self, app_id: str, key: str, wildcard: bool, exclude: str | None
                  ) -> list[dict[str, Any]]:
        table = self.redis.presence.get((app_id, wildcard, key), {})
        return [presence_entry(peer, next(iter(held.values())))
                for peer, held in table.items() if peer != exclude]

    async def publish(self, msg: Message) -> int:
        self._check()
        node = self.node
        node.spend_s(node.model.redis.send_us / 1e6)
        remote = Message(msg.app_id, msg.channel, msg.sender, msg.data, msg.sender_metadata,
                         None)
        back = self.redis.hop(node, lambda other: other.deliver(
            other.backend.hub.deliver_message(remote)), self.redis.copies)
        await Hold(back - node.cursor)  # the PUBLISH's reply, before the local fan-out
        deliveries = self.hub.deliver_message(msg)
        node.deliver(deliveries)
        return sum(len(d.targets) for d in deliveries)

    async def send(self, msg: Direct) -> int:
        self._check()
        local = self.hub.deliver_direct(msg)
        n_local = len(local[0].targets) if local else 0
        remote = 0
        if self.node.service.cross_instance_send:
            await Hold(self.redis.round_trip_s())  # the peer's counts (HGETALL)
            counts = self.redis.peer_counts(msg.app_id, msg.to)
            remote = sum(n for i, n in counts.items() if i != self.node.index)
            if remote:
                self.node.spend_s(self.node.model.redis.send_us / 1e6)
                back = self.redis.hop(self.node, lambda other: other.deliver(
                    other.backend.hub.deliver_direct(msg)))
                await Hold(back - self.node.cursor)
        self.node.deliver(local)
        return n_local + remote

    async def channel_peers(self, app_id: str, channel: str) -> list[dict[str, Any]]:
        return self._snapshot(app_id, channel, False, None)

    async def kick(self, app_id: str, peer_id: str, code: int, reason: str) -> int:
        remote = sum(n for i, n in self.redis.peer_counts(app_id, peer_id).items()
                     if i != self.node.index)
        self.redis.hop(self.node, lambda other: other.close_peer(app_id, peer_id, code, reason))
        return self.node.close_peer(app_id, peer_id, code, reason) + remote

    def state(self) -> dict[str, Any]:
        return {"kind": "redis", "instance": self.node.service.instance_id,
                "liveInstances": sorted(i.service.instance_id or "" for i in
                                        self.redis.instances), "up": self.redis.up,
                "virtual": True}
