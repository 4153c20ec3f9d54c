"""The REST control plane on the admin port (PROTOCOL.md section 8) and `/sim/v1`.

`/v1` endpoints authenticate with an app's secret key; `/sim/v1` endpoints (simulation
controls) are open on the loopback admin port unless a sim token is configured.
Every error is `{"error": code, "message": text}`, including aiohttp's own 404/405/413.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import resource
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from . import metrics
from .auth import MAX_METADATA_BYTES, MAX_PEER_METADATA_BYTES, mint_token
from .backend import BackendError
from .codes import CloseCode
from .config import ACTIONS, App, Key
from .faults import FaultSpecError
from .jsonenc import dumps, loads
from .node import Node
from .patterns import peer_id_problem
from .routing import RestPublisher, RestReply

log = logging.getLogger("rtmsim.rest")
BODY_LIMIT = 32 * 1024
MAX_TOKEN_TTL_S = 86400
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

APP_KEY = web.AppKey("node", Node)
AUTH_KEY = "rtmsim_auth"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _json(body: Any, status: int = 200) -> web.Response:
    """A JSON response; the safe encoder, as peers' metadata and messages echo client text."""
    return web.Response(body=dumps(body), status=status,
                        content_type="application/json")


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    node = request.app[APP_KEY]
    try:
        response = await handler(request)
    except ApiError as exc:
        response = _json({"error": exc.code, "message": exc.message}, exc.status)
    except web.HTTPException as exc:
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = _json({"error": code, "message": exc.reason}, exc.status)
    except Exception:
        log.exception("REST handler failed")
        response = _json({"error": "internal_error", "message": "internal error"}, 500)
    events = node.service.events
    if events is not None:
        auth = request.get(AUTH_KEY)
        events.emit(node.clock(), "rest", method=request.method, path=request.path,
                    status=response.status, app=auth[0].id if auth else None)
    return response


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _secret_key(request: web.Request) -> tuple[App, Key]:
    """The app whose secret key signs this request, or 401."""
    node = request.app[APP_KEY]
    credential = _bearer(request) or ""
    key_id, _, secret = credential.partition(":")
    found = node.config.key(key_id)
    if (found is None or found[1].secret is None
            or not hmac.compare_digest(found[1].secret.encode(), secret.encode())):
        raise ApiError(401, "unauthorized", "unauthorized")
    request[AUTH_KEY] = found
    return found


def _check_sim_token(request: web.Request) -> None:
    token = request.app[APP_KEY].config.server.sim_token
    if token is None:
        return
    given = _bearer(request) or ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "unauthorized", "unauthorized")


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > BODY_LIMIT:
        raise ApiError(413, "payload_too_large", f"body larger than {BODY_LIMIT} bytes")
    raw = await request.read()
    if len(raw) > BODY_LIMIT:
        raise ApiError(413, "payload_too_large", f"body larger than {BODY_LIMIT} bytes")
    if not raw:
        return {}
    try:
        body = loads(raw)  # the WebSocket frames' JSON.parse semantics
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_request", "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "body must be a JSON object")
    return body


def _channel(request: web.Request, key: Key) -> str:
    channel = request.match_info["channel"]
    refused = RestPublisher.refuse_channel(channel, key)
    if refused is not None:
        raise ApiError(refused.status, refused.body["error"], refused.body["message"])
    return channel


def _object_field(body: dict[str, Any], name: str, limit: int) -> dict[str, Any] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", f"{name}: must be an object")
    if len(dumps(value)) > limit:
        raise ApiError(400, "invalid_request", f"{name}: larger than {limit} bytes")
    return value


# -- /v1 ----------------------------------------------------------------------------------

async def create_token(request: web.Request) -> web.Response:
    _, key = _secret_key(request)
    body = await _body(request)
    peer_id = body.get("peerId")
    problem = peer_id_problem(peer_id)
    if problem:
        raise ApiError(400, "invalid_peer_id", f"peerId: {problem}")
    claims: dict[str, Any] = {"sub": peer_id}
    channels = body.get("channels")
    if channels is not None:
        if not isinstance(channels, list) or not all(isinstance(c, str) and c
                                                     for c in channels):
            raise ApiError(400, "invalid_request", "channels: must be a list of non-empty "
                                                   "strings")
        claims["channels"] = channels
    permissions = body.get("permissions")
    if permissions is not None:
        if not isinstance(permissions, list) or not all(p in ACTIONS for p in permissions):
            raise ApiError(400, "invalid_request",
                           f"permissions: must be a list drawn from {', '.join(ACTIONS)}")
        claims["permissions"] = permissions
    ttl = body.get("expiresInSec", 3600)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_TOKEN_TTL_S:
        raise ApiError(400, "invalid_request",
                       f"expiresInSec: must be a whole number of 1..{MAX_TOKEN_TTL_S}")
    for name, limit in (("metadata", MAX_METADATA_BYTES),
                        ("peerMetadata", MAX_PEER_METADATA_BYTES)):
        value = _object_field(body, name, limit)
        if value is not None:
            claims[name] = value
    now = request.app[APP_KEY].clock()
    claims["iat"] = int(now)
    claims["exp"] = int(now) + ttl
    return _json({"token": mint_token(key, claims), "expiresAt": claims["exp"]})


async def channel_peers(request: web.Request) -> web.Response:
    app, key = _secret_key(request)
    channel = _channel(request, key)
    node = request.app[APP_KEY]
    try:
        peers = await node.backend.channel_peers(app.id, channel)
    except BackendError as exc:
        raise ApiError(503, "backend_error", str(exc) or "backend unavailable") from None
    return _json({"channel": channel, "peers": peers})


async def publish(request: web.Request) -> web.Response:
    """The rules are the core's (`RestPublisher`); this handler only speaks HTTP."""
    app, key = _secret_key(request)
    node = request.app[APP_KEY]
    publisher = node.service.rest_publisher(app.id)
    reply = publisher.refuse_channel(request.match_info["channel"], key)
    if reply is None:
        step = publisher.publish(request.match_info["channel"], await _body(request))
        reply = step if isinstance(step, RestReply) else await node.route(publisher, step)
    return _json(reply.body, reply.status)


async def kick_peer(request: web.Request) -> web.Response:
    app, _ = _secret_key(request)
    peer_id = request.match_info["peerId"]
    problem = peer_id_problem(peer_id)
    if problem:
        raise ApiError(400, "invalid_peer_id", problem)
    node = request.app[APP_KEY]
    try:
        closed = await node.backend.kick(app.id, peer_id, CloseCode.ADMIN_DISCONNECT,
                                         "admin disconnect")
    except BackendError as exc:
        raise ApiError(503, "backend_error", str(exc) or "backend unavailable") from None
    return _json({"peerId": peer_id, "closed": closed})


async def usage(request: web.Request) -> web.Response:
    app, _ = _secret_key(request)
    node = request.app[APP_KEY]
    try:
        return _json(await node.ledgers.usage(app.id, node.clock()))
    except BackendError as exc:
        raise ApiError(503, "backend_error", str(exc) or "backend unavailable") from None


# -- /sim/v1 --------------------------------------------------------------------------------

async def sim_stats(request: web.Request) -> web.Response:
    _check_sim_token(request)
    node = request.app[APP_KEY]
    now = node.clock()
    body = node.service.stats.snapshot()
    body["instance"] = node.service.instance_id
    body["backend"] = node.backend.state()
    body["process"] = process_usage()
    body["process"]["refused_no_descriptors"] = node.descriptors.refused
    body["serverTime"] = int(now * 1000)
    body["usage"] = {}
    for app in node.config.apps:
        try:
            body["usage"][app.id] = await node.ledgers.usage(app.id, now)
        except BackendError:
            body["usage"][app.id] = None  # the shared ledger is unreachable
    body["faults"] = {"scenarioTime": round(node.faults.scenario_time(now), 6),
                      "origin": node.faults.origin, "active": node.faults.describe()}
    return _json(body)


async def prometheus_metrics(request: web.Request) -> web.Response:
    """`/metrics`: Prometheus text (server/metrics.py), guarded as `/sim/v1` is."""
    _check_sim_token(request)
    body = await metrics.exposition(request.app[APP_KEY])
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE_LATEST})


async def sim_deploy(request: web.Request) -> web.Response:
    _check_sim_token(request)
    body = await _body(request)
    retry = body.get("retryAfterMs", 1000)
    if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
        raise ApiError(400, "invalid_request", "retryAfterMs: must be a whole number >= 0")
    fraction = body.get("fraction", 1.0)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not (
            0 < fraction <= 1):
        raise ApiError(400, "invalid_request", "fraction: must be a number in (0, 1]")
    closed = request.app[APP_KEY].going_away(float(fraction), retry)
    return _json({"closed": closed, "retryAfterMs": retry, "fraction": fraction})


async def sim_faults(request: web.Request) -> web.Response:
    _check_sim_token(request)
    node = request.app[APP_KEY]
    now = node.clock()
    return _json({"scenarioTime": round(node.faults.scenario_time(now), 6),
                  "faults": node.faults.describe()})


async def sim_add_fault(request: web.Request) -> web.Response:
    _check_sim_token(request)
    body = await _body(request)
    node = request.app[APP_KEY]
    try:
        fault = node.faults.add(body, "fault")
    except FaultSpecError as exc:
        raise ApiError(400, "invalid_fault", str(exc)) from None
    node.faults_changed()
    return _json(fault.describe(), 201)


async def sim_delete_fault(request: web.Request) -> web.Response:
    _check_sim_token(request)
    node = request.app[APP_KEY]
    fault_id = request.match_info["faultId"]
    if not node.faults.remove(fault_id):
        raise ApiError(404, "not_found", f"no fault with id {fault_id!r}")
    node.faults_changed()
    return _json({"deleted": fault_id})


async def sim_clear_faults(request: web.Request) -> web.Response:
    _check_sim_token(request)
    node = request.app[APP_KEY]
    n = node.faults.clear()
    node.faults_changed()
    return _json({"deleted": n})


async def sim_clock(request: web.Request) -> web.Response:
    """Set scenario time 0 (`origin`, unix ms) so faults line up with a load run."""
    _check_sim_token(request)
    body = await _body(request)
    origin = body.get("origin")
    if (isinstance(origin, bool) or not isinstance(origin, int | float) or origin <= 0
            or not math.isfinite(origin)):  # 1e400 reads as inf
        raise ApiError(400, "invalid_request", "origin: must be unix milliseconds > 0")
    node = request.app[APP_KEY]
    node.faults.set_origin(origin / 1000.0)
    node.faults_changed()
    now = node.clock()
    return _json({"origin": origin, "scenarioTime": round(node.faults.scenario_time(now), 6)})


def process_usage() -> dict[str, float]:
    """This process's CPU seconds, memory, descriptors and tasks.

    CPU says which resource a capacity run used up; current RSS (not the peak), open
    descriptors and asyncio tasks say whether a long run leaks.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": round(usage.ru_utime + usage.ru_stime, 6),
            "max_rss_kb": usage.ru_maxrss, "rss_kb": _current_rss_kb(),
            "open_fds": _open_fds(), "asyncio_tasks": len(asyncio.all_tasks())}


def _current_rss_kb() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None  # not Linux
    return pages * resource.getpagesize() // 1024


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def make_app(node: Node) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=BODY_LIMIT)
    app[APP_KEY] = node
    r = app.router
    r.add_post("/v1/tokens", create_token)
    r.add_get("/v1/channels/{channel}/peers", channel_peers)
    r.add_post("/v1/channels/{channel}/publish", publish)
    r.add_delete("/v1/peers/{peerId}", kick_peer)
    r.add_get("/v1/usage", usage)
    r.add_get("/sim/v1/stats", sim_stats)
    r.add_post("/sim/v1/deploy", sim_deploy)
    r.add_get("/sim/v1/faults", sim_faults)
    r.add_post("/sim/v1/faults", sim_add_fault)
    r.add_delete("/sim/v1/faults", sim_clear_faults)
    r.add_delete("/sim/v1/faults/{faultId}", sim_delete_fault)
    r.add_post("/sim/v1/clock", sim_clock)
    r.add_get("/metrics", prometheus_metrics)
    return app


async def start_rest(node: Node, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the control plane; return the runner and the bound port."""
    runner = web.AppRunner(make_app(node), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None and server.sockets
    return runner, server.sockets[0].getsockname()[1]
