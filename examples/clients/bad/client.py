"""A deliberately bad client: what failing the grade looks like.

It retries everything immediately: an error answer makes it resend the same frame at
once (even `channel_reserved`, which can never succeed), any close makes it reconnect
after a fixed 20 ms (no backoff, no jitter, terminal codes included, going_away's
retryAfterMs ignored), it reuses its first token forever (no refresh after 4002) and
subscribes only on its first connection (no re-subscribe). Plain `websockets`, no SDK.

    rtmsim clients scenarios/client-faults.toml --cmd "python examples/clients/bad/client.py"
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

URL = os.environ["RTMSIM_URL"]
TOKEN = os.environ["RTMSIM_TOKEN"]  # never refreshed: that is one of its bugs
CHANNEL = os.environ["RTMSIM_CHANNEL"]
RECONNECT_S = 0.02  # the same for every client: a herd
MAX_RESENDS = 20  # bad, not a denial of service
PUBLISH_S = 0.5

ids = itertools.count(1)


def request(ws, frame: dict) -> None:
    """Send, and resend at once while the answer is an error."""
    rid = str(next(ids))
    for _ in range(MAX_RESENDS + 1):
        ws.send(json.dumps({**frame, "requestId": rid}))
        while True:
            reply = json.loads(ws.recv(timeout=5))
            if reply.get("requestId") == rid:
                break
        if reply["type"] != "error":
            return
        print(f"error {reply['code']}: resending at once", flush=True)


def idle(ws, seconds: float) -> None:
    """Read (and ignore) frames for `seconds`: a close is noticed at once."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            ws.recv(timeout=left)
        except TimeoutError:
            return


def session(first: bool) -> None:
    with connect(f"{URL}/v1?token={TOKEN}", open_timeout=5, close_timeout=1) as ws:
        welcome = json.loads(ws.recv(timeout=5))
        print(f"connected as {welcome.get('peerId')}", flush=True)
        if first:
            request(ws, {"type": "subscribe", "channel": CHANNEL})
            request(ws, {"type": "publish", "channel": "_metered/status", "data": "hi"})
        for n in itertools.count():
            request(ws, {"type": "publish", "channel": CHANNEL, "data": {"n": n}})
            request(ws, {"type": "send", "to": welcome["peerId"], "data": {"n": n}})
            idle(ws, PUBLISH_S)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    first = True
    while True:
        try:
            session(first)
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            print(f"closed {code}: reconnecting in {RECONNECT_S * 1000:.0f} ms", flush=True)
        except (InvalidStatus, OSError, TimeoutError) as exc:
            print(f"connect failed ({exc}): reconnecting", flush=True)
        first = False
        time.sleep(RECONNECT_S)


if __name__ == "__main__":
    main()
