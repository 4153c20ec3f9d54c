"""The client behaviours, driven by a scripted fake driver: no sockets, a fake clock.

Each test scripts what the server answers (per operation, in order; "ok" when the
script says nothing) and asserts on the intents the behaviour yields: what the Locust
users and the virtual engine are asked to do. `ClientState` is the view both drivers
keep (test_clientstate.py pins its rules).
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from typing import Any

import pytest

from loadtests.behaviours import BEHAVIOURS, DRAIN_S, Behaviour
from loadtests.catalog import BAD_INPUT, USER_CLASSES, parse_params
from loadtests.clientstate import ClientState
from loadtests.intents import (
    Connect,
    Disconnect,
    Fire,
    FreshToken,
    GiveUp,
    Idle,
    Intent,
    Renew,
    Request,
    Result,
    SendRaw,
    Sleep,
)
from loadtests.retry import make_policy

T0 = 1000.0
SEED = 7
CONSTANT = {"policy": "default", "backoff": "constant", "base_s": 0.25, "cap_s": 0.25,
            "jitter_1001_s": 0.0}


class GaveUp(Exception):
    pass


class Driver:
    """Performs intents on a `ClientState` and a fake clock, as a real driver would.

    `outcomes[op]` is what the next requests of `op` get ("ok" once it runs out); a
    close outcome ("close 4001") closes the connection. `close_at` closes it at a time,
    noticed by an `Idle` at its next wake. Requests take `LATENCY_S`.
    """

    LATENCY_S = 0.01

    def __init__(self, base: str, *, swarm_model: str = "closed", **params: Any) -> None:
        self.now = T0
        self.state = ClientState()
        self.outcomes: dict[str, deque[str]] = defaultdict(deque)
        self.close_at: tuple[float, int, int | None] | None = None
        self.fires_accepted: int | None = None
        self.intents: list[Intent] = []
        self.user_id = f"{base}-t-1"
        self.behaviour: Behaviour = BEHAVIOURS[base](
            parse_params(base, params), user_id=self.user_id, seed=SEED, model=swarm_model,
            clock=lambda: self.now, client=lambda: self.state)

    def script(self, op: str, *outcomes: str) -> Driver:
        self.outcomes[op].extend(outcomes)
        return self

    def run(self, steps: Any) -> list[Intent]:
        """Drive one generator to its end (or a GiveUp); the intents it yielded."""
        start = len(self.intents)
        result: Any = None
        try:
            while True:
                intent = steps.send(result)
                self.intents.append(intent)
                result = self.perform(intent)
        except StopIteration:
            pass
        except GaveUp:
            pass
        return self.intents[start:]

    def start(self) -> list[Intent]:
        return self.run(self.behaviour.on_start())

    def tasks(self, n: int) -> list[Intent]:
        return [i for _ in range(n) for i in self.run(self.behaviour.task())]

    def outcome(self, op: str) -> str:
        queue = self.outcomes[op]
        return queue.popleft() if queue else "ok"

    def perform(self, intent: Intent) -> Any:
        state = self.state
        if isinstance(intent, Connect):
            state.connecting()
            outcome = self.outcome("connect")
            if outcome == "ok":
                state.opened()
            return self.finish("connect", outcome)
        if isinstance(intent, Request):
            if not state.is_open:
                return Result(intent.op, f"close {state.close_code or 1006}", 0.0, self.now)
            outcome = self.outcome(intent.op)
            result = self.finish(intent.op, outcome, intent.intended_t)
            if outcome == "ok":
                state.acked(intent.op, intent.channel, self.now)
            return result
        if isinstance(intent, Fire):
            if self.fires_accepted is not None:
                self.fires_accepted -= 1
                if self.fires_accepted < 0:
                    state.closed(4011)
            return state.is_open
        if isinstance(intent, SendRaw):
            return self.finish(intent.op, self.outcome(intent.op))
        if isinstance(intent, Sleep):
            assert intent.seconds > 0
            self.now += intent.seconds
            return None
        if isinstance(intent, Idle):
            self.now = intent.first_at
            if self.close_at is None:
                raise GaveUp  # idle for ever: nothing more to see
            at, code, hint = self.close_at
            while self.now < at:
                self.now += intent.tick_s
            state.closed(code)
            state.going_away_ms = hint
            self.close_at = None
            return None
        if isinstance(intent, Disconnect):
            state.closed(1000)
            return None
        if isinstance(intent, Renew):
            old = state.token if intent.keep_credential else None
            self.state = ClientState(intent.token or old)
            return None
        if isinstance(intent, FreshToken):
            return "fresh-token"
        if isinstance(intent, GiveUp):
            raise GaveUp
        raise AssertionError(f"unknown intent {intent!r}")

    def finish(self, op: str, outcome: str, intended_t: float | None = None) -> Result:
        sent_at = self.now if intended_t is None else intended_t
        self.now += self.LATENCY_S
        if outcome.startswith("close "):
            self.state.closed(int(outcome[6:]))
        return Result(op, outcome, (self.now - sent_at) * 1000.0, sent_at)


def kinds(intents: list[Intent]) -> list[str]:
    return [type(i).__name__ for i in intents]


def user_rng(user_id: str) -> random.Random:
    """The rng a behaviour seeds for `user_id` (its policy draws from it too)."""
    return random.Random(f"{SEED}:{user_id}")


def publish(intents: list[Intent]) -> list[Request]:
    return [i for i in intents if isinstance(i, Request) and i.op == "publish"]


# -- the catalog -------------------------------------------------------------------------


def test_one_behaviour_per_catalog_class_with_its_parameter_set():
    assert list(BEHAVIOURS) == list(USER_CLASSES)
    assert {name: cls.params_type for name, cls in BEHAVIOURS.items()} == USER_CLASSES


def test_the_policy_is_the_scenarios_and_its_name_is_readable():
    assert Driver("Publisher", policy="naive").behaviour.policy.name == "naive"
    assert Driver("Publisher").behaviour.policy.name == "default"


# -- connect, retries, give up ---------------------------------------------------------------


def test_on_start_connects_once_when_the_server_welcomes():
    d = Driver("Publisher")
    assert d.start() == [Connect(1)]
    assert d.state.is_open


def test_a_publisher_retries_backend_error_with_its_backoff_and_the_same_message():
    d = Driver("Publisher", rate=4, policy=CONSTANT)
    d.start()
    started = d.now
    d.script("publish", "backend_error", "backend_error")
    intents = d.tasks(1)
    assert kinds(intents) == ["Sleep", "Request", "Sleep", "Request", "Sleep", "Request"]
    first, second, third = publish(intents)
    assert [r.attempt for r in (first, second, third)] == [1, 2, 3]
    assert first.msg_id == second.msg_id == third.msg_id == "Publisher-t-1:1"
    assert first.frame is second.frame is third.frame  # the same message, resent
    assert first.frame == {"type": "publish", "channel": "room/1", "data": {
        "id": "Publisher-t-1:1", "ts": started + 0.25, "pub": "Publisher-t-1", "ch": "room/1",
        "v": "x" * 64}}
    assert [i.seconds for i in intents if isinstance(i, Sleep)] == [0.25, 0.25, 0.25]


def test_the_default_policy_draws_its_backoff_from_the_users_seeded_rng():
    d = Driver("Publisher", rate=4)
    d.start()
    d.script("publish", "backend_error", "backend_error")
    sleeps = [i.seconds for i in d.tasks(1) if isinstance(i, Sleep)]
    twin = make_policy("default", rng=user_rng(d.user_id))
    assert sleeps == [0.25, twin.backoff.delay(1), twin.backoff.delay(2)]


def test_a_never_code_is_not_retried_and_the_next_message_has_the_next_id():
    d = Driver("Publisher", rate=4)
    d.start()
    d.script("publish", "channel_reserved")
    assert [(r.attempt, r.msg_id) for r in publish(d.tasks(2))] == [
        (1, "Publisher-t-1:1"), (1, "Publisher-t-1:2")]


def test_a_terminal_close_at_connect_gives_up():
    d = Driver("Subscriber")
    d.script("connect", "close 4001")
    assert d.start() == [Connect(1), GiveUp("close 4001")]


def test_a_terminal_close_mid_connection_gives_up_at_the_next_task():
    d = Driver("Publisher", rate=4)
    d.start()
    d.script("publish", "close 4001")
    assert kinds(d.tasks(1)) == ["Sleep", "Request"]  # the close ends the attempt
    assert d.tasks(1) == [GiveUp("close 4001")]


def test_a_dropped_connect_is_retried_with_backoff_until_welcomed():
    d = Driver("Publisher", policy=CONSTANT)
    d.script("connect", "refused", "timeout")
    assert d.start() == [Connect(1), Sleep(0.25), Connect(2), Sleep(0.25), Connect(3)]


def test_policy_none_gives_up_at_the_first_failed_connect():
    d = Driver("Publisher", policy="none")
    d.script("connect", "refused")
    assert d.start() == [Connect(1), GiveUp("close None")]


def test_an_expired_token_is_refreshed_at_once_and_the_user_reconnects_with_it():
    d = Driver("Publisher", rate=4)
    d.start()
    d.script("publish", "close 4002")
    d.tasks(1)
    assert d.tasks(1)[:3] == [FreshToken(), Renew("fresh-token"), Connect(1)]
    assert d.state.token == "fresh-token"


def test_4011_throttles_the_pace_to_half():
    d = Driver("Publisher", rate=4, policy=CONSTANT)
    d.start()
    d.script("publish", "close 4011")
    d.tasks(1)
    reconnect = d.tasks(1)
    assert reconnect == [Sleep(0.25), Renew(), Connect(1), Sleep(0.5),
                         publish(reconnect)[0]]


def test_channel_limit_unsubscribes_the_oldest_then_subscribes_again():
    d = Driver("Chatter", channels=["a", "b", "c"])
    d.script("subscribe", "ok", "ok", "channel_limit_exceeded")
    intents = d.start()
    assert [(i.op, i.channel, i.attempt) for i in intents if isinstance(i, Request)] == [
        ("subscribe", "a", 1), ("subscribe", "b", 1), ("subscribe", "c", 1),
        ("unsubscribe", "a", 1), ("subscribe", "c", 2)]
    assert sorted(d.state.subscriptions) == ["b", "c"]


# -- pacing ------------------------------------------------------------------------------------


def test_a_closed_model_publisher_paces_one_per_interval_after_the_last():
    d = Driver("Publisher", rate=4)
    d.start()
    intents = d.tasks(3)
    assert kinds(intents) == ["Sleep", "Request"] * 3
    assert [i.seconds for i in intents if isinstance(i, Sleep)] == [0.25] * 3
    assert [r.intended_t for r in publish(intents)] == [None] * 3


def test_an_open_model_publisher_yields_its_intended_slots():
    d = Driver("Publisher", swarm_model="open", rate=4)
    d.start()  # the connect took LATENCY_S
    started = d.now
    intents = d.tasks(3)
    first = started + user_rng(d.user_id).uniform(0, 0.25)  # the phase is spread per user
    slots = [first, first + 0.25, first + 0.5]
    assert [r.intended_t for r in publish(intents)] == pytest.approx(slots)
    assert [r.frame["data"]["ts"] for r in publish(intents)] == pytest.approx(slots)
    # Each wait ends at its slot: the time a request took does not push the next one.
    sleeps = [i.seconds for i in intents if isinstance(i, Sleep)]
    assert sleeps == pytest.approx([first - started, 0.25 - Driver.LATENCY_S,
                                    0.25 - Driver.LATENCY_S])


def test_a_slot_already_past_is_not_waited_for_under_the_open_model():
    d = Driver("Publisher", swarm_model="open", rate=4)
    d.start()
    d.tasks(1)
    d.now += 10  # a stall: the slots it missed go out at once, timed from their slots
    intents = d.tasks(2)
    assert kinds(intents) == ["Request", "Request"]
    assert [r.intended_t for r in publish(intents)] == pytest.approx(
        [publish(d.intents)[0].intended_t + 0.25 * n for n in (1, 2)])


def test_the_swarms_model_yields_to_the_classes_own():
    assert Driver("Publisher", swarm_model="closed", model="open").behaviour.model == "open"
    assert Driver("Publisher", swarm_model="open").behaviour.model == "open"
    assert Driver("Publisher", swarm_model="open", model="closed").behaviour.model == "closed"


# -- the behaviours ------------------------------------------------------------------------------


def test_a_subscriber_subscribes_then_idles_one_intent_per_connection():
    d = Driver("Subscriber", channels=["a/1", "a/2", "a/3", "a/4"], subscriptions=3,
               wildcard_fraction=0.34)
    intents = d.start()
    rng = user_rng(d.user_id)
    picks = rng.sample(["a/1", "a/2", "a/3", "a/4"], 3)
    assert intents == [Connect(1)] + [
        Request("subscribe", {"type": "subscribe", "channel": c}, channel=c)
        for c in [*picks[:2], "a/*"]]
    connected = d.now
    assert d.tasks(1) == [Idle(connected + 5.0, 5.0)]  # rate 0.2: a tick every 5 s


def test_a_subscriber_reconnects_after_a_close_honouring_going_away():
    d = Driver("Subscriber", subscriptions=1, wildcard_fraction=0, policy=CONSTANT)
    d.start()
    connected = d.now
    d.close_at = (connected + 12.0, 1001, 2000)  # a deploy, with retryAfterMs 2000
    assert d.tasks(1) == [Idle(connected + 5.0, 5.0)]
    assert d.now == pytest.approx(connected + 15.0)  # noticed at the tick after the close
    intents = d.tasks(1)
    sub = Request("subscribe", {"type": "subscribe", "channel": "room/1"}, channel="room/1")
    assert intents[:4] == [Sleep(2.0), Renew(), Connect(1), sub]  # hint + 0 jitter
    idle = intents[4]
    assert isinstance(idle, Idle) and idle.tick_s == 5.0
    assert idle.first_at == pytest.approx(connected + 17.0 + 2 * Driver.LATENCY_S + 5.0)


def test_an_open_model_subscriber_keeps_its_slots_across_an_idle():
    d = Driver("Subscriber", swarm_model="open", subscriptions=1, wildcard_fraction=0,
               policy={**CONSTANT, "backoff": "none"})
    d.start()
    closed_at = d.now + 100.0
    d.close_at = (closed_at, 1006, None)
    (idle,) = d.tasks(1)
    woke = d.now  # the driver's first wake at or after the close
    assert isinstance(idle, Idle) and idle.tick_s == 5.0
    assert closed_at <= woke < closed_at + 5.0
    intents = d.tasks(1)
    assert kinds(intents) == ["Renew", "Connect", "Request", "Idle"]  # no backoff
    # The slot after the wake that found it closed: the slots went on while idle.
    assert intents[-1].first_at == pytest.approx(woke + 5.0)


def test_a_direct_sender_sends_to_a_peer_it_learnt_from_presence():
    d = Driver("DirectSender", rate=1)
    d.start()
    assert publish(d.tasks(1)) == [] and kinds(d.intents[-1:]) == ["Sleep"]  # nobody yet
    d.state.on_frame({"type": "presence", "channel": "lobby",
                      "joined": [{"peerId": "p1"}, {"peerId": "p2"}]})
    (sleep, send) = d.tasks(1)
    assert sleep == Sleep(1.0)
    peer = sorted(["p1", "p2"])[user_rng(d.user_id).randrange(2)]
    assert (send.op, send.peer, send.channel, send.frame["to"]) == ("send", peer, "", peer)
    assert send.frame["data"]["ch"] == "" and send.frame["data"]["v"] == "hi"


def test_a_rate_abuser_stops_firing_when_the_connection_closes():
    d = Driver("RateAbuser", burst=10, rate=1)
    d.start()
    d.fires_accepted = 3  # the fourth finds it closed (4011)
    intents = d.tasks(1)
    assert kinds(intents) == ["Sleep"] + ["Fire"] * 4
    fires = intents[1:]
    assert [f.msg_id for f in fires] == [f"RateAbuser-t-1:{n}" for n in range(1, 5)]
    assert fires[0] == Fire("publish", {"type": "publish", "channel": "abuse", "data": {
        "id": "RateAbuser-t-1:1", "ts": d.now, "pub": "RateAbuser-t-1", "ch": "abuse",
        "v": 0}}, channel="abuse", msg_id="RateAbuser-t-1:1")


def test_a_misbehaving_user_cycles_its_kinds_and_comes_straight_back_after_1009():
    d = Driver("Misbehaving", rate=2, kinds=["oversize_frame", "invalid_json"])
    d.start()
    d.script("oversize_frame", "close 1009")
    first = d.tasks(1)
    assert first == [Sleep(0.5), SendRaw("oversize_frame", BAD_INPUT["oversize_frame"][1]())]
    # No policy decision, no wait: renew and connect, then the next kind.
    assert d.tasks(1) == [Renew(), Connect(1), Sleep(0.5), SendRaw("invalid_json",
                                                                   "{not json")]


def test_a_churner_holds_then_disconnects_and_connects_again():
    d = Driver("Churner", rate=2, hold_s=0.3)
    d.start()
    assert d.tasks(2) == [Sleep(0.5), Sleep(0.3), Disconnect(), Renew(), Connect(1)] * 2


def test_a_churner_with_no_hold_does_not_sleep_for_it():
    d = Driver("Churner", rate=2, hold_s=0)
    d.start()
    assert d.tasks(1) == [Sleep(0.5), Disconnect(), Renew(), Connect(1)]


def test_a_chatter_publishes_to_its_rooms_until_it_sees_someone():
    d = Driver("Chatter", channels=["r"], send_fraction=1.0, rate=1)
    d.start()
    assert [(r.op, r.channel) for r in d.tasks(1) if isinstance(r, Request)] == [
        ("publish", "r")]
    d.state.on_frame({"type": "presence", "channel": "r", "joined": [{"peerId": "q"}]})
    assert [(r.op, r.peer) for r in d.tasks(1) if isinstance(r, Request)] == [("send", "q")]


def test_a_quota_burner_publishes_zeros_at_its_rate():
    d = Driver("QuotaBurner")
    d.start()
    (sleep, request) = d.tasks(1)
    assert sleep == Sleep(1 / 200) and request.frame["data"]["v"] == 0


def test_on_stop_drains_then_disconnects():
    d = Driver("Publisher")
    d.start()
    assert d.run(d.behaviour.on_stop()) == [Disconnect(DRAIN_S)]


def test_a_behaviour_is_not_resumed_after_giving_up():
    d = Driver("Publisher", policy="none")
    d.script("connect", "refused")
    steps = d.behaviour.on_start()
    assert next(steps) == Connect(1)
    assert steps.send(Result("connect", "refused", 1.0, T0)) == GiveUp("close None")
    with pytest.raises(RuntimeError, match="resumed after GiveUp"):
        steps.send(None)
