"""`bench validate`'s comparison of a real and a virtual run: hand-made summaries and a
tiny client event log, no processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import main
from bench.validate import (
    LARGE_COUNT,
    Check,
    _scenario,
    amplification_by_class,
    client_rows,
    compare,
    connect_attempt_peak,
    error_tail_s,
    quota_exhausted_at,
    quota_used_up_at,
    same_lead,
    validate_summary,
)
from loadtests.eventlog import EventLog, log_dir

ORIGIN = 1_800_000_000.0


def summary(**sections: Any) -> dict[str, Any]:
    """A summary.json with only the sections a test sets (the rest empty)."""
    base: dict[str, Any] = {"errors": {}, "closes": {}, "retry_amplification": {},
                            "recovery": [], "reconnect_storms": [], "faults": [],
                            "latency_ms": {}, "delivery_latency_ms": {"count": 0},
                            "run": {"shape": None}}
    return {**base, **sections}


def errors(**counts: int) -> dict[str, Any]:
    return summary(errors={code: {"client": n, "server": n} for code, n in counts.items()})


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_a_count_within_three_poisson_sd_of_the_real_one_passes():
    checks = by_name(compare(errors(backend_error=100), errors(backend_error=130)))
    check = checks["errors.backend_error.client"]
    assert (check.real, check.virtual, check.rule, check.limit, check.ok) == (
        100, 130, "3 sd", 30.0, True)
    assert checks["errors.backend_error.server"].ok is True


def test_a_count_beyond_three_poisson_sd_fails():
    check = by_name(compare(errors(backend_error=100), errors(backend_error=131)))[
        "errors.backend_error.client"]
    assert (check.limit, check.ok) == (30.0, False)


def test_a_large_count_is_held_to_five_percent_not_three_sd():
    real = errors(backend_error=10_000)  # 3 sd = 300, 5 % = 500
    assert by_name(compare(real, errors(backend_error=10_500)))[
        "errors.backend_error.client"].ok is True
    check = by_name(compare(real, errors(backend_error=10_501)))["errors.backend_error.client"]
    assert (check.rule, check.limit, check.ok) == ("5%", 500.0, False)


def test_the_count_bound_hands_over_where_three_sd_and_five_percent_meet():
    assert LARGE_COUNT == 3600
    below = by_name(compare(errors(x=3599), errors(x=3599)))["errors.x.client"]
    above = by_name(compare(errors(x=3601), errors(x=3601)))["errors.x.client"]
    assert below.rule == "3 sd" and above.rule == "5%"
    assert below.limit == pytest.approx(179.97, abs=0.01)
    assert above.limit == pytest.approx(180.05)


def test_a_code_only_the_virtual_run_has_is_held_to_the_sd_of_a_zero_count():
    checks = by_name(compare(errors(backend_error=5),
                             errors(backend_error=5, internal_error=4)))
    check = checks["errors.internal_error.client"]
    assert (check.real, check.virtual, check.limit, check.ok) == (0, 4, 3.0, False)
    few = by_name(compare(errors(), errors(internal_error=3)))["errors.internal_error.client"]
    assert few.ok is True


def test_a_code_neither_run_saw_is_no_check():
    real = summary(closes={"1001": {"client": 12, "server": 12},
                           "1009": {"client": 0, "server": 0}})
    virtual = summary(closes={"1001": {"client": 11, "server": 12}})
    assert [c.name for c in compare(real, virtual)] == ["closes.1001.client",
                                                         "closes.1001.server"]


def test_client_and_server_counts_are_checked_apart():
    real = summary(closes={"1006": {"client": 40, "server": 0}})
    virtual = summary(closes={"1006": {"client": 41, "server": 0}})
    assert [(c.name, c.ok) for c in compare(real, virtual)] == [("closes.1006.client", True)]


def test_retry_amplification_is_held_to_ten_percent_per_policy():
    def amp(**policies: float) -> dict[str, Any]:
        return summary(retry_amplification={p: {"amplification": a}
                                             for p, a in policies.items()})
    checks = by_name(compare(amp(naive=2.0, default=1.1), amp(naive=2.19, default=1.22)))
    assert checks["retry_amplification.naive"].ok is True
    assert checks["retry_amplification.default"].ok is False
    missing = by_name(compare(amp(naive=2.0), amp()))["retry_amplification.naive"]
    assert (missing.virtual, missing.limit, missing.ok) == (None, None, False)


def recovery(fid: str, seconds: float | None, note: str = "") -> dict[str, Any]:
    return {"id": fid, "recovered_s": seconds, "note": note}


def test_recovery_is_held_to_twenty_percent_with_a_one_second_floor():
    real = summary(recovery=[recovery("f1", 0.0), recovery("f2", 10.0)])
    near = by_name(compare(real, summary(recovery=[recovery("f1", 1.0),
                                                   recovery("f2", 12.0)])))
    assert (near["recovery.f1"].limit, near["recovery.f1"].ok) == (1.0, True)
    assert (near["recovery.f2"].limit, near["recovery.f2"].ok) == (2.0, True)
    far = by_name(compare(real, summary(recovery=[recovery("f1", 2.0),
                                                  recovery("f2", 12.5)])))
    assert far["recovery.f1"].ok is False and far["recovery.f2"].ok is False


def test_a_fault_neither_run_timed_for_the_same_reason_is_no_check():
    open_ended = "open-ended: active until the run ended"
    real = summary(recovery=[recovery("f2", None, open_ended), recovery("f3", 4.0)])
    virtual = summary(recovery=[recovery("f2", None, open_ended),
                                recovery("f3", None, "not recovered before the scenario "
                                                     "ended")])
    checks = compare(real, virtual)
    assert [(c.name, c.ok) for c in checks] == [("recovery.f3", False)]
    assert checks[0].note == "virtual: not recovered before the scenario ended"


def latency(publish_p50: float | None, delivery_p50: float | None) -> dict[str, Any]:
    def figures(p50: float | None) -> dict[str, Any]:
        return {"count": 0} if p50 is None else {"count": 100, "p50": p50, "p99": 4 * p50}
    pub = figures(publish_p50)
    return {"latency_ms": {"publish": pub} if pub["count"] else {},
            "delivery_latency_ms": figures(delivery_p50)}


def test_latencies_at_light_load_are_held_to_twenty_percent():
    checks = by_name(compare(summary(**latency(10.0, 5.0)), summary(**latency(11.9, 6.1))))
    assert [(n, c.ok) for n, c in checks.items()] == [
        ("latency.publish.p50", True), ("latency.publish.p99", True),
        ("latency.delivery.p50", False), ("latency.delivery.p99", False)]
    assert checks["latency.delivery.p50"].limit == pytest.approx(1.0)


def test_latencies_under_a_latency_fault_are_skipped_as_not_light_load():
    faults = [{"id": "f3", "kind": "latency", "start_s": 0.0, "end_s": 60.0},
              {"id": "f4", "kind": "deploy", "start_s": 40.0, "end_s": 40.0}]
    checks = compare(summary(faults=faults, **latency(30.0, 15.0)),
                     summary(faults=faults, **latency(90.0, 15.0)))
    assert [c.ok for c in checks] == [None, None, None, None]
    assert checks[0].note == "not light load: fault f3 latency injects latency"


def test_latencies_of_a_capacity_ramp_are_skipped_as_not_light_load():
    ramp = {"shape": "step_ramp"}
    checks = compare(summary(run=ramp, **latency(30.0, 15.0)),
                     summary(run=ramp, **latency(31.0, 15.0)))
    assert {c.ok for c in checks} == {None}
    assert checks[0].note == "not light load: shape step_ramp overloads on purpose"


def test_a_latency_neither_run_has_is_no_check_and_one_only_one_has_fails():
    assert compare(summary(**latency(None, None)), summary(**latency(None, None))) == []
    checks = by_name(compare(summary(**latency(10.0, None)), summary(**latency(None, None))))
    assert list(checks) == ["latency.publish.p50", "latency.publish.p99"]
    assert checks["latency.publish.p50"].ok is False
    assert checks["latency.publish.p50"].note == "no such figure in the virtual run"


# -- figures from the run directory ------------------------------------------------------


def run_dir(path: Path, rows: list[tuple[Any, ...]], **meta: Any) -> Path:
    """A run directory of run.json and a client log of (scenario s, op, outcome[, class,
    attempt]) rows."""
    path.mkdir()
    (path / "run.json").write_text(json.dumps({"origin": ORIGIN, **meta}))
    log = EventLog(log_dir(path, "test"))
    for ts, op, outcome, *more in rows:
        user_class, attempt = more or ("Subscriber", 1)
        log.row(ORIGIN + ts, "u", user_class, op, outcome, attempt=attempt)
    log.close()
    return path


def publishes(user_class: str, attempts: list[int], outcome: str = "ok"
              ) -> list[tuple[Any, ...]]:
    return [(1.0 + i, "publish", outcome, user_class, a) for i, a in enumerate(attempts)]


def test_amplification_by_class_counts_request_rows_per_first_attempt(tmp_path: Path):
    rows = (publishes("NoBackoff", [1, 2, 3, 1]) + publishes("Budget10", [1, 1, 1, 2])
            + [(9.0, "close", "close 1001", "NoBackoff", 1),  # notes are no operations
               (9.5, "connect", "ok", "NoBackoff", 1)])
    amp = amplification_by_class(client_rows(run_dir(tmp_path / "run", rows)))
    assert amp == {"Budget10": 4 / 3, "NoBackoff": 5 / 3}


def test_classes_sharing_a_policy_are_checked_apart_when_they_retried(tmp_path: Path):
    real = run_dir(tmp_path / "real", publishes("NoBackoff", [1, 2, 1, 2])
                   + publishes("Constant", [1, 1, 1, 1]) + publishes("Naive", [1, 2]))
    virtual = run_dir(tmp_path / "virtual", publishes("NoBackoff", [1, 2, 1, 1])
                      + publishes("Constant", [1, 1, 1, 1]) + publishes("Naive", [1, 2]))
    policies = {"default": {"amplification": 1.25, "user_classes": ["Constant",
                                                                     "NoBackoff"]},
                "naive": {"amplification": 2.0, "user_classes": ["Naive"]}}
    checks = by_name(compare(summary(retry_amplification=policies),
                             summary(retry_amplification=policies), real, virtual))
    check = checks["retry_amplification.class.NoBackoff"]
    assert (check.real, check.virtual, check.ok) == (2.0, pytest.approx(4 / 3), False)
    assert "retry_amplification.class.Constant" not in checks  # 1.0 in both: no retries
    assert "retry_amplification.class.Naive" not in checks  # the policy's own figure


def test_a_blip_recovers_at_the_end_of_its_burst_of_backend_error(tmp_path: Path):
    errors = [20.1, 21.0, 21.8, 22.5, 23.3, 24.0, 25.0, 26.0,  # Redis down 20-24 s
              31.0, 31.2]  # a later burst: not the blip's tail
    rows = [(t, "publish", "backend_error") for t in errors] + [(19.0, "publish", "ok")]
    real = run_dir(tmp_path / "real", rows, redis_blips=[{"at_s": 20.0, "down_s": 4}])
    assert error_tail_s(client_rows(real), 20.0, 4.0) == pytest.approx(2.0, abs=1e-6)
    virtual = run_dir(tmp_path / "virtual", [(20.5, "publish", "backend_error")],
                      redis_blips=[{"at_s": 20.0, "down_s": 4}])
    [check] = compare(summary(), summary(), real, virtual)
    assert (check.name, check.limit, check.ok) == ("recovery.blip1", 1.0, False)
    assert check.virtual == pytest.approx(-3.5, abs=1e-6)


def test_a_blip_only_one_run_json_records_fails_and_says_so(tmp_path: Path):
    rows = [(20.5, "publish", "backend_error")]
    real = run_dir(tmp_path / "real", rows, redis_blips=[{"at_s": 20.0, "down_s": 4}])
    [check] = compare(summary(), summary(), real, run_dir(tmp_path / "virtual", rows))
    assert (check.name, check.virtual, check.ok) == ("recovery.blip1", None, False)
    assert check.note == "virtual run.json records no redis_blips"


def test_the_reconnect_peak_counts_connect_attempts_of_any_outcome_in_one_second(
        tmp_path: Path):
    rows = ([(0.5, "connect", "ok")] * 30  # the spawn, before the window
            + [(15.0 + i / 10, "connect", "ok") for i in range(8)]  # 15.0-15.7
            + [(15.9, "connect", "close 4010"), (16.05, "connect", "timeout"),
               (16.5, "subscribe", "ok")])
    events = client_rows(run_dir(tmp_path / "run", rows))
    assert connect_attempt_peak(events, 15.0, 25.0) == 9  # 15.1-16.05 holds 9
    assert connect_attempt_peak(events, 0.0, 25.0) == 30
    assert connect_attempt_peak(events, 30.0, 40.0) == 0


def test_the_quota_runs_out_at_the_first_refusal_and_again_after_each_pause(
        tmp_path: Path):
    refusals = [8.8, 9.0, 11.0, 13.9, 24.1, 25.0]  # 13.9 -> 24.1: a new period ran out
    rows = [(t, "publish", "over_message_quota") for t in refusals]
    rows += [(t, "publish", "ok") for t in (1.0, 15.0, 20.0)]
    onsets = quota_exhausted_at(client_rows(run_dir(tmp_path / "run", rows)))
    assert onsets == pytest.approx([8.8, 24.1], abs=1e-6)  # unix seconds to scenario time


def test_the_quota_is_used_up_where_messages_used_crosses_the_plan_once_a_period(
        tmp_path: Path):
    d = run_dir(tmp_path / "run", [])
    period = ORIGIN - 3  # billing periods run from the server's start, not the origin
    samples = [(1, period, 500), (2, period, 2_800), (3, period, 3_200), (4, period, 3_300),
               (13, period + 15, 3_600),  # the next period: 0 at its start, 12 s
               (14, period + 15, 3_700)]
    lines = [{"t": ORIGIN + t, "instance": "i0", "stats": {"usage": {"app_demo": {
        "periodStartUnix": start, "messagesUsed": used,
        "plan": {"maxMessagesPerPeriod": 3000}}}}} for t, start, used in samples]
    (d / "server-timeline.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert quota_used_up_at(d) == pytest.approx([2.5, 12 + 3000 / 3600], abs=1e-6)


def test_compare_reads_the_quota_onsets_of_both_run_directories(tmp_path: Path):
    real = run_dir(tmp_path / "real", [(9.0, "publish", "over_message_quota")])
    virtual = run_dir(tmp_path / "virtual", [(9.5, "publish", "over_message_quota"),
                                             (30.0, "publish", "over_message_quota")])
    checks = compare(summary(), summary(), real, virtual)
    assert [(c.name, c.ok) for c in checks] == [
        ("quota_exhausted_at_s", False),  # 5 % of 9 s is 0.45 s
        ("quota_exhausted_at_s.2", False)]
    assert checks[0].limit == pytest.approx(0.45)
    assert (checks[1].real, checks[1].virtual) == (None, pytest.approx(30.0))


# -- the command ------------------------------------------------------------------------


def test_the_table_marks_skips_and_misses():
    checks = [Check("errors.x.client", 10, 30, "3 sd", 9.49, False),
              Check("latency.publish.p50", 30.0, 31.0, "20%", None, None,
                    "not light load: fault f3 latency injects latency")]
    result = {"scenarios": [{"scenario": "default", "real_dir": None,
                             "checks": [c.as_dict() for c in checks]}],
              "checks": 2, "failed": 1, "skipped": 1, "machine": {"cpus": 2}}
    lines = validate_summary(result).splitlines()
    assert lines[2].split() == ["default", "errors.x.client", "10", "30", "±9.49", "(3",
                                "sd)", "NO"]
    assert lines[3].endswith("skip: not light load: fault f3 latency injects latency")
    assert lines[-1] == ("validate: 0 of 2 checks within their bounds, 1 skipped, "
                         "1 MISSED (2 cpus)")


@pytest.mark.parametrize(("argv", "message"), [
    (["--scenarios", "no-such"], "--scenarios: no scenario 'no-such'; give one of "),
    (["--from", "/no/such/dir"], "--from /no/such/dir: no such directory"),
    (["--from", ".", "--seed", "3"], "--from compares runs already made"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys):
    assert main(["validate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: {message}") and err.count("\n") == 1


# -- --repeat: the real harness against itself -------------------------------------------


def _runs(base: Path, **counts: dict[str, int]) -> None:
    for kind, errs in counts.items():
        base.mkdir(parents=True, exist_ok=True)
        d = run_dir(base / kind.replace("_", "-"), [])
        (d / "summary.json").write_text(json.dumps(errors(**errs)))


def test_repeat_holds_a_second_real_run_to_the_same_bounds(tmp_path: Path):
    # 3 sd of 100 is 30: the virtual 140 misses, the second real run's 110 is within,
    # and a code only the first real run saw (200 against 0) misses both ways.
    _runs(tmp_path, real={"x": 100, "y": 200}, virtual={"x": 140, "y": 200},
          real_repeat={"x": 110, "y": 0})
    result = _scenario(Path("default.toml"), tmp_path, users=None, seed=None, run=False,
                       log=lambda _: None, repeat=True)
    got = {c["name"]: (c["ok"], c["repeat"], c["repeat_ok"]) for c in result["checks"]}
    assert got["errors.x.client"] == (False, 110, True)
    assert got["errors.y.server"] == (True, 0, False)
    table = validate_summary({"scenarios": [result], "checks": 4, "failed": 2, "skipped": 0,
                              "machine": {"cpus": 2}, "repeat": {"checks": 4, "failed": 2}})
    lines = table.splitlines()
    assert lines[0].split() == ["scenario", "check", "real", "virtual", "bound", "real",
                                "again", "within", "ok"]
    assert ("the real runs again, against the first: 2 of 4 within the same bounds (how "
            "far the real harness agrees with itself)") in lines


def test_repeat_from_runs_made_without_it_is_one_line_and_exit_2(tmp_path: Path, capsys):
    _runs(tmp_path / "default", real={"x": 1}, virtual={"x": 1})
    assert main(["validate", "--scenarios", "default", "--from", str(tmp_path),
                 "--repeat", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: --from {tmp_path}: no summary.json in "
                          f"{tmp_path}/default/real-repeat (a second real run: --repeat "
                          "makes it)") and err.count("\n") == 1


def test_the_virtual_run_opens_billing_periods_where_the_real_run_did(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "run.json").write_text(json.dumps({"origin": 10.0, "server_lead_s": 0.734}))
    assert same_lead(real) == ["--server-lead", "0.734"]
    (real / "run.json").write_text(json.dumps({"origin": 10.0}))  # recorded before it was
    assert same_lead(real) == []
