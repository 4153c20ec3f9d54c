"""The Redis backend: several instances behind one Redis.

- Fan-out: one Redis pub/sub channel per app (`PREFIX:app:APP`), not per connection;
  each instance filters deliveries through its own hub (wildcards, scope).
- Peer registry: `PREFIX:peer:APP:PEER` maps instance -> connection count, so `send`
  and kicks reach peers on other instances; instances heartbeat `PREFIX:alive:INST`
  and a crashed instance's entries stop counting when its key expires (a janitor then
  removes them and announces the `left` presence they leave behind).
- Presence: `PREFIX:pres:APP:CHANNEL` holds one field per (peer, instance);
  `PREFIX:presn:...` counts instances per peer, so `joined`/`left` go out once per
  peer across all instances.
- Quotas: `RedisLedgers` (Lua), shared by all instances.

Redis state is always derived from each instance's local state, so when Redis comes
back (even empty) every instance writes its part again before serving routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from .actions import Direct, Message
from .backend import BackendError, LocalNode
from .hub import Hub, PresenceChange, presence_entry
from .jsonenc import dumps, loads
from .patterns import subscription_key
from .redis_link import FAILURES, RedisLink

if TYPE_CHECKING:
    from .connection import Connection
    from .redis_ledgers import RedisLedgers

log = logging.getLogger("rtmsim.redis")
SEP = "\x1f"  # between peerId and instance id in presence fields (not printable ASCII)

PRESENCE_ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[1] .. ARGV[4] .. ARGV[2], ARGV[3]) == 1 then
  return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
end
return -1
"""

PRESENCE_REMOVE = """
if redis.call('HDEL', KEYS[1], ARGV[1] .. ARGV[3] .. ARGV[2]) == 1 then
  local n = redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
  if n <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]) end
  return n
end
return -1
"""


class RedisBackend:
    def __init__(self, hub: Hub, node: LocalNode, link: RedisLink, ledgers: RedisLedgers,
                 instance_id: str, app_ids: list[str], *, cross_instance_send: bool = True,
                 heartbeat_s: float = 1.0, ttl_s: float = 3.0,
                 clock: Any = None) -> None:
        self.hub = hub
        self.node = node
        self.link = link
        self.ledgers = ledgers
        self.instance = instance_id
        self.app_ids = app_ids
        self.cross_instance_send = cross_instance_send
        self.heartbeat_s = heartbeat_s
        self.ttl_s = ttl_s
        self.clock = clock
        self.live: set[str] = {instance_id}  # instances believed alive (heartbeat cache)
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._pubsub: Any = None
        self._add = link.redis.register_script(PRESENCE_ADD)
        self._remove = link.redis.register_script(PRESENCE_REMOVE)

    # -- keys -----------------------------------------------------------------------------

    def _app_channel(self, app_id: str) -> str:
        return self.link.key("app", app_id)

    def _peer_key(self, app_id: str, peer_id: str) -> str:
        return self.link.key("peer", app_id, peer_id)

    def _pres_keys(self, app_id: str, key: str, wildcard: bool) -> list[str]:
        kind = "w" if wildcard else "e"
        return [self.link.key("pres", app_id, kind, key),
                self.link.key("presn", app_id, kind, key)]

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.link.on_up.append(self._resync)
        await self.link.start()
        self._tasks.append(asyncio.create_task(self._heartbeat()))

    async def stop(self) -> None:
        for task in (*self._tasks, self._listener):
            if task is not None:
                task.cancel()
        if self.link.up:
            with contextlib.suppress(*FAILURES):
                await self._withdraw()
        if self._pubsub is not None:
            with contextlib.suppress(*FAILURES):
                await self._pubsub.aclose()
        await self.link.stop()

    async def _resync(self) -> None:
        """Write this instance's part of the shared state again (link hook)."""
        r = self.link.redis
        await r.set(self.link.key("alive", self.instance), "1", px=int(self.ttl_s * 1000))
        await r.sadd(self.link.key("instances"), self.instance)
        for app_id, index in self.hub.apps.items():
            for peer_id, held in index.peers.items():  # a connection, or a dict of them
                n = len(held) if type(held) is dict else 1
                await r.hset(self._peer_key(app_id, peer_id), self.instance, n)
        for change in self.hub.local_presence():
            await self._add(keys=self._pres_keys(change.app_id, change.key, change.wildcard),
                            args=[change.peer_id, self.instance, _meta(change.metadata), SEP])
        await self.ledgers.resync(self._now())
        await self._subscribe_apps()

    async def _subscribe_apps(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        if self._pubsub is not None:
            with contextlib.suppress(*FAILURES):
                await self._pubsub.aclose()
        self._pubsub = self.link.redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(*(self._app_channel(a) for a in self.app_ids))
        self._listener = asyncio.create_task(self._listen(self._pubsub))

    async def _withdraw(self) -> None:
        """Leave cleanly at shutdown: our registry entries and heartbeat go."""
        r = self.link.redis
        await r.delete(self.link.key("alive", self.instance))
        await r.srem(self.link.key("instances"), self.instance)

    def _now(self) -> float:
        return self.clock() if self.clock else asyncio.get_running_loop().time()

    # -- heartbeat, liveness, janitor ---------------------------------------------------------

    async def _heartbeat(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if not self.link.up:
                continue
            beats += 1
            try:
                await self.link.call(self.link.redis.set, self.link.key("alive", self.instance),
                                     "1", px=int(self.ttl_s * 1000))
                await self._refresh_live()
                if beats % 3 == 0:
                    await self._janitor()
            except BackendError:
                continue
            except Exception:
                log.exception("heartbeat failed")

    async def _refresh_live(self) -> None:
        r = self.link.redis
        members = [_text(m) for m in await self.link.call(r.smembers,
                                                          self.link.key("instances"))]
        alive = await self.link.call(r.mget, [self.link.key("alive", m) for m in members]) \
            if members else []
        self.live = {m for m, a in zip(members, alive, strict=True) if a is not None}
        self.live.add(self.instance)

    async def _janitor(self) -> None:
        """Remove the entries of instances whose heartbeat expired (they crashed)."""
        r = self.link.redis
        members = {_text(m) for m in await self.link.call(r.smembers,
                                                          self.link.key("instances"))}
        for dead in members - self.live:
            lock = self.link.key("janitor", dead)
            if not await self.link.call(r.set, lock, self.instance, nx=True, ex=30):
                continue
            log.warning("instance %s is gone: removing its peers and presence", dead)
            await self._sweep(dead)
            await self.link.call(r.srem, self.link.key("instances"), dead)

    async def _sweep(self, dead: str) -> None:
        r = self.link.redis
        suffix = SEP + dead
        head = len(self.link.key("pres", ""))
        async for key in r.scan_iter(match=self.link.key("pres", "*")):
            app_id, _, rest = _text(key)[head:].partition(":")
            kind, _, channel = rest.partition(":")
            wild = kind == "w"
            fields = await self.link.call(r.hkeys, key)
            for field in map(_text, fields):
                if not field.endswith(suffix):
                    continue
                peer_id = field[: -len(suffix)]
                n = await self.link.call(self._remove,
                                         keys=self._pres_keys(app_id, channel, wild),
                                         args=[peer_id, dead, SEP])
                if n == 0:
                    await self._announce(PresenceChange(app_id, channel, peer_id, None,
                                                        False, wild))
        async for key in r.scan_iter(match=self.link.key("peer", "*")):
            await self.link.call(r.hdel, key, dead)
        for app_id in self.app_ids:
            await self.link.call(r.hdel, self.link.key("conc", app_id), dead)

    # -- inbound from other instances -------------------------------------------------------

    async def _listen(self, pubsub: Any) -> None:
        try:
            async for msg in pubsub.listen():
                if msg.get("type") == "message":
                    try:
                        self._on_message(msg["data"])
                    except Exception:
                        log.exception("bad message from redis")
        except asyncio.CancelledError:
            raise
        except FAILURES as exc:
            self.link.mark_down(exc)

    def _on_message(self, data: bytes) -> None:
        m = loads(data)  # `dumps` may have written lone surrogates as escapes
        if m["i"] == self.instance:
            return  # ours: delivered locally before it was published
        kind, app_id = m["k"], m["a"]
        node, hub = self.node, self.hub
        if kind == "m":
            node.deliver(hub.deliver_message(Message(app_id, m["ch"], m["f"], m["d"],
                                                     m.get("md"), None)))
        elif kind == "d":
            node.deliver(hub.deliver_direct(Direct(app_id, m["to"], m["f"], m["d"],
                                                   m.get("md"))))
        elif kind == "p":
            node.deliver(hub.presence_deliveries(PresenceChange(
                app_id, m["ch"], m["peer"], m.get("md"), m["j"], m.get("w", False))))
        elif kind == "k":
            node.close_peer(app_id, m["peer"], m["code"], m["reason"])

    async def _publish(self, app_id: str, body: dict[str, Any]) -> None:
        body["i"] = self.instance
        body["a"] = app_id
        await self.link.call(self.link.redis.publish, self._app_channel(app_id), dumps(body))

    # -- Backend ------------------------------------------------------------------------------

    async def connect(self, conn: Connection) -> None:
        self.hub.add(conn)
        with contextlib.suppress(BackendError):  # written back on resync if Redis is down
            await self.link.call(self.link.redis.hincrby,
                                 self._peer_key(conn.app_id, conn.peer_id), self.instance, 1)

    async def disconnect(self, conn: Connection) -> None:
        changes = self.hub.remove(conn)
        with contextlib.suppress(BackendError):
            for change in changes:
                await self._presence(change)
            left = len(self.hub.peer_connections(conn.app_id, conn.peer_id))
            key = self._peer_key(conn.app_id, conn.peer_id)
            if left:
                await self.link.call(self.link.redis.hset, key, self.instance, left)
            else:
                await self.link.call(self.link.redis.hdel, key, self.instance)

    async def subscribe(self, conn: Connection, name: str, with_meta: bool
                        ) -> list[dict[str, Any]]:
        if not self.link.up:
            raise BackendError("backend unavailable (redis down)")
        is_new = name not in conn.subscriptions
        change = self.hub.subscribe(conn, name, with_meta, is_new=is_new)
        try:
            if change is not None:
                await self._presence(change)
            if not conn.has_presence:
                return []
            key, wild = subscription_key(name)
            return await self._snapshot(conn.app_id, key, wild, conn.peer_id)
        except BackendError:
            if is_new:
                self.hub.unsubscribe(conn, name)  # roll back: the client got an error
            raise

    async def unsubscribe(self, conn: Connection, name: str) -> None:
        if not self.link.up:
            raise BackendError("backend unavailable (redis down)")
        change = self.hub.unsubscribe(conn, name)
        if change is not None:
            await self._presence(change)

    async def _presence(self, change: PresenceChange) -> None:
        """Record a local presence change in Redis; announce it if it is global."""
        keys = self._pres_keys(change.app_id, change.key, change.wildcard)
        if change.joined:
            n = await self.link.call(self._add, keys=keys, args=[
                change.peer_id, self.instance, _meta(change.metadata), SEP])
            is_global = n == 1
        else:
            n = await self.link.call(self._remove, keys=keys,
                                     args=[change.peer_id, self.instance, SEP])
            is_global = n == 0
        if is_global:
            await self._announce(change)

    async def _announce(self, change: PresenceChange) -> None:
        self.node.deliver(self.hub.presence_deliveries(change))
        await self._publish(change.app_id, {"k": "p", "ch": change.key, "peer": change.peer_id,
                                            "md": change.metadata, "j": change.joined,
                                            "w": change.wildcard})

    async def _snapshot(self, app_id: str, key: str, wildcard: bool,
                        exclude_peer: str | None) -> list[dict[str, Any]]:
        fields = await self.link.call(self.link.redis.hgetall,
                                      self._pres_keys(app_id, key, wildcard)[0])
        entries = [(*_text(field).rpartition(SEP)[::2], meta) for field, meta in fields.items()]
        await self._learn_live({inst for _, inst, _ in entries})
        peers: dict[str, dict[str, Any] | None] = {}
        for peer_id, inst, meta in entries:
            if inst in self.live and peer_id != exclude_peer and peer_id not in peers:
                peers[peer_id] = loads(meta) if meta not in (b"", "") else None
        return [presence_entry(p, m) for p, m in peers.items()]

    async def publish(self, msg: Message) -> int:
        await self._publish(msg.app_id, {"k": "m", "ch": msg.channel, "f": msg.sender,
                                         "d": msg.data, "md": msg.sender_metadata})
        deliveries = self.hub.deliver_message(msg)
        self.node.deliver(deliveries)
        return sum(len(d.targets) for d in deliveries)

    async def _learn_live(self, instances: set[str]) -> None:
        """Check instances the heartbeat cache has not seen yet (just started ones)."""
        unknown = sorted(instances - self.live)
        if not unknown:
            return
        alive = await self.link.call(self.link.redis.mget,
                                     [self.link.key("alive", i) for i in unknown])
        self.live.update(i for i, a in zip(unknown, alive, strict=True) if a is not None)

    async def _remote_count(self, app_id: str, peer_id: str) -> int:
        counts = await self.link.call(self.link.redis.hgetall,
                                      self._peer_key(app_id, peer_id))
        await self._learn_live({_text(i) for i in counts})
        return sum(int(n) for inst, n in counts.items()
                   if _text(inst) != self.instance and _text(inst) in self.live)

    async def send(self, msg: Direct) -> int:
        if not self.link.up:
            raise BackendError("backend unavailable (redis down)")
        local = self.hub.deliver_direct(msg)
        n_local = len(local[0].targets) if local else 0
        remote = 0
        if self.cross_instance_send:
            remote = await self._remote_count(msg.app_id, msg.to)
            if remote:
                await self._publish(msg.app_id, {"k": "d", "to": msg.to, "f": msg.sender,
                                                 "d": msg.data, "md": msg.sender_metadata})
        self.node.deliver(local)
        return n_local + remote

    async def channel_peers(self, app_id: str, channel: str) -> list[dict[str, Any]]:
        return await self._snapshot(app_id, channel, False, None)

    async def kick(self, app_id: str, peer_id: str, code: int, reason: str) -> int:
        remote = await self._remote_count(app_id, peer_id)
        if remote:
            await self._publish(app_id, {"k": "k", "peer": peer_id, "code": code,
                                         "reason": reason})
        return self.node.close_peer(app_id, peer_id, code, reason) + remote

    def state(self) -> dict[str, Any]:
        return {"kind": "redis", "instance": self.instance, "liveInstances": sorted(self.live),
                **self.link.state()}


def _meta(metadata: dict[str, Any] | None) -> bytes:
    return dumps(metadata) if metadata is not None else b""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

