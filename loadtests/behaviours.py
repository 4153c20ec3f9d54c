"""The client behaviours, each written once as a sans-I/O object of generators.

A behaviour is one virtual user's logic: its parameters, its retry policy, its seeded
rng, its message ids, its pacing, its reconnects. Every method that waits is a
generator that yields intents (`loadtests.intents`) and is sent each one's result
(`result = yield Request(...)`); they compose with `yield from`. Two drivers run them:
the Locust users on real sockets and real time (`loadtests.users`), and the virtual-time
engine on the server core (`sim.virtual`). Nothing here reads a clock or touches a
socket: the time is `clock()`, the connection is `client()` (a `ClientView`, kept by
the driver, e.g. a `clientstate.ClientState`). The interface a driver uses:

    b = BEHAVIOURS["Publisher"](params, user_id="Publisher-v-17", seed=seed,
                                model="closed", clock=clock, client=current_view)
    b.policy      # the RetryPolicy (its name goes into the event log)
    b.on_start()  # connect, retrying per the policy, then set up (subscriptions)
    b.task()      # one iteration of the task; the driver calls it in a loop
    b.on_stop()   # drain and close

A driver performs each intent and sends its result back; after `GiveUp` it stops.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

from server.codes import CloseCode

from .catalog import (
    BAD_INPUT,
    ChatterParams,
    ChurnerParams,
    DirectSenderParams,
    MisbehavingParams,
    PublisherParams,
    QuotaBurnerParams,
    RateAbuserParams,
    SubscriberParams,
    UserParams,
)
from .envelope import envelope
from .intents import (
    MIN_WAIT_S,
    ClientView,
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
from .retry import RetryPolicy, make_policy

__all__ = ["BEHAVIOURS", "DRAIN_S", "MAX_RECONNECTS", "Behaviour", "Chatter", "Churner",
           "DirectSender", "Misbehaving", "Publisher", "QuotaBurner", "RateAbuser", "Steps",
           "Subscriber"]

T = TypeVar("T")
Steps = Generator[Intent, Any, T]  # yields intents, is sent their results, returns a T

MAX_RECONNECTS = 1000  # bound for one user's reconnect loop
DRAIN_S = 2.0  # how long a stopping user waits for the replies of its fired requests
ABNORMAL = CloseCode.ABNORMAL_CLOSURE  # a connect that failed without a close code


class Behaviour:
    """What every behaviour shares: connecting, retrying per the policy, reconnecting
    after closes, pacing under the closed or the open model. Not run by itself.

    Slotted, as are its subclasses: the virtual engine holds a million at once, and a
    `__dict__` each was 112 bytes more.
    """

    __slots__ = ("_next_at", "_sequence", "client", "clock", "model", "params", "policy",
                 "rate", "rng", "send_rate_factor", "user_id")

    params_type: ClassVar[type[UserParams]] = UserParams

    def __init__(self, params: UserParams, *, user_id: str, seed: object, model: str | None,
                 clock: Callable[[], float], client: Callable[[], ClientView],
                 rng: random.Random | None = None) -> None:
        self.params = params
        self.user_id = user_id
        self.clock = clock  # unix seconds, real or virtual
        self.client = client  # the current connection's view (a Renew replaces it)
        # The seed of every draw this user makes, its policy's included: a run with the
        # same scenario seed makes the same decisions. A driver may pass its own source
        # seeded from the same string (the virtual engine's is 56 bytes, not 2.9 KB).
        self.rng = rng if rng is not None else random.Random(f"{seed}:{user_id}")
        self.policy: RetryPolicy = make_policy(params.policy, rng=self.rng)
        self._sequence = 0  # the last message number: ids unique across reconnects
        self.model = params.model or model
        self.rate = params.rate
        self.send_rate_factor = 1.0  # lowered after 4011 (the policy's "throttle")
        self._next_at: float | None = None  # the open model's next slot

    # -- lifecycle ----------------------------------------------------------------------

    def on_start(self) -> Steps[None]:
        yield from self.connect()
        yield from self.after_connect()

    def task(self) -> Steps[None]:
        """One iteration of this behaviour's task (the driver loops on it)."""
        raise NotImplementedError
        yield  # a generator, in subclasses too

    def on_stop(self) -> Steps[None]:
        yield Disconnect(DRAIN_S)

    def after_connect(self) -> Steps[None]:
        """Set-up after every (re)connect: subscriptions. Behaviours override it."""
        yield from ()

    def connect(self) -> Steps[None]:
        """Connect, retrying per the policy; a terminal close gives up."""
        policy = self.policy
        attempt = 1
        for _ in range(MAX_RECONNECTS):
            policy.on_request(attempt > 1)
            result: Result = yield Connect(attempt)
            policy.on_result(result.ok)
            if result.ok:
                return
            code = result.close_code
            decision = policy.after_close(code if code is not None else ABNORMAL, attempt,
                                          self.client().going_away_ms)
            if decision.action == "throttle":
                self._throttle()
            if decision.action == "refresh_token":
                token = yield FreshToken()
                yield Renew(token, keep_credential=False)  # None (refused): the API key
            if not decision.retry:
                yield from self.give_up()
            yield from self.sleep(decision.delay_s)
            attempt += 1
        yield from self.give_up()

    def ensure_connected(self) -> Steps[None]:
        """After the server closed us: decide per the policy whether and when to return."""
        view = self.client()
        if view.is_open:
            return
        decision = self.policy.after_close(view.close_code or ABNORMAL, 1, view.going_away_ms)
        if decision.action == "throttle":
            self._throttle()
        token = (yield FreshToken()) if decision.action == "refresh_token" else None
        if not decision.retry:
            yield from self.give_up()
        yield from self.sleep(decision.delay_s)
        yield Renew(token)
        yield from self.connect()
        yield from self.after_connect()

    def give_up(self) -> Steps[None]:
        yield GiveUp(f"close {self.client().close_code}")
        raise RuntimeError(f"{self.user_id}: resumed after GiveUp (a driver stops there)")

    def _throttle(self) -> None:
        self.send_rate_factor = max(0.1, self.send_rate_factor / 2)

    # -- requests with retries ------------------------------------------------------------

    def attempt(self, request: Request) -> Steps[Result]:
        """Run one logical operation, retrying per the policy (the same frame, so the
        same message id); the last result."""
        policy = self.policy
        attempt = 1
        while True:
            policy.on_request(attempt > 1)
            result: Result = yield request
            policy.on_result(result.ok)
            if result.ok or result.close_code is not None:
                return result  # closed: the next task reconnects
            if result.outcome == "timeout":
                decision = policy.after_timeout(request.op, attempt)
            else:
                decision = policy.after_error(request.op, result.outcome, attempt)
            if decision.action == "unsubscribe_oldest":
                yield from self.unsubscribe_oldest()
            if not decision.retry:
                return result
            yield from self.sleep(decision.delay_s)
            attempt += 1
            request = replace(request, attempt=attempt)

    def publish(self, channel: str, value: Any = None, intended_t: float | None = None
                ) -> Steps[Result]:
        return (yield from self.attempt(self.publish_request(channel, value, intended_t)))

    def publish_request(self, channel: str, value: Any, intended_t: float | None) -> Request:
        """A publish of `value` in this user's next envelope (sent at `intended_t`)."""
        msg_id, data = envelope(self.user_id, self._next_sequence(), value, channel,
                                intended_t or self.clock())
        return Request("publish", {"type": "publish", "channel": channel, "data": data}, 1,
                       channel, msg_id, "", intended_t)

    def send(self, to: str, value: Any = None, intended_t: float | None = None
             ) -> Steps[Result]:
        msg_id, data = self.envelope(value, "", intended_t or self.clock())
        return (yield from self.attempt(Request(
            "send", {"type": "send", "to": to, "data": data}, msg_id=msg_id, peer=to,
            intended_t=intended_t)))

    def subscribe(self, channel: str) -> Steps[Result]:
        return (yield from self.attempt(Request(
            "subscribe", {"type": "subscribe", "channel": channel}, channel=channel)))

    def unsubscribe_oldest(self) -> Steps[None]:
        """Make room under the channel limit (one plain request, not retried)."""
        subscriptions = self.client().subscriptions
        if subscriptions:
            oldest = min(subscriptions, key=subscriptions.__getitem__)
            yield Request("unsubscribe", {"type": "unsubscribe", "channel": oldest},
                          channel=oldest)

    def envelope(self, value: Any, channel: str, sent_at: float) -> tuple[str, dict[str, Any]]:
        """This user's next message id, and the payload stamped for delivery accounting."""
        return envelope(self.user_id, self._next_sequence(), value, channel, sent_at)

    def _next_sequence(self) -> int:
        """This user's next message number (1, 2, ...). An int, not an itertools.count:
        most users never publish, and a count is 56 bytes each."""
        self._sequence += 1
        return self._sequence

    # -- pacing ------------------------------------------------------------------------------

    def interval(self) -> float:
        """Seconds between this user's operations (its rate, throttled after 4011)."""
        rate = self.rate * self.send_rate_factor
        return 1.0 / rate if rate > 0 else 0.0

    def next_slot(self) -> tuple[float, float | None]:
        """How long to wait for this user's next slot, and the intended send time under
        the open model (None under the closed model).

        Closed model: one operation per 1/rate seconds after the previous one ended.
        Open model: slot i is at start + i/rate whatever happened before, so latency is
        measured from when the request should have gone out (wrk2-style correction of
        coordinated omission): a stalled server cannot hide by slowing the client.
        """
        rate = self.rate * self.send_rate_factor  # self.interval(), written out: hot
        interval = 1.0 / rate if rate > 0 else 0.0
        if self.model == "open":
            now = self.clock()
            if self._next_at is None:
                self._next_at = now + self.rng.uniform(0, interval)  # spread the phases
            intended = self._next_at
            self._next_at = intended + interval
            return intended - now, intended
        return interval, None

    def pace(self) -> Steps[float | None]:
        """Wait for this user's next slot; the intended send time under the open model."""
        wait, intended = self.next_slot()
        if wait >= MIN_WAIT_S:
            yield Sleep(wait)
        return intended

    def idle(self) -> Steps[None]:
        """Pace, checking the connection at every slot, until a slot finds it closed: one
        `Idle` intent for what would otherwise be a task per tick."""
        intent = self.idle_intent()
        yield intent
        self.idle_over(intent)

    def idle_intent(self) -> Idle:
        """The `Idle` that `idle` yields (its first wake is this user's next slot)."""
        tick = self.interval()
        wait, intended = self.next_slot()
        return Idle(intended if intended is not None else self.clock() + wait, tick)

    def idle_over(self, intent: Idle) -> None:
        """After `intent`'s wait: under the open model, the slots went on while idle,
        so the next is the one after the wake that found the connection closed."""
        tick = intent.tick_s
        if self.model == "open" and tick > 0:
            woke = max(0, int((self.clock() - intent.first_at) / tick + 1e-6))
            self._next_at = intent.first_at + (woke + 1) * tick

    def sleep(self, seconds: float) -> Steps[None]:
        if seconds >= MIN_WAIT_S:
            yield Sleep(seconds)

    def channel(self) -> str:
        channels = self.params.channels
        return channels[self.rng.randrange(len(channels))] if len(channels) > 1 else channels[0]


class Subscriber(Behaviour):
    """Holds N subscriptions (some wildcard) and receives."""

    __slots__ = ()
    params: SubscriberParams
    params_type = SubscriberParams

    def after_connect(self) -> Steps[None]:
        channels = self.params.channels
        n = self.params.subscriptions
        wild = round(n * self.params.wildcard_fraction)
        # Seeded picks spread the subscribers over the channel set.
        picks = self.rng.sample(channels, min(n, len(channels)))
        picks += [channels[self.rng.randrange(len(channels))] for _ in range(n - len(picks))]
        names = picks[:n - wild] + [_wildcard_of(c) for c in picks[n - wild:]]
        for name in dict.fromkeys(names):
            yield from self.subscribe(name)

    def task(self) -> Steps[None]:
        yield from self.ensure_connected()
        # `idle`, written out: a subscriber spends its life here, and a million idle
        # subscribers each held this frame and idle's (272 bytes more).
        intent = self.idle_intent()
        yield intent
        self.idle_over(intent)


class Publisher(Behaviour):
    """Publishes at a set rate to a channel set."""

    __slots__ = ("payload",)
    params: PublisherParams
    params_type = PublisherParams

    def __init__(self, params: UserParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.payload = "x" * self.params.payload_bytes

    def task(self) -> Steps[None]:
        # The swarm's hot path (a round trip a task at full rate): one generator besides
        # the attempt's, so the check and the pacing are written out here.
        if not self.client().is_open:
            yield from self.ensure_connected()
        wait, intended = self.next_slot()
        if wait >= MIN_WAIT_S:
            yield Sleep(wait)
        yield from self.attempt(self.publish_request(self.channel(), self.payload, intended))


class DirectSender(Behaviour):
    """Sends direct messages to live peers learnt from presence."""

    __slots__ = ()
    params: DirectSenderParams
    params_type = DirectSenderParams

    def after_connect(self) -> Steps[None]:
        yield from self.subscribe(self.params.presence_channel)

    def task(self) -> Steps[None]:
        yield from self.ensure_connected()
        intended = yield from self.pace()
        peers = sorted(self.client().peers.get(self.params.presence_channel, ()))
        if peers:
            yield from self.send(peers[self.rng.randrange(len(peers))], "hi", intended)


class Chatter(Behaviour):
    """A chat member: subscribes, publishes to its rooms and sends to people it sees."""

    __slots__ = ()
    params: ChatterParams
    params_type = ChatterParams

    def after_connect(self) -> Steps[None]:
        for name in self.params.channels:
            yield from self.subscribe(name)

    def task(self) -> Steps[None]:
        yield from self.ensure_connected()
        intended = yield from self.pace()
        room = self.channel()
        peers = sorted(self.client().peers.get(room, ()))
        if peers and self.rng.random() < self.params.send_fraction:
            yield from self.send(peers[self.rng.randrange(len(peers))], "psst", intended)
        else:
            yield from self.publish(room, "hello", intended)


class RateAbuser(Behaviour):
    """Bursts past the token bucket, gets 4011, reconnects per its policy."""

    __slots__ = ()
    params: RateAbuserParams
    params_type = RateAbuserParams

    def task(self) -> Steps[None]:
        yield from self.ensure_connected()
        yield from self.pace()
        # Pipelined: every publish carries a requestId but none waits for its ack, so
        # the burst outruns the token bucket; each is still reported (ok, or the close).
        for i in range(self.params.burst):
            msg_id, data = self.envelope(i, "abuse", self.clock())
            if not (yield Fire("publish", {"type": "publish", "channel": "abuse",
                                           "data": data}, channel="abuse", msg_id=msg_id)):
                break


class QuotaBurner(Behaviour):
    """Publishes as fast as acks come back, to drain the app's message quota."""

    __slots__ = ()
    params: QuotaBurnerParams
    params_type = QuotaBurnerParams

    def task(self) -> Steps[None]:
        yield from self.ensure_connected()
        intended = yield from self.pace()
        yield from self.publish(self.channel(), 0, intended)


class Misbehaving(Behaviour):
    """Sends each class of bad input at a set rate; each provokes its own code."""

    __slots__ = ("_tick", "kinds")
    params: MisbehavingParams
    params_type = MisbehavingParams

    def __init__(self, params: UserParams, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.kinds = self.params.kinds or tuple(BAD_INPUT)
        self._tick = 0

    def ensure_connected(self) -> Steps[None]:
        # An oversize frame earns close 1009 on purpose: come straight back for more.
        view = self.client()
        if not view.is_open and view.close_code == CloseCode.MESSAGE_TOO_BIG:
            yield Renew()
            yield from self.connect()
            return
        yield from super().ensure_connected()

    def task(self) -> Steps[None]:
        yield from self.ensure_connected()
        yield from self.pace()
        kind = self.kinds[self._tick % len(self.kinds)]
        self._tick += 1
        yield SendRaw(kind, BAD_INPUT[kind][1]())


class Churner(Behaviour):
    """Connect/disconnect loops: reconnect storms on demand."""

    __slots__ = ()
    params: ChurnerParams
    params_type = ChurnerParams

    def task(self) -> Steps[None]:
        yield from self.ensure_connected()
        yield from self.pace()
        yield from self.sleep(self.params.hold_s)
        yield Disconnect()
        yield Renew()
        yield from self.connect()
        yield from self.after_connect()


def _wildcard_of(channel: str) -> str:
    head, _, _ = channel.rpartition("/")
    return f"{head}/*" if head else "*"


# Behaviour name -> its class, one per `catalog.USER_CLASSES` entry (a test checks).
BEHAVIOURS: dict[str, type[Behaviour]] = {
    cls.__name__: cls for cls in (Subscriber, Publisher, DirectSender, Chatter, RateAbuser,
                                  QuotaBurner, Misbehaving, Churner)
}
