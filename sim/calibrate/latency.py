"""The light-load steps of a calibration: one request in flight at a time.

Back to back (the network's one-way figures), after idle spells of 1/rate (how long
a server and a client that slept take to answer, and the CPU the waking costs), and
publish to delivery (locally, and across two instances through Redis).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson

from loadtests.benchconfig import PUBLISHABLE_KEY

from .clients import Probe, address, open_clients, run_each
from .servers import CalibrationError
from .steps import PAYLOAD, Session


async def round_trips(s: Session) -> tuple[list[float], float]:
    """Light-load ping round trips (one in flight), in seconds, and the server's CPU
    a round trip (over its idle CPU)."""
    (client,) = await s.requesters(1)
    client.rtts = []
    start = time.perf_counter()
    budget = s.scale.latency_samples
    before = s.meter.read()
    while len(client.rtts) < budget and s.until(start):
        await run_each([client], [[b'{"type":"ping"}'] * min(100, budget)], (b'"pong"',))
    cpu = _cpu_per(s, before, len(client.rtts))
    await s.done_with([client])
    return client.rtts[:budget], cpu


def _cpu_per(s: Session, before: tuple[float, ...], n: int) -> float:
    """The server's CPU since `before` over its idle CPU, a round trip of `n`."""
    after = s.meter.read()
    cpu = after[1] - before[1] - s.meter.idle_per_s * (after[0] - before[0])
    return max(0.0, cpu) / n if n else float("nan")


# Round trips a second of the idle-server step: one ping each 1/rate apart.
WAKE_RATES = (5.0, 20.0, 100.0, 300.0, 1000.0)


async def idle_round_trips(s: Session) -> tuple[dict[float, list[float]], dict[float, float]]:
    """Ping round trips (one in flight, seconds), `1/rate` apart for each of
    `WAKE_RATES`: how long a server (and a client) that slept take to answer, and the
    server's CPU a round trip at each rate (a core that slept runs slower: cold caches,
    the wake-up itself)."""
    (client,) = await s.requesters(1)
    out: dict[float, list[float]] = {}
    cpu: dict[float, float] = {}
    per_rate = max(0.5, s.scale.seconds)
    for rate in WAKE_RATES:
        client.rtts = []
        start = time.perf_counter()
        before = s.meter.read()
        while time.perf_counter() - start < per_rate:
            await run_each([client], [[b'{"type":"ping"}']], (b'"pong"',))
            await asyncio.sleep(1.0 / rate)
        out[rate] = client.rtts
        cpu[rate] = _cpu_per(s, before, len(client.rtts))
    await s.done_with([client])
    return out, cpu


async def delivery_latencies(ws_pub: str, ws_sub: str, samples: int,
                             seconds: float) -> list[float]:
    """Publish -> delivery (seconds), one message in flight, publisher and subscriber
    on the given servers (the same one, or two instances through Redis)."""
    (pub_host, pub_port), (sub_host, sub_port) = address(ws_pub), address(ws_sub)
    path = f"/v1?key={PUBLISHABLE_KEY}"
    (sub,) = await open_clients(lambda: Probe(sub_host, sub_port, path), ws_sub, 1)
    (pub,) = await open_clients(lambda: Probe(pub_host, pub_port, path), ws_pub, 1)
    channel = orjson.dumps(f"cal/latency/{uuid.uuid4().hex[:8]}")
    sub.send_text(b'{"type":"subscribe","channel":' + channel + b',"requestId":"s"}')
    for _ in range(2):  # ack, snapshot
        await sub.next_frame()
    out: list[float] = []
    start = time.perf_counter()
    try:
        while len(out) < samples and time.perf_counter() - start < seconds:
            sent = time.perf_counter()
            pub.send_text(b'{"type":"publish","channel":' + channel + b',"data":' + PAYLOAD
                          + b',"requestId":"l"}')
            (_, ack), (arrived, msg) = await asyncio.gather(pub.next_frame(),
                                                            sub.next_frame())
            if not ack.startswith(b'{"type":"ack"') or not msg.startswith(
                    b'{"type":"message"'):
                raise CalibrationError(f"latency probe: unexpected {ack[:80]!r} / "
                                       f"{msg[:80]!r}")
            out.append(arrived - sent)
    finally:
        for c in (pub, sub):
            c.send_close(1000)
        await asyncio.wait_for(asyncio.gather(pub.closed, sub.closed), 30)
    return out
