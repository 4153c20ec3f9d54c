"""A reference client on the official Python SDK (`metered-realtime` from PyPI).

Subscribes to RTMSIM_CHANNEL, publishes on it and sends itself a direct message about
once a second, through `SignallingClient`. The SDK does most of the right things on its
own: exponential reconnect backoff with +-20% jitter, no reconnect after terminal
closes (4001, 4003, 4012, 4020), a 30 s floor after 4010, subscriptions replayed after a
reconnect, and the token provider called before every connection attempt (so a 4002
brings a fresh token). What it leaves to the application, and this client adds:

- going_away.retryAfterMs: the SDK (1.0.2) surfaces `GoingAway` but reconnects after
  its own backoff (~0.5 s). This client closes on `GoingAway` and reconnects itself
  after retryAfterMs plus up to 100 % jitter.
- request errors: `publish` raises `ServerRequestError`; this client retries
  backend_error / internal_error after a jittered backoff, pauses publishing after
  over_message_quota, and never retries the other codes (the protocol's code table).

It needs its own venv (the SDK pins websockets<16, rtmsim needs >=17):

    python3 -m venv examples/clients/python/.venv
    examples/clients/python/.venv/bin/pip install metered-realtime
    rtmsim clients scenarios/client-faults.toml \
        --cmd "examples/clients/python/.venv/bin/python examples/clients/python/client.py"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import urllib.request

from metered_realtime import Disconnected, GoingAway, SignallingClient
from metered_realtime.errors import ServerRequestError, SignallingConnectError, SignallingError

URL = os.environ["RTMSIM_URL"]
CHANNEL = os.environ["RTMSIM_CHANNEL"]
TOKEN_URL = os.environ.get("RTMSIM_TOKEN_URL")
INDEX = os.environ.get("RTMSIM_CLIENT_INDEX", "0")
PUBLISH_EVERY_S = 1.0
BACKOFF_S = (0.2, 0.4, 0.8)  # retries of one publish after backend_error/internal_error
QUOTA_PAUSE_S = 5.0
CONNECT_FLOOR_S = {4010: 30.0}  # a refused first connect: the SDK does not retry it
TRANSIENT = {"backend_error", "internal_error"}

_first_token = os.environ.get("RTMSIM_TOKEN")


def log(*parts: object) -> None:
    print(f"[client {INDEX}]", *parts, flush=True)


def fetch_token() -> str:
    with urllib.request.urlopen(urllib.request.Request(TOKEN_URL, method="POST"),
                                timeout=5) as resp:
        return json.loads(resp.read())["token"]


async def token_provider() -> str:
    """The first connection uses RTMSIM_TOKEN; every later one fetches a fresh token."""
    global _first_token
    if _first_token is not None:
        token, _first_token = _first_token, None
        return token
    return await asyncio.to_thread(fetch_token)


def make_client() -> SignallingClient:
    if TOKEN_URL:
        return SignallingClient(token_provider=token_provider, url=URL)
    return SignallingClient(api_key=os.environ["RTMSIM_KEY"], url=URL)


async def publish(client: SignallingClient, data: dict) -> float:
    """Publish with the code table's retry guidance; returns a pause before the next."""
    for attempt in range(len(BACKOFF_S) + 1):
        try:
            await client.publish(CHANNEL, data)
            return 0.0
        except ServerRequestError as exc:
            if exc.code == "over_message_quota":
                log("over quota: pausing publishes")
                return QUOTA_PAUSE_S * (1 + random.random())
            if exc.code not in TRANSIENT or attempt == len(BACKOFF_S):
                log(f"publish failed: {exc.code}")
                return 0.0
            await asyncio.sleep(BACKOFF_S[attempt] * (0.5 + random.random()))
        except SignallingError as exc:  # not connected, disconnected, ack timeout
            log(f"publish not done: {type(exc).__name__}")
            return 0.0
    return 0.0


async def subscribe(client: SignallingClient) -> None:
    """Subscribe, retrying transient errors; the SDK replays it after a reconnect."""
    for attempt in range(len(BACKOFF_S) + 1):
        try:
            await client.subscribe(CHANNEL)
            return
        except ServerRequestError as exc:
            if exc.code not in TRANSIENT or attempt == len(BACKOFF_S):
                log(f"subscribe failed: {exc.code}")
                return
            await asyncio.sleep(BACKOFF_S[attempt] * (0.5 + random.random()))
        except SignallingError as exc:
            log(f"subscribe not done: {type(exc).__name__}")
            return


async def session() -> tuple[str, float]:
    """One SDK client's life: ("going_away", ms), ("terminal", code) or ("refused", code)."""
    client = make_client()
    ended: asyncio.Future[tuple[str, float]] = asyncio.get_running_loop().create_future()

    @client.on(GoingAway)
    def _going_away(ev: GoingAway) -> None:
        if not ended.done():
            ended.set_result(("going_away", ev.retry_after_ms))

    @client.on(Disconnected)
    def _disconnected(ev: Disconnected) -> None:
        log(f"disconnected {ev.code} (will reconnect: {ev.will_reconnect})")
        if not ev.will_reconnect and not ended.done():
            ended.set_result(("terminal", ev.code))

    try:
        await client.connect()
    except SignallingConnectError as exc:
        return ("refused", float(exc.close_code))
    log("connected")
    await subscribe(client)
    me = f"client-{INDEX}"

    async def traffic() -> None:
        n = 0
        while True:
            pause = await publish(client, {"n": n, "from": INDEX})
            if client.state == "connected":
                try:
                    await client.send(me, {"n": n})
                except SignallingError as exc:
                    log(f"send not done: {type(exc).__name__}")
            n += 1
            await asyncio.sleep(PUBLISH_EVERY_S + pause)

    task = asyncio.create_task(traffic())
    try:
        return await ended
    finally:
        task.cancel()
        await client.close()


async def main() -> None:
    refused = 0
    while True:
        why, value = await session()
        if why == "going_away":
            delay = value / 1000 * (1 + random.random())  # the hint + up to 100 % jitter
            log(f"going_away: reconnecting in {delay * 1000:.0f} ms")
            await asyncio.sleep(delay)
        elif why == "refused":
            refused += 1
            floor = CONNECT_FLOOR_S.get(int(value), 0.0)
            delay = max(floor, min(30.0, 0.5 * 2 ** refused)) * (1 + 0.2 * random.random())
            log(f"connect refused ({int(value)}): retrying in {delay:.1f} s")
            await asyncio.sleep(delay)
        else:
            log(f"closed for good ({int(value)}): exiting")
            return


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt, SystemExit):
        asyncio.run(main())
