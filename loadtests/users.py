"""Locust users: the Locust driver of the client behaviours (`loadtests.behaviours`).

One Locust class per behaviour. A user builds its behaviour (parameters, seeded rng,
retry policy, pacing) and drives its generators, performing each intent on a real
socket in real time with the protocol client (`RealtimeClient`, under gevent): the
logic is the behaviour's, written once; the virtual engine drives the same objects.

Every class has a frozen parameter set (`catalog.UserParams` and its subclasses): its
`defaults`, with the scenario's `[swarm.classes.NAME]` laid over them, built and checked
once per class when Locust starts (`params_in`).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Generator
from typing import Any, ClassVar

import gevent
from locust import User, constant, events, task
from locust.exception import StopUser
from locust.user.task import LOCUST_STATE_STOPPING

from server.schema import ConfigError

from . import (
    behaviours,
    hooks,  # noqa: F401  (registers rtmsim's options and settings with Locust)
)
from .behaviours import Behaviour
from .catalog import UserParams, build_params, defaults_of
from .client import RealtimeClient
from .clientstate import ClientState
from .intents import (
    MIN_WAIT_S,
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
from .locustlog import process_event_log
from .reporting import Reporter
from .swarmconfig import SwarmSettings, instance_of, settings_for
from .tokens import fetch_token

_user_ids = itertools.count(1)


class RealtimeUser(User):
    """Base class: a behaviour, driven on a protocol client. Not run by itself."""

    abstract = True
    wait_time = constant(0)
    # The behaviour a class runs; the parameter set (its behaviour's unless given), and
    # its defaults as a scenario writes them: a subclass may override some
    # (`{**Publisher.defaults, "rate": 50}`), or take a subclass of the parameter set for
    # parameters of its own.
    behaviour_type: ClassVar[type[Behaviour]] = Behaviour
    params_type: ClassVar[type[UserParams]] = UserParams
    defaults: ClassVar[dict[str, Any]] = defaults_of(UserParams)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "behaviour_type" in cls.__dict__:
            if "params_type" not in cls.__dict__:
                cls.params_type = cls.behaviour_type.params_type
            if cls.__doc__ is None:
                cls.__doc__ = cls.behaviour_type.__doc__
        if "params_type" in cls.__dict__ and "defaults" not in cls.__dict__:
            cls.defaults = defaults_of(cls.params_type)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        # The settings and parameters are final before Locust creates any user.
        self.settings = settings_for(environment)
        self.params = self.params_in(self.settings)
        self.index = next(_user_ids)
        self.user_id = f"{type(self).__name__}-{os.getpid()}-{self.index}"
        self.behaviour = self.behaviour_type(self.params, user_id=self.user_id,
                                             seed=self.settings.seed,
                                             model=self.settings.model, clock=time.time,
                                             client=self._view)
        self.reporter = Reporter(environment, process_event_log(environment),
                                 user=self.user_id, user_class=type(self).__name__,
                                 policy=self.behaviour.policy.name)
        self.client = self._new_client()
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
        host = hosts[instance_of(self.index, len(hosts))] if hosts else (
            self.host or self.settings.host)
        return RealtimeClient(host, key=None if token else key, token=token,
                              reporter=self.reporter, name=self.user_id,
                              timeout=self.params.timeout_s)

    def _view(self) -> ClientState:
        return self.client.state

    # -- lifecycle: the behaviour's generators, driven ----------------------------------------

    def on_start(self) -> None:
        self._drive(self.behaviour.on_start())

    @task
    def step(self) -> None:
        self._drive(self.behaviour.task())

    def on_stop(self) -> None:
        self._drive(self.behaviour.on_stop())

    def _drive(self, steps: Generator[Intent, Any, None]) -> None:
        send = steps.send
        result: Any = None
        try:
            while True:
                intent = send(result)
                if type(intent) is Request:  # the hot path: one per publish
                    result = self.client.request(
                        intent.op, intent.frame, attempt=intent.attempt, channel=intent.channel,
                        msg_id=intent.msg_id, peer=intent.peer, intended_t=intent.intended_t)
                else:
                    result = _PERFORM[type(intent)](self, intent)
        except StopIteration:
            return

    # -- performing the other intents ---------------------------------------------------------

    def _connect(self, intent: Connect) -> Result:
        return self.client.connect(attempt=intent.attempt)

    def _fire(self, intent: Fire) -> bool:
        return self.client.fire(intent.op, intent.frame, channel=intent.channel,
                                msg_id=intent.msg_id)

    def _send_raw(self, intent: SendRaw) -> Result:
        return self.client.send_raw(intent.op, intent.data, attempt=intent.attempt)

    def _sleep(self, intent: Sleep) -> None:
        _wait(intent.seconds)

    def _idle(self, intent: Idle) -> None:
        # The sleep-and-check loop of an idle user, a tick at a time; Locust's graceful
        # stop is honoured at every tick, as it would be between tasks.
        at = intent.first_at
        client = self.client
        while True:
            _wait(at - time.time())
            if self._state == LOCUST_STATE_STOPPING:
                raise StopUser()
            if not client.is_open:
                return
            at += intent.tick_s

    def _disconnect(self, intent: Disconnect) -> None:
        if intent.drain_s > 0:
            self.client.drain(intent.drain_s)
        self.client.close()

    def _renew(self, intent: Renew) -> None:
        old = self.client
        if intent.token:
            self.client = self._new_client(intent.token)
        elif intent.keep_credential and old.token:
            self.client = self._new_client(old.token)
        else:
            self.client = self._new_client()

    def _fresh_token(self, intent: FreshToken) -> str | None:
        if not self.settings.token_url:
            return None
        return fetch_token(self.settings.token_url, self.settings.secret, self.user_id)

    def _give_up(self, intent: GiveUp) -> None:
        self.stopped = True
        self.reporter.note("give_up", intent.reason)
        raise StopUser()


def _wait(seconds: float) -> None:
    # Below MIN_WAIT_S there is nothing to wait for, only a trip through the hub
    # (Locust's own wait between tasks already yields to the other users).
    if seconds >= MIN_WAIT_S:
        gevent.sleep(seconds)


_PERFORM: dict[type, Callable[[RealtimeUser, Any], Any]] = {
    Connect: RealtimeUser._connect,
    Fire: RealtimeUser._fire,
    SendRaw: RealtimeUser._send_raw,
    Sleep: RealtimeUser._sleep,
    Idle: RealtimeUser._idle,
    Disconnect: RealtimeUser._disconnect,
    Renew: RealtimeUser._renew,
    FreshToken: RealtimeUser._fresh_token,
    GiveUp: RealtimeUser._give_up,
}


# One Locust class per behaviour (a class's docstring is its behaviour's).

class Subscriber(RealtimeUser):
    behaviour_type = behaviours.Subscriber


class Publisher(RealtimeUser):
    behaviour_type = behaviours.Publisher


class DirectSender(RealtimeUser):
    behaviour_type = behaviours.DirectSender


class Chatter(RealtimeUser):
    behaviour_type = behaviours.Chatter


class RateAbuser(RealtimeUser):
    behaviour_type = behaviours.RateAbuser


class QuotaBurner(RealtimeUser):
    behaviour_type = behaviours.QuotaBurner


class Misbehaving(RealtimeUser):
    behaviour_type = behaviours.Misbehaving


class Churner(RealtimeUser):
    behaviour_type = behaviours.Churner


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
