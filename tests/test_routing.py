"""The core's routing, connect and disconnect orders (`server.routing`), step by step.

Each test runs an order against a port that records what the order asks of its driver
(charge, hold, call, ...) and answers from a script, and pins the calls, their order
and the reply.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from coredriver import Core, finish

from server.actions import Message, Route
from server.backend import BackendError
from server.config import Key, default_config
from server.faults import FaultEngine
from server.node import Node
from server.routing import (
    RestPublisher,
    RestReply,
    call_backend,
    run_connect,
    run_disconnect,
    run_route,
)
from server.stats import AppCounters

T0 = 1_000.0
APP = "demo"


def clock() -> float:
    return T0


def engine(*specs: dict) -> FaultEngine:
    faults = FaultEngine(0, T0)
    for spec in specs:
        faults.add(spec)
    return faults


def publisher() -> RestPublisher:
    return RestPublisher(APP, AppCounters())


def rest_publish(p: RestPublisher) -> Route:
    route = p.publish("news", {"data": {"n": 1}})
    assert isinstance(route, Route)
    return route


class Recorder:
    """A port that logs each request of an order and answers from a script."""

    def __init__(self, *, charged: bool = True, admitted: bool = True, result: Any = 0,
                 raises: Exception | None = None) -> None:
        self.charged, self.admitted, self.result, self.raises = charged, admitted, result, raises
        self.log: list[tuple[str, Any]] = []

    async def charge(self, app_id: str) -> bool:
        self.log.append(("charge", app_id))
        return self.charged

    async def admit(self, app_id: str) -> bool:
        self.log.append(("admit", app_id))
        return self.admitted

    async def release(self, app_id: str) -> None:
        self.log.append(("release", app_id))
        if self.raises is not None:
            raise self.raises

    async def forget(self, conn: object) -> None:
        self.log.append(("forget", conn))

    async def hold(self, seconds: float) -> None:
        self.log.append(("hold", seconds))

    async def call(self, origin: object, route: Route) -> Any:
        self.log.append(("call", route))
        if self.raises is not None:
            raise self.raises
        return self.result


def test_a_charged_publish_asks_the_ledger_then_the_backend_then_completes():
    p = publisher()
    route = rest_publish(p)
    port = Recorder(result=3)
    reply = finish(run_route(p, route, engine(), clock, port))
    assert port.log == [("charge", APP), ("call", route)]
    assert reply == RestReply(200, {"channel": "news", "delivered": 3})
    assert p.counters.published == 1


def test_a_refused_charge_ends_over_quota_before_faults_and_backend():
    p = publisher()
    faults = engine({"kind": "error", "probability": 1.0})
    port = Recorder(charged=False)
    reply = finish(run_route(p, rest_publish(p), faults, clock, port))
    assert port.log == [("charge", APP)]
    assert reply == RestReply(
        429, {"error": "over_message_quota",
              "message": "message quota used up for this period"})
    assert p.counters.errors == {"over_message_quota": 1}
    assert p.counters.published == 0


def test_an_error_fault_answers_after_the_charge_without_calling_the_backend():
    p = publisher()
    faults = engine({"kind": "error", "code": "internal_error", "probability": 1.0,
                     "id": "f-1"})
    port = Recorder()
    reply = finish(run_route(p, rest_publish(p), faults, clock, port))
    assert port.log == [("charge", APP)]
    assert reply == RestReply(
        500, {"error": "internal_error", "message": "injected internal_error (fault f-1)"})


def test_latency_holds_before_routing_or_before_the_reply():
    p = publisher()
    route = rest_publish(p)
    faults = engine({"kind": "latency", "ms": 20},
                    {"kind": "latency", "ms": 30, "where": "before_ack"})
    port = Recorder(result=1)
    reply = finish(run_route(p, route, faults, clock, port))
    assert port.log == [("charge", APP), ("hold", pytest.approx(0.020)), ("call", route),
                        ("hold", pytest.approx(0.030))]
    assert reply.status == 200


@pytest.mark.parametrize(("exc", "code", "status", "message"), [
    (BackendError("redis down"), "backend_error", 503, "redis down"),
    (BackendError(), "backend_error", 503, "backend unavailable"),
    (KeyError("bug"), "internal_error", 500, "internal error"),
])
def test_an_exception_from_the_port_becomes_the_origins_failure(exc, code, status, message):
    p = publisher()
    reply = finish(run_route(p, rest_publish(p), engine(), clock, Recorder(raises=exc)))
    assert reply == RestReply(status, {"error": code, "message": message})
    assert p.counters.errors == {code: 1}


def test_a_subscribe_is_not_charged_and_calls_the_backend_with_the_connection():
    core = Core()
    conn = core.connect(key="pk_live_demo")
    route = Route("subscribe", "r1", "news", True)
    port = Recorder(result=[])
    finish(run_route(conn, route, core.faults, core.clock, port))
    assert port.log == [("call", route)]
    calls = []

    class Backend:
        def subscribe(self, *args):
            calls.append(args)
            return "awaitable"

    assert call_backend(Backend(), conn, route) == "awaitable"
    assert calls == [(conn, "news", True)]


def test_connect_asks_for_a_slot_then_admits():
    core = Core()
    pending = core.service.authenticate({"key": ["pk_live_demo"]}, T0)
    port = Recorder(admitted=False)
    conn, actions = finish(run_connect(core.service, pending, engine(), clock, port))
    assert port.log == [("admit", "app_demo")]
    assert conn is None and actions[0].code == 4010


def test_a_connect_fault_refuses_1011_without_asking_the_ledger():
    core = Core()
    pending = core.service.authenticate({"key": ["pk_live_demo"]}, T0)
    faults = engine({"kind": "error", "ops": ["connect"], "probability": 1.0, "id": "f-2"})
    port = Recorder()
    conn, actions = finish(run_connect(core.service, pending, faults, clock, port))
    assert port.log == []
    assert conn is None
    assert (actions[0].code, actions[0].reason) == (1011, "injected backend_error (fault f-2)")


def test_the_test_driver_runs_the_same_faults_as_the_node():
    core = Core()
    core.faults.add({"kind": "error", "ops": ["publish"], "probability": 1.0, "id": "f-3"})
    conn = core.connect(key="pk_live_demo")
    core.take(conn)
    got = core.send(conn, {"type": "publish", "channel": "news", "data": 1,
                           "requestId": "p1"})
    assert got == [{"type": "error", "code": "backend_error",
                    "message": "injected backend_error (fault f-3)", "requestId": "p1"}]
    assert core.ledgers.ledgers["app_demo"].messages_used == 1  # charged, then failed


def test_a_hold_advances_the_test_drivers_clock():
    core = Core()
    core.faults.add({"kind": "latency", "ms": 40, "ops": ["publish"]})
    conn = core.connect(key="pk_live_demo")
    before = core.now
    core.send(conn, {"type": "publish", "channel": "news", "data": 1, "requestId": "p1"})
    assert core.holds == [pytest.approx(0.040)]
    assert core.now == pytest.approx(before + 0.040)


def test_message_body_of_a_rest_publish_has_no_origin():
    route = rest_publish(publisher())
    assert route.charge and route.request_id is None
    assert route.body == Message(APP, "news", "system", {"n": 1}, None, None)


def test_the_node_routes_a_rest_publish_through_the_same_order():
    node = Node(default_config())
    publisher = node.service.rest_publisher("app_demo")
    reply = asyncio.run(node.route(publisher, rest_publish(publisher)))
    assert reply == RestReply(200, {"channel": "news", "delivered": 0})
    node.faults.add({"kind": "error", "ops": ["publish"], "probability": 1.0, "id": "f-4"})
    reply = asyncio.run(node.route(publisher, rest_publish(publisher)))
    assert reply == RestReply(503, {"error": "backend_error",
                                    "message": "injected backend_error (fault f-4)"})
    counters = node.service.stats.app("app_demo")
    assert (counters.published, counters.errors["backend_error"]) == (1, 1)


def test_a_disconnect_is_counted_once_then_frees_the_slot_then_the_backend_forgets():
    core = Core()
    conn = core.connect(key="pk_live_demo")
    port = Recorder()
    assert finish(run_disconnect(core.service, conn, core.now, port)) is True
    assert port.log == [("release", "app_demo"), ("forget", conn)]
    assert finish(run_disconnect(core.service, conn, core.now, port)) is False
    assert len(port.log) == 2


def test_a_failure_to_free_the_slot_is_logged_and_ends_the_disconnect(caplog):
    core = Core()
    conn = core.connect(key="pk_live_demo")
    port = Recorder(raises=BackendError("redis down"))
    assert finish(run_disconnect(core.service, conn, core.now, port)) is True
    assert port.log == [("release", "app_demo")]
    assert "failed to forget a connection" in caplog.text


def test_a_rest_publish_is_refused_by_the_core_rules_before_any_step():
    p = publisher()
    assert p.publish("news", {}) == RestReply(
        400, {"error": "missing_data", "message": "publish needs `data`"})
    assert p.publish("news", {"data": 1, "from": ""}).body["error"] == "invalid_peer_id"
    assert p.publish("news", {"data": 1, "peerMetadata": 3}) == RestReply(
        400, {"error": "invalid_request", "message": "peerMetadata: must be an object"})
    key = Key("sk_id_x", channel_patterns=("news/*",), secret="s")
    assert RestPublisher.refuse_channel("news/1", key) is None
    assert RestPublisher.refuse_channel("sports", key) == RestReply(
        403, {"error": "channel_not_authorized", "message": "not authorized: sports"})
    assert RestPublisher.refuse_channel("_system/x", key).body["error"] == "channel_reserved"
