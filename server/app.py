"""Run one server instance: WebSocket listener, REST control plane, signals, event log."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass

try:
    import uvloop
except ImportError:  # the stock loop then
    uvloop = None

from .config import Config
from .events import JsonlEventLog
from .node import Node
from .redis_backend import RedisBackend
from .redis_ledgers import RedisLedgers
from .redis_link import RedisLink
from .rest import start_rest

EVENT_FLUSH_S = 1.0


class StartupError(RuntimeError):
    """The server could not start (port taken, bad address); phrased for the user."""


@dataclass(frozen=True)
class ServeOptions:
    events_path: str | None = None
    instance_id: str | None = None
    retry_after_ms: int = 1000  # announced in going_away at shutdown


def install_fast_loop() -> None:
    """Use uvloop where it is installed; the stock loop otherwise."""
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def build_node(config: Config, events: JsonlEventLog | None,
               instance_id: str | None) -> Node:
    """A Node with the configured backend (memory, or Redis shared by instances)."""
    if config.server.backend != "redis":
        return Node(config, events=events, instance_id=instance_id)
    inst = instance_id or f"i{config.server.port}"
    link = RedisLink(config.server.redis_url, config.server.redis_prefix)
    ledgers = RedisLedgers(config, link, inst)
    apps = [a.id for a in config.apps]

    def backend(hub: object, node: Node) -> RedisBackend:
        return RedisBackend(hub, node, link, ledgers, inst, apps,  # type: ignore[arg-type]
                            cross_instance_send=config.server.cross_instance_send,
                            ttl_s=config.server.redis_peer_ttl_s,
                            heartbeat_s=config.server.redis_peer_ttl_s / 3, clock=node.clock)

    return Node(config, events=events, instance_id=inst, backend=backend, ledgers=ledgers)


async def serve_forever(config: Config, options: ServeOptions,
                        announce: bool = True) -> None:
    instance_id = options.instance_id or config.server.instance_id
    events = JsonlEventLog(options.events_path, instance=instance_id) \
        if options.events_path else None
    node = build_node(config, events, instance_id)
    host = config.server.host
    try:
        ws_port = await node.start(host, config.server.port)
        runner, admin_port = await start_rest(node, host, config.server.admin_port)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}: {exc.strerror or exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if announce:
        _announce(config, host, ws_port, admin_port, node.service.instance_id)
    flusher = asyncio.create_task(_flush_events(events)) if events else None
    try:
        await stop.wait()
        print("rtmsim: stopping: going_away + 1001 to every connection", flush=True)
        await node.shutdown(options.retry_after_ms)
    finally:
        if flusher is not None:
            flusher.cancel()
        await runner.cleanup()
        if events is not None:
            events.close()


async def _flush_events(events: JsonlEventLog) -> None:
    while True:
        await asyncio.sleep(EVENT_FLUSH_S)
        events.flush()


def _announce(config: Config, host: str, ws_port: int, admin_port: int,
              instance_id: str | None) -> None:
    # The first line is stable and machine-readable: tests and the harness parse it.
    # Whole lines in single writes: the instances of `serve --instances N` share their
    # parent's stdout, and with PYTHONUNBUFFERED `print` writes a line and its newline
    # apart, so two banners could interleave within a line (1 start in ~12 on a busy
    # machine). A pipe keeps a write of up to 4 KB whole: the first line goes alone.
    tag = f" instance={instance_id}" if instance_id else ""
    lines = [f"rtmsim listening ws=ws://{host}:{ws_port}/v1 admin=http://{host}:{admin_port}"
             f"{tag}"]
    if config.server.backend == "redis":
        lines.append(f"  backend    redis {config.server.redis_url} (prefix "
                     f"{config.server.redis_prefix!r})")
    lines.append(f"  WebSocket  ws://{host}:{ws_port}/v1?key=<publishable key> or ?token=<JWT>")
    lines.append(f"  REST       http://{host}:{admin_port}/v1/...   sim controls "
                 f"http://{host}:{admin_port}/sim/v1/stats")
    for app in config.apps:
        lines.append(f"  app {app.id}{' (suspended)' if app.suspended else ''}:")
        for key in app.keys:
            cred = f"{key.id}:{key.secret}" if key.secret else key.id
            kind = "secret     " if key.secret else "publishable"
            lines.append(f"    {kind} {cred}  channels {list(key.channel_patterns)} "
                         f"actions {list(key.actions)}")
    lines.append("  Ctrl-C stops: going_away + 1001 to every connection, then exit 0")
    sys.stdout.write(lines[0] + "\n")
    sys.stdout.write("\n".join(lines[1:]) + "\n")
    sys.stdout.flush()


def run(config: Config, options: ServeOptions) -> int:
    install_fast_loop()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="rtmsim %(asctime)s %(name)s: %(message)s")
    try:
        asyncio.run(serve_forever(config, options))
    except StartupError as exc:
        print(f"rtmsim: {exc}", file=sys.stderr)
        return 2
    return 0
