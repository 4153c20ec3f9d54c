"""Locust users: one client behaviour per class, composed from a protocol client and a
retry policy (they do not inherit a tower).

Every class has a frozen parameter set (`catalog.UserParams` and its subclasses): its
`defaults`, with the scenario's `[swarm.classes.NAME]` laid over them, built and checked
once per class when Locust starts (`params_in`). `RealtimeUser` owns the
mechanics every behaviour needs: connecting, retrying per the policy, reconnecting
after closes, pacing under the closed or the open model.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable
from typing import Any, ClassVar

import gevent
from locust import User, constant, events, task
from locust.exception import StopUser

from server.codes import CloseCode
from server.schema import ConfigError

from . import hooks  # noqa: F401  (registers rtmsim's options and settings with Locust)
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
    build_params,
    defaults_of,
)
from .client import RealtimeClient, Result
from .locustlog import process_event_log
from .reporting import Reporter
from .retry import RetryPolicy, make_policy
from .swarmconfig import SwarmSettings, settings_for
from .tokens import fetch_token
from .wsconn import ABNORMAL

_user_ids = itertools.count(1)
MAX_RECONNECTS = 1000  # bound for one user's reconnect loop


class RealtimeUser(User):
    """Base class: a connected client, a retry policy, pacing. Not run by itself."""

    abstract = True
    wait_time = constant(0)
    # The parameter set, and its defaults as a scenario writes them: a subclass may
    # override some (`{**Publisher.defaults, "rate": 50}`), or take a subclass of the
    # parameter set for parameters of its own.
    params_type: ClassVar[type[UserParams]] = UserParams
    defaults: ClassVar[dict[str, Any]] = defaults_of(UserParams)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "params_type" in cls.__dict__ and "defaults" not in cls.__dict__:
            cls.defaults = defaults_of(cls.params_type)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        # The settings and parameters are final before Locust creates any user.
        self.settings = settings_for(environment)
        self.params = self.params_in(self.settings)
        self.index = next(_user_ids)
        self.user_id = f"{type(self).__name__}-{os.getpid()}-{self.index}"
        self.rng = random.Random(f"{self.settings.seed}:{self.user_id}")
        self.sequence = itertools.count(1)  # message ids, unique across reconnects
        self.policy: RetryPolicy = make_policy(self.params.policy, rng=self.rng)
        self.reporter = Reporter(environment, process_event_log(environment),
                                 user=self.user_id, user_class=type(self).__name__,
                                 policy=self.policy.name)
        self.client = self._new_client()
        self.model = self.params.model or self.settings.model
        self.rate = self.params.rate
        self._next_at: float | None = None
        self._tick = 0
        self.send_rate_factor = 1.0  # lowered after 4011 (the policy's "throttle")
        self.stopped = False

    # -- configuration ----------------------------------------------------------------

    @classmethod
    def params_in(cls, settings: SwarmSettings) -> UserParams:
        """This class's parameters under `settings`, built and checked once per class:
        `defaults` up the MRO, then the scenario's table (ConfigError naming the key)."""
        params = settings.parsed_params.get(cls)
        if params is None:
            values: dict[str, Any] = {}
            for klass in reversed(cls.__mro__):
                values.update(klass.__dict__.get("defaults") or {})
            scenario = settings.params(cls.__name__)
            values.update({k: v for k, v in scenario.items() if k != "class"})
            params = build_params(cls.params_type, values, f"swarm.classes.{cls.__name__}",
                                  name=cls.__name__)
            settings.parsed_params[cls] = params
        return params

    def _new_client(self, token: str | None = None) -> RealtimeClient:
        key = self.params.key or self.settings.key
        hosts = self.settings.hosts
        host = hosts[self.index % len(hosts)] if hosts else (self.host or self.settings.host)
        return RealtimeClient(host, key=None if token else key, token=token,
                              reporter=self.reporter, name=self.user_id,
                              sequence=self.sequence)

    # -- lifecycle ----------------------------------------------------------------------

    def on_start(self) -> None:
        self.connect()
        self.after_connect()

    def on_stop(self) -> None:
        self.client.drain()
        self.client.close()

    def after_connect(self) -> None:
        """Set-up after every (re)connect: subscriptions. Behaviours override it."""

    def connect(self) -> None:
        """Connect, retrying per the policy; a terminal close stops this user."""
        attempt = 1
        for _ in range(MAX_RECONNECTS):
            self.policy.on_request(attempt > 1)
            result = self.client.connect(attempt=attempt)
            self.policy.on_result(result.ok)
            if result.ok:
                return
            code = result.close_code
            decision = self.policy.after_close(code if code is not None else ABNORMAL, attempt,
                                               self.client.going_away_ms)
            if decision.action == "throttle":
                self.send_rate_factor = max(0.1, self.send_rate_factor / 2)
            if decision.action == "refresh_token":
                self.client = self._new_client(self._fresh_token())
            if not decision.retry:
                self._give_up()
            self._sleep(decision.delay_s)
            attempt += 1
        self._give_up()

    def ensure_connected(self) -> None:
        """After the server closed us: decide per the policy whether and when to return."""
        if self.client.is_open:
            return
        code = self.client.close_code or ABNORMAL
        decision = self.policy.after_close(code, 1, self.client.going_away_ms)
        if decision.action == "throttle":
            self.send_rate_factor = max(0.1, self.send_rate_factor / 2)
        token = self._fresh_token() if decision.action == "refresh_token" else None
        if not decision.retry:
            self._give_up()
        self._sleep(decision.delay_s)
        self.client = self._new_client(token) if token else self._renew_client()
        self.connect()
        self.after_connect()

    def _renew_client(self) -> RealtimeClient:
        old = self.client
        return self._new_client(old.token) if old.token else self._new_client()

    def _fresh_token(self) -> str | None:
        if not self.settings.token_url:
            return None
        return fetch_token(self.settings.token_url, self.settings.secret, self.user_id)

    def _give_up(self) -> None:
        self.stopped = True
        self.reporter.note("give_up", f"close {self.client.close_code}")
        raise StopUser()

    # -- requests with retries ------------------------------------------------------------

    def attempt(self, op: str, call: Callable[[int], Result]) -> Result:
        """Run one logical operation, retrying per the policy; the last result."""
        attempt = 1
        while True:
            self.policy.on_request(attempt > 1)
            result = call(attempt)
            self.policy.on_result(result.ok)
            if result.ok or result.outcome == "timeout":
                return result
            if result.close_code is not None:
                return result  # the connection is gone: the next tick reconnects
            decision = self.policy.after_error(op, result.outcome, attempt)
            if decision.action == "unsubscribe_oldest" and self.client.subscriptions:
                oldest = min(self.client.subscriptions, key=self.client.subscriptions.get)
                self.client.unsubscribe(oldest)
            if not decision.retry:
                return result
            self._sleep(decision.delay_s)
            attempt += 1

    def publish(self, channel: str, value: Any = None, intended_t: float | None = None
                ) -> Result:
        msg_id, data = self.client.envelope(value, channel, intended_t or time.time())
        return self.attempt("publish", lambda n: self.client.publish(
            channel, attempt=n, intended_t=intended_t, msg_id=msg_id, data=data))

    def send(self, to: str, value: Any = None, intended_t: float | None = None) -> Result:
        msg_id, data = self.client.envelope(value, "", intended_t or time.time())
        return self.attempt("send", lambda n: self.client.send(
            to, attempt=n, intended_t=intended_t, msg_id=msg_id, data=data))

    def subscribe(self, channel: str) -> Result:
        return self.attempt("subscribe", lambda n: self.client.subscribe(channel, attempt=n))

    # -- pacing ------------------------------------------------------------------------------

    def pace(self) -> float | None:
        """Wait for this user's next slot; the intended send time under the open model.

        Closed model: one operation per 1/rate seconds after the previous one ended.
        Open model: slot i is at start + i/rate whatever happened before, so latency is
        measured from when the request should have gone out (wrk2-style correction of
        coordinated omission): a stalled server cannot hide by slowing the client.
        """
        rate = self.rate * self.send_rate_factor
        interval = 1.0 / rate if rate > 0 else 0.0
        now = time.time()
        if self.model == "open":
            if self._next_at is None:
                self._next_at = now + self.rng.uniform(0, interval)  # spread the phases
            intended = self._next_at
            self._next_at += interval
            self._sleep(intended - now)
            return intended
        self._sleep(interval)
        return None

    def _sleep(self, seconds: float) -> None:
        # Below a microsecond there is nothing to wait for, only a trip through the hub
        # (Locust's own wait between tasks already yields to the other users).
        if seconds >= 1e-6:
            gevent.sleep(seconds)

    def channel(self) -> str:
        channels = self.params.channels
        return channels[self.rng.randrange(len(channels))] if len(channels) > 1 else channels[0]


class Subscriber(RealtimeUser):
    """Holds N subscriptions (some wildcard) and receives."""

    params: SubscriberParams
    params_type = SubscriberParams

    def after_connect(self) -> None:
        channels = self.params.channels
        n = self.params.subscriptions
        wild = round(n * self.params.wildcard_fraction)
        # Seeded picks spread the subscribers over the channel set.
        picks = self.rng.sample(channels, min(n, len(channels)))
        picks += [channels[self.rng.randrange(len(channels))] for _ in range(n - len(picks))]
        names = picks[:n - wild] + [_wildcard_of(c) for c in picks[n - wild:]]
        for name in dict.fromkeys(names):
            self.subscribe(name)

    @task
    def idle(self) -> None:
        self.ensure_connected()
        self.pace()


class Publisher(RealtimeUser):
    """Publishes at a set rate to a channel set."""

    params: PublisherParams
    params_type = PublisherParams

    def on_start(self) -> None:
        self.payload = "x" * self.params.payload_bytes
        super().on_start()

    @task
    def publish_one(self) -> None:
        self.ensure_connected()
        intended = self.pace()
        self.publish(self.channel(), self.payload, intended)


class DirectSender(RealtimeUser):
    """Sends direct messages to live peers learnt from presence."""

    params: DirectSenderParams
    params_type = DirectSenderParams

    def after_connect(self) -> None:
        self.subscribe(self.params.presence_channel)

    @task
    def send_one(self) -> None:
        self.ensure_connected()
        intended = self.pace()
        peers = sorted(self.client.peers.get(self.params.presence_channel, ()))
        if peers:
            self.send(peers[self.rng.randrange(len(peers))], "hi", intended)


class Chatter(RealtimeUser):
    """A chat member: subscribes, publishes to its rooms and sends to people it sees."""

    params: ChatterParams
    params_type = ChatterParams

    def after_connect(self) -> None:
        for name in self.params.channels:
            self.subscribe(name)

    @task
    def chat(self) -> None:
        self.ensure_connected()
        intended = self.pace()
        room = self.channel()
        peers = sorted(self.client.peers.get(room, ()))
        if peers and self.rng.random() < self.params.send_fraction:
            self.send(peers[self.rng.randrange(len(peers))], "psst", intended)
        else:
            self.publish(room, "hello", intended)


class RateAbuser(RealtimeUser):
    """Bursts past the token bucket, gets 4011, reconnects per its policy."""

    params: RateAbuserParams
    params_type = RateAbuserParams

    @task
    def burst(self) -> None:
        self.ensure_connected()
        self.pace()
        # Pipelined: every publish carries a requestId but none waits for its ack, so
        # the burst outruns the token bucket; each is still reported (ok, or the close).
        for i in range(self.params.burst):
            msg_id, data = self.client.envelope(i, "abuse", time.time())
            if not self.client.fire("publish", {"type": "publish", "channel": "abuse",
                                                "data": data}, channel="abuse",
                                    msg_id=msg_id):
                break


class QuotaBurner(RealtimeUser):
    """Publishes as fast as acks come back, to drain the app's message quota."""

    params: QuotaBurnerParams
    params_type = QuotaBurnerParams

    @task
    def burn(self) -> None:
        self.ensure_connected()
        intended = self.pace()
        self.publish(self.channel(), 0, intended)


class Misbehaving(RealtimeUser):
    """Sends each class of bad input at a set rate; each provokes its own code."""

    params: MisbehavingParams
    params_type = MisbehavingParams

    def on_start(self) -> None:
        self.kinds = self.params.kinds or tuple(BAD_INPUT)
        super().on_start()

    def ensure_connected(self) -> None:
        # An oversize frame earns close 1009 on purpose: come straight back for more.
        if not self.client.is_open and self.client.close_code == CloseCode.MESSAGE_TOO_BIG:
            self.client = self._renew_client()
            self.connect()
            return
        super().ensure_connected()

    @task
    def misbehave(self) -> None:
        self.ensure_connected()
        self.pace()
        kind = self.kinds[self._tick % len(self.kinds)]
        self._tick += 1
        self.client.send_raw(kind, BAD_INPUT[kind][1]())


class Churner(RealtimeUser):
    """Connect/disconnect loops: reconnect storms on demand."""

    params: ChurnerParams
    params_type = ChurnerParams

    @task
    def churn(self) -> None:
        self.ensure_connected()
        self.pace()
        self._sleep(self.params.hold_s)
        self.client.close()
        self.client = self._renew_client()
        self.connect()
        self.after_connect()


def _wildcard_of(channel: str) -> str:
    head, _, _ = channel.rpartition("/")
    return f"{head}/*" if head else "*"


@events.init.add_listener
def _check_params(environment: Any, **_kwargs: Any) -> None:
    """Every class's parameters before the first user: a bad one stops here with one
    line, not a traceback per user; scenario weights apply."""
    settings = settings_for(environment)
    for cls in environment.user_classes:
        if not issubclass(cls, RealtimeUser):
            continue
        try:
            params = cls.params_in(settings)
        except ConfigError as exc:
            raise SystemExit(f"rtmsim: {exc}") from None
        if params.weight is not None:
            cls.weight = params.weight
        if params.fixed_count is not None:
            cls.fixed_count = params.fixed_count
