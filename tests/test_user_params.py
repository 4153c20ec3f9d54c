"""Typed user parameters and the swarm settings, without Locust (no gevent patching here).

`loadtests.catalog.parse_params` is the one check of a `[swarm.classes.NAME]` table;
`loadtests.swarmconfig` the one reader of the environment. The Locust side (a bad
parameter stops Locust with one line) is in test_swarm.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from loadtests.catalog import (
    USER_CLASSES,
    ChurnerParams,
    MisbehavingParams,
    PublisherParams,
    SubscriberParams,
    parameters,
    parse_params,
)
from loadtests.swarmconfig import (
    OPTIONS,
    load_settings,
    locustfile_shape,
    locustfile_variants,
    settings_for,
)
from server.schema import ConfigError


def test_an_empty_table_gives_the_behaviours_defaults():
    assert parse_params("Publisher", {}) == PublisherParams(
        rate=5.0, channels=("room/1",), policy="default", model=None, key=None,
        weight=None, fixed_count=None, payload_bytes=64)


def test_values_are_typed_once():
    params = parse_params("Subscriber", {"rate": 2, "channels": ["a", "b"],
                                         "subscriptions": 2, "wildcard_fraction": 1})
    assert params == SubscriberParams(rate=2.0, channels=("a", "b"), subscriptions=2,
                                      wildcard_fraction=1.0)
    assert type(params.rate) is float and type(params.wildcard_fraction) is float


def test_a_variant_takes_its_behaviours_parameters():
    policy = {"policy": "default", "jitter_1001_s": 0.0}
    params = parse_params("Herd", {"class": "Subscriber", "policy": policy, "weight": 2})
    assert params == SubscriberParams(policy=policy, weight=2)


def test_misbehaving_kinds_and_churner_hold():
    assert parse_params("Misbehaving", {"kinds": ["invalid_json"]}).kinds == ("invalid_json",)
    assert parse_params("Misbehaving", {}) == MisbehavingParams(rate=2.0, kinds=None)
    assert parse_params("Churner", {"hold_s": 0}) == ChurnerParams(hold_s=0.0)


@pytest.mark.parametrize(("name", "table", "message"), [
    ("Publisher", {"rate": -1}, "swarm.classes.Publisher.rate: must be > 0, got -1"),
    ("Publisher", {"rate": 0}, "swarm.classes.Publisher.rate: must be > 0, got 0"),
    ("Publisher", {"rate": "5"}, "swarm.classes.Publisher.rate: must be a number, got '5'"),
    ("Publisher", {"weight": 1.5},
     "swarm.classes.Publisher.weight: must be a whole number, got 1.5"),
    ("Publisher", {"fixed_count": -2}, "swarm.classes.Publisher.fixed_count: must be >= 0, got -2"),
    ("Publisher", {"channels": []},
     "swarm.classes.Publisher.channels: must be a non-empty list of strings, got []"),
    ("Publisher", {"model": "half-open"},
     "swarm.classes.Publisher.model: must be one of closed, open, got 'half-open'"),
    ("Subscriber", {"wildcard_fraction": 2},
     "swarm.classes.Subscriber.wildcard_fraction: must be <= 1, got 2"),
    ("Misbehaving", {"kinds": ["zap"]},
     "swarm.classes.Misbehaving.kinds: 'zap' is not one of invalid_json, missing_type, "
     "unknown_type, invalid_channel, reserved_channel, missing_data, oversize_frame"),
    ("Publisher", {"policy": "bogus"},
     "swarm.classes.Publisher.policy: policy: must be one of default, naive, none or "
     "'package.module:ClassName', got 'bogus'"),
    ("Teleporter", {}, "swarm.classes.Teleporter: unknown user class 'Teleporter' (one of "
     "Subscriber, Publisher, DirectSender, Chatter, RateAbuser, QuotaBurner, Misbehaving, "
     "Churner)"),
    ("Fast", {"class": "Nope"}, "swarm.classes.Fast.class: unknown user class 'Nope' (one of "
     "Subscriber, Publisher, DirectSender, Chatter, RateAbuser, QuotaBurner, Misbehaving, "
     "Churner)"),
    ("not-a-name", {"class": "Publisher"},
     "swarm.classes.not-a-name: a class name must be an identifier"),
    ("Churner", {"rat": 1}, "swarm.classes.Churner.rat: unknown parameter for Churner (one of "
     "channels, class, fixed_count, hold_s, key, model, policy, rate, timeout_s, weight)"),
    ("Publisher", 3, "swarm.classes.Publisher: must be a table"),
    ("Publisher", {"timeout_s": 0}, "swarm.classes.Publisher.timeout_s: must be > 0, got 0"),
])
def test_errors_are_one_line_naming_the_key(name, table, message):
    with pytest.raises(ConfigError) as info:
        parse_params(name, table)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_where_names_the_table_in_errors():
    with pytest.raises(ConfigError, match=r"^run\.Publisher\.rate: must be > 0, got -1$"):
        parse_params("Publisher", {"rate": -1}, "run.Publisher")


def test_parameters_lists_every_key_with_its_default_as_a_scenario_writes_it():
    assert parameters("Subscriber") == {
        "rate": 0.2, "channels": ["room/1"], "policy": "default", "model": None, "key": None,
        "weight": None, "fixed_count": None, "timeout_s": 10.0, "subscriptions": 3,
        "wildcard_fraction": 0.34}
    for name in USER_CLASSES:  # every default passes its own rule
        assert parse_params(name, parameters(name)) == USER_CLASSES[name]()


def options(**values):
    return SimpleNamespace(host=values.pop("host", None),
                           **{o.dest: values.pop(o.dest, None) for o in OPTIONS})


def test_settings_come_from_parsed_options_then_the_harness_json(tmp_path, monkeypatch):
    monkeypatch.setenv("RTMSIM_KEY", "pk_from_env")  # options stand in for the variables
    config = tmp_path / "swarm.json"
    config.write_text(json.dumps({"seed": 7, "model": "open", "hosts": ["ws://b:2"],
                                  "classes": {"Publisher": {"rate": 3}}}))
    settings = load_settings(options(host="ws://a:1", rtmsim_key="pk_opt",
                                     rtmsim_config=str(config), rtmsim_token_url="http://t"))
    assert (settings.host, settings.key, settings.token_url, settings.seed, settings.model,
            settings.hosts) == ("ws://a:1", "pk_opt", "http://t", 7, "open", ["ws://b:2"])
    assert settings.params("Publisher") == {"rate": 3} and settings.params("Chatter") == {}


def test_without_locust_the_environment_variables_stand_in(monkeypatch):
    monkeypatch.setenv("RTMSIM_KEY", "pk_env")
    monkeypatch.setenv("RTMSIM_URL", "ws://env:9")
    monkeypatch.setenv("RTMSIM_WORKER_TAG", "w1")
    settings = settings_for(None)
    assert (settings.key, settings.host, settings.process_tag) == ("pk_env", "ws://env:9", "w1")


class Environment:  # the one attribute settings_for reads of Locust's Environment
    def __init__(self, parsed_options):
        self.parsed_options = parsed_options


def test_settings_are_built_once_per_environment():
    environment = Environment(options(rtmsim_key="pk_once"))
    first = settings_for(environment)
    environment.parsed_options = options(rtmsim_key="pk_twice")
    assert settings_for(environment) is first and first.key == "pk_once"


def test_the_locustfile_reads_variants_and_shape_from_the_environment(tmp_path,
                                                                      monkeypatch):
    config = tmp_path / "swarm.json"
    config.write_text(json.dumps({"classes": {"Publisher": {"rate": 1},
                                              "Herd": {"class": "Subscriber"}}}))
    monkeypatch.delenv("RTMSIM_SWARM_CONFIG", raising=False)
    monkeypatch.delenv("RTMSIM_SHAPE", raising=False)
    assert (locustfile_variants(), locustfile_shape()) == ({}, None)
    monkeypatch.setenv("RTMSIM_SWARM_CONFIG", str(config))
    monkeypatch.setenv("RTMSIM_SHAPE", "spike")
    assert (locustfile_variants(), locustfile_shape()) == ({"Herd": "Subscriber"}, "spike")
