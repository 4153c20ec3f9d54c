"""The user behaviours and their parameters, as data (importable without Locust).

`users.py` builds the Locust classes from this table, and the scenario loader
validates `[swarm.classes.NAME]` against it without importing Locust (which
monkey-patches the importing process with gevent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Parameters every class takes, with their defaults.
BASE_DEFAULTS: dict[str, Any] = {
    "rate": 1.0,  # operations per second per user
    "channels": ["room/1"],
    "policy": "default",  # a retry policy spec (loadtests.retry.make_policy)
    "model": None,  # None: the swarm's model ("closed" or "open")
    "key": None,  # None: the swarm's key
}
# Locust's own knobs, also accepted per class.
LOCUST_PARAMS = ("weight", "fixed_count")

USER_CLASSES: dict[str, dict[str, Any]] = {
    "Subscriber": {"subscriptions": 3, "wildcard_fraction": 0.34, "rate": 0.2},
    "Publisher": {"rate": 5.0, "payload_bytes": 64},
    "DirectSender": {"rate": 2.0, "presence_channel": "lobby"},
    "Chatter": {"rate": 1.0, "send_fraction": 0.2},
    "RateAbuser": {"burst": 300, "rate": 0.5},
    "QuotaBurner": {"rate": 200.0},
    "Misbehaving": {"rate": 2.0, "kinds": None},  # None: every kind of BAD_INPUT
    "Churner": {"rate": 1.0, "hold_s": 0.5},
}

# Misbehaving's bad-input classes: name -> (the outcome it must provoke, the frame).
BAD_INPUT: dict[str, tuple[str, Callable[[], str | bytes]]] = {
    "invalid_json": ("malformed_message", lambda: "{not json"),
    "missing_type": ("malformed_message", lambda: '{"channel":"a"}'),
    "unknown_type": ("unknown_type", lambda: '{"type":"teleport"}'),
    "invalid_channel": ("invalid_channel", lambda: '{"type":"subscribe","channel":""}'),
    "reserved_channel": ("channel_reserved",
                         lambda: '{"type":"publish","channel":"_system/x","data":1}'),
    "missing_data": ("missing_data", lambda: '{"type":"publish","channel":"a"}'),
    "oversize_frame": ("close 1009", lambda: '{"type":"publish","channel":"a","data":"'
                       + "x" * 70_000 + '"}'),
}


def parameters(class_name: str) -> dict[str, Any]:
    """Every parameter a class takes, with its default."""
    return {**BASE_DEFAULTS, **USER_CLASSES[class_name]}
