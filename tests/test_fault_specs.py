"""Fault specs parsed once, and the one table reader (`server.schema`) they share."""

import ast
import dataclasses
import math
import pkgutil
from pathlib import Path

import pytest

import server.faults
from server.config import parse_config
from server.faults import KINDS, FaultEngine, FaultSpecError, parse_fault, parse_faults
from server.faults.base import BufferFault, DeliveryFault, RouteFault, StrikeFault
from server.faults.latency import LatencyFault
from server.schema import ConfigError, Table

SERVER = Path(server.faults.__file__).parent.parent


# -- specs ------------------------------------------------------------------------------------

def test_a_spec_is_typed_frozen_and_keeps_the_table_as_written():
    spec = parse_fault({"kind": "latency", "ms": 5, "apps": "a"})
    assert isinstance(spec, LatencyFault)
    assert (spec.ms, spec.apps, spec.ops, spec.probability, spec.end_s) == (
        5, ("a",), ("subscribe", "unsubscribe", "publish", "send"), 1.0, None)
    assert spec.to_dict() == {"kind": "latency", "ms": 5, "apps": "a"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.ms = 6  # type: ignore[misc]


def test_to_dict_parses_back_to_an_equal_spec_and_is_a_copy():
    data = {"kind": "close", "close_code": 4020, "fraction": 0.3, "at_s": 2,
            "apps": ["a"], "id": "storm"}
    spec = parse_fault(data, "faults", 3)
    assert parse_fault(spec.to_dict()) == spec
    spec.to_dict()["apps"].append("b")
    data["apps"].append("c")
    assert spec.apps == ("a",) and spec.to_dict()["apps"] == ["a"]


def test_errors_name_the_indexed_field():
    with pytest.raises(FaultSpecError) as err:
        parse_fault({"kind": "latency", "ms": -1}, "faults", 1)
    assert str(err.value) == "faults[1].ms: must be >= 0, got -1"


def test_every_module_of_the_package_registers_its_kinds():
    modules = {m.name for m in pkgutil.iter_modules(server.faults.__path__)}
    assert {cls.__module__.rsplit(".", 1)[1] for cls in KINDS.values()} == modules - {
        "base", "engine"}
    assert sorted(KINDS) == ["close", "deploy", "disconnect", "duplicate", "error", "latency",
                             "loss", "outage", "pause", "slow_consumer"]


@pytest.mark.parametrize(("kind", "family"), [
    ("error", RouteFault), ("latency", RouteFault), ("outage", RouteFault),
    ("loss", DeliveryFault), ("duplicate", DeliveryFault),
    ("slow_consumer", BufferFault),
    ("disconnect", StrikeFault), ("deploy", StrikeFault), ("close", StrikeFault),
    ("pause", StrikeFault),
])
def test_each_kind_is_in_exactly_one_family(kind, family):
    families = [f for f in (RouteFault, DeliveryFault, BufferFault, StrikeFault)
                if issubclass(KINDS[kind], f)]
    assert families == [family]


@pytest.mark.parametrize(("kind", "takes", "needs"), [
    ("error", True, False), ("latency", True, False), ("loss", True, True),
    ("duplicate", True, True), ("outage", False, False), ("slow_consumer", False, False),
    ("deploy", False, False),
])
def test_which_kinds_take_a_probability(kind, takes, needs):
    cls = KINDS[kind]
    assert (cls.takes_probability, cls.needs_probability) == (takes, needs)


@pytest.mark.parametrize(("spec", "message"), [
    ({"kind": "pause", "at_s": 3}, "fault.seconds: is required (how long the event loop "
                                   "stalls)"),
    ({"kind": "pause", "seconds": 0}, "fault.seconds: must be > 0, got 0"),
])
def test_a_pause_needs_a_positive_length(spec, message):
    with pytest.raises(FaultSpecError) as err:
        parse_fault(spec)
    assert str(err.value) == message


def test_a_pause_strikes_no_connection():
    strike = parse_fault({"kind": "pause", "at_s": 3, "seconds": 2.5}).strike("f1")
    assert (strike.action, strike.pause_s) == ("pause", 2.5)


def test_a_null_number_in_json_means_not_given_unless_it_is_required():
    assert parse_fault({"kind": "error", "probability": None}).probability == 1.0
    with pytest.raises(FaultSpecError) as err:
        parse_fault({"kind": "loss", "probability": None})
    assert str(err.value) == "fault.probability: must be a number"


def test_a_list_checks_ids_as_the_engine_will_name_them():
    with pytest.raises(ConfigError) as err:
        parse_faults([{"kind": "outage"}, {"kind": "error", "id": "f1"}])
    assert str(err.value) == "faults[1].id: a fault with id 'f1' exists"
    with pytest.raises(ConfigError) as err:
        parse_faults({"kind": "outage"})
    assert str(err.value) == "faults: must be an array of tables ([[faults]])"
    specs = parse_faults([{"kind": "outage", "id": "f2"}, {"kind": "error"},
                          {"kind": "error"}])
    engine = FaultEngine(0, 0.0)
    engine.load(specs)
    assert list(engine.faults) == ["f2", "f1", "f3"]


def test_the_engine_takes_parsed_specs_as_they_are():
    [spec] = parse_config({"faults": [{"kind": "deploy", "at_s": 4}]}).faults
    engine = FaultEngine(0, 0.0)
    fault = engine.add(spec)
    assert fault.spec is spec and fault.id == "f1"
    with pytest.raises(FaultSpecError) as err:
        engine.add(parse_fault({"kind": "outage", "id": "f1"}))
    assert str(err.value) == "fault.id: a fault with id 'f1' exists"


def test_an_outage_hits_every_targeted_operation():
    engine = FaultEngine(0, 0.0)
    engine.add({"kind": "outage"})
    fails = [engine.on_route("publish", "a", "c", 1.0)[0] for _ in range(50)]
    assert {f.code for f in fails} == {"backend_error"}
    assert engine.describe()[0]["hits"] == 50


# -- the table reader -------------------------------------------------------------------------

def fail(data, read, where="t"):
    with pytest.raises(ConfigError) as err:
        read(Table(data, where))
    return str(err.value)


@pytest.mark.parametrize(("data", "kwargs", "message"), [
    ({"n": "1"}, {}, "t.n: must be a number, got '1'"),
    ({"n": True}, {}, "t.n: must be a number, got True"),
    ({"n": 1.5}, {"integer": True}, "t.n: must be a whole number, got 1.5"),
    ({"n": math.inf}, {}, "t.n: must be a finite number, got inf"),
    ({"n": -1}, {"minimum": 0}, "t.n: must be >= 0, got -1"),
    ({"n": 0}, {"minimum": 0, "exclusive": True}, "t.n: must be > 0, got 0"),
    ({"n": 3}, {"maximum": 1}, "t.n: must be <= 1, got 3"),
    ({"n": None}, {}, "t.n: must be a number, got None"),
])
def test_number_messages(data, kwargs, message):
    assert fail(data, lambda t: t.number("n", 1, **kwargs)) == message


def test_number_returns_the_default_when_absent():
    assert Table({}, "t").number("n", None, minimum=5) is None
    assert Table({"n": 7}, "t").number("n", 1, minimum=5, maximum=7, integer=True) == 7


@pytest.mark.parametrize(("read", "message"), [
    (lambda t: t.string("r", required=True), "t.r: is required"),
    (lambda t: t.string("e"), "t.e: must be a non-empty string, got ''"),
    (lambda t: t.string("s", choices=("a", "b")), "t.s: must be one of a, b, got 'x'"),
    (lambda t: t.choice("i", "a", ("a", "b")), "t.i: must be one of a, b, got 1"),
    (lambda t: t.boolean("s", False), "t.s: must be true or false, got 'x'"),
    (lambda t: t.strings("s", ()), "t.s: must be a list of non-empty strings, got 'x'"),
    (lambda t: t.strings("l", (), non_empty=True),
     "t.l: must be a non-empty list of strings, got []"),
    (lambda t: t.strings("l2", (), choices=("a",)), "t.l2: 'b' is not one of a"),
    (lambda t: t.table("s"), "t.s: must be a table, got str"),
])
def test_getter_messages(read, message):
    data = {"s": "x", "e": "", "i": 1, "l": [], "l2": ["a", "b"]}
    assert fail(data, read) == message


def test_strings_and_nested_tables():
    t = Table({"one": "a", "many": ["a", "b"], "sub": {"k": 1}}, "")
    assert t.strings("one", None, one_or_list=True) == ("a",)
    assert t.strings("many", None) == ("a", "b")
    assert t.strings("none", ("d",)) == ("d",)
    sub = t.table("sub")
    assert sub.where == "sub" and sub.number("k", 0) == 1
    assert str(sub.fail("k", "is wrong")) == "sub.k: is wrong"
    assert str(t.fail("top", "is wrong")) == "top: is wrong"


def test_done_names_the_first_unknown_key():
    t = Table({"b": 1, "z": 2, "a": 3}, "t")
    t.get("a")
    with pytest.raises(ConfigError) as err:
        t.done("unknown field for this kind")
    assert str(err.value) == "t.b: unknown field for this kind"


def test_not_a_table():
    assert fail([1], lambda t: None, "apps[0]") == "apps[0]: must be a table, got list"
    with pytest.raises(ConfigError) as err:
        Table(3, "fault", noun="table/object")
    assert str(err.value) == "fault: must be a table/object, got int"


# -- layers -----------------------------------------------------------------------------------

def imported_modules(path: Path) -> set[str]:
    """What a module imports, relative imports kept as written (`.x`, `..schema`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_schema_imports_nothing_from_the_project():
    assert not {m for m in imported_modules(SERVER / "schema.py")
                if m.startswith((".", "server", "sim", "loadtests"))}


def test_faults_read_config_through_schema_not_config():
    for path in (SERVER / "faults").glob("*.py"):
        assert not {"..config", "server.config"} & imported_modules(path), path.name
