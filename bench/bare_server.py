"""The baseline: the smallest `websockets` pub/sub server that the same load client accepts.

A dict of channel -> set of connections, stdlib `json`, `broadcast()`: what one would
write from the library's documentation in an afternoon. It speaks just enough of the
protocol for `bench.load`: `/v1?key=...` (one key, checked), a `welcome` frame,
`subscribe` -> ack, `publish` -> `message` to the channel's other subscribers, then ack.
No scopes, quotas, token bucket, presence, counters or event hooks: the difference
between this and `rtmsim serve` is the price of those.

It runs like ours, so only the server logic differs: uvloop, one process, the same
`serve()` keyword arguments (frame limit, keepalive, no compression).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

try:
    import uvloop
except ImportError:  # the servers fall back the same way
    uvloop = None

KEY = "pk_live_demo"
CHANNELS: dict[str, set[ServerConnection]] = {}


async def handler(ws: ServerConnection) -> None:
    query = parse_qs(urlsplit(ws.request.path).query)
    if query.get("key") != [KEY]:
        await ws.close(4001, "invalid key")
        return
    peer_id = str(uuid.uuid4())
    await ws.send(json.dumps({"type": "welcome", "peerId": peer_id, "expiresAt": None,
                              "serverTime": int(time.time() * 1000),
                              "maxMessageSize": 65536}))
    subscribed: set[str] = set()
    try:
        async for raw in ws:
            msg = json.loads(raw)
            kind = msg.get("type")
            channel = msg.get("channel")
            if kind == "subscribe":
                CHANNELS.setdefault(channel, set()).add(ws)
                subscribed.add(channel)
            elif kind == "publish":
                others = [c for c in CHANNELS.get(channel, ()) if c is not ws]
                broadcast(others, json.dumps({"type": "message", "channel": channel,
                                              "from": peer_id, "data": msg.get("data")}))
            else:
                continue
            if "requestId" in msg:
                await ws.send(json.dumps({"type": "ack", "requestId": msg["requestId"]}))
    except ConnectionClosed:
        pass
    finally:
        for channel in subscribed:
            members = CHANNELS.get(channel)
            if members is not None:
                members.discard(ws)
                if not members:
                    del CHANNELS[channel]


async def run(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(handler, host, port, max_size=65536, ping_interval=30,
                     ping_timeout=10, compression=None) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"bare listening ws=ws://{host}:{bound}/v1", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server",
                                     description="Baseline websockets broadcast server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 = any free port")
    args = parser.parse_args(argv)
    if uvloop is None:
        asyncio.run(run(args.host, args.port))
    else:
        uvloop.run(run(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
