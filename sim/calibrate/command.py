"""`rtmsim calibrate`: measure the server's CPU per operation here, write a model file.

The steps (`steps.py`) run one after another against one `rtmsim serve` pinned to the
first CPU, from this process pinned to the others; the costs are fitted over all of
them at once (`fit.py`); the network figures come from light-load round trips; the
Redis hop from a private redis-server and two instances, when `redis-server` is on
PATH. The model file is what `sim.virtual.model.load_model` reads, with the raw
figures under `[model.measured]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import socket
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

try:
    import uvloop
except ImportError:  # the stock loop then
    uvloop = None

from server.schema import ConfigError
from sim.virtual.model import OPERATIONS, RedisModel, load_model

from ..tomlwrite import toml_text
from . import latency, loadgen, steps, turns
from .fit import Fit, FitError, Row, fit_costs, lognormal, saturation, used_rows
from .rawclient import raw_client_costs
from .report import header, table
from .servers import ROOT, CalibrationError, Processes, process_cpu_s, split_cpus
from .steps import NUISANCE, Meter, Scale, Session

RESULTS = ROOT / "results"
MIN_LATENCY_MS = 0.001  # a one-way figure is never written as 0 (the model needs > 0)


def default_out() -> Path:
    return RESULTS / f"model-{socket.gethostname()}.toml"


def check_out(path: Path) -> Path:
    """`path` if a model can be written there; CalibrationError (one line) if not."""
    if path.is_dir():
        raise CalibrationError(f"--out {path}: is a directory; give a file name "
                               "(e.g. results/model-HOST.toml)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CalibrationError(f"--out {path}: cannot create {path.parent}: "
                               f"{exc.strerror or exc}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path,
                                                                               os.W_OK)):
        raise CalibrationError(f"--out {path}: not writable; choose another file")
    return path


def machine_description() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return {"host": socket.gethostname(), "cpus": os.cpu_count(),
            "arch": platform.machine(), "cpu_model": model,
            "python": platform.python_version(), "kernel": platform.release()}


# -- the measurement ------------------------------------------------------------------


async def measure(scale: Scale, server_cpus: set[int] | None,
                  client_cpus: set[int] | None, *, redis: bool,
                  log: Callable[[str], None], load_generator: bool = True) -> dict[str, Any]:
    """Every step against a fresh server; rows, latencies, the Locust process's costs
    and the Redis figures."""
    async with Processes(server_cpus, client_cpus) as procs:
        server = await procs.start_server()
        core = min(server_cpus) if server_cpus else None
        log(f"server pid {server.pid} at {server.ws_url}, on cpu "
            f"{core if core is not None else 'any'}; load on cpu "
            f"{','.join(map(str, sorted(client_cpus))) if client_cpus else 'any'}")
        session = Session(server, Meter(server, core), scale, log)
        try:
            out = await _steps(session, log)
        finally:
            await session.close()
        out["load_generator"] = None
        if load_generator:
            out["load_generator"] = await loadgen.measure(
                server, procs.dir / "loadgen", scale.seconds, client_cpus, log)
        await procs.stop(server)
        out["redis"], out["redis_missing"] = None, "--no-redis"
        if redis:
            try:
                out["redis"] = await redis_hop(procs, scale, log)
            except CalibrationError as exc:  # the costs stand without it
                log(f"redis: {exc}; [model.redis] keeps the defaults")
                out["redis_missing"] = str(exc)
            else:
                if out["redis"] is None:
                    out["redis_missing"] = "no redis-server on PATH"
    out["placement"] = {"server_cpu": core, "load_cpus": sorted(client_cpus or [])}
    return out


async def _steps(s: Session, log: Callable[[str], None]) -> dict[str, Any]:
    sc = s.scale
    plan: list[tuple[str, Callable[[], Any]]] = [
        ("rest_get", lambda: steps.rest_get(s)),
        ("connect_key", lambda: steps.connects(s, "key")),
        ("connect_jwt", lambda: steps.connects(s, "jwt")),
        ("subscribe", lambda: steps.subscriptions(s)),
        *((f"publish_to_{k}", lambda k=k: steps.fanout(s, k)) for k in sc.fanout),
        ("send", lambda: steps.sends(s)),
        ("frames", lambda: steps.frames(s)),
        ("kick", lambda: steps.kicks(s)),
        ("rest_publish", lambda: steps.rest_publishes(s)),
        ("turns", lambda: turns.turn_steps(s)),
    ]
    total = len(plan) + 5
    speed = [steps.spin_rate()]
    log(f"[1/{total}] idle server")
    s.meter.idle_per_s = await steps.idle(s)
    rows: list[Row] = []
    for i, (name, run) in enumerate(plan, start=2):
        depth = (f"{sc.sockets} and {sc.turn_sockets} in flight, alternating"
                 if name == "turns" else f"{sc.sockets} in flight")
        log(f"[{i}/{total}] {name} ({sc.seconds:g} s, {depth})")
        for row in await run():
            rows.append(row)
            others = max(0.0, row.extra["core_busy"] - row.extra["server_busy"])
            log(f"    {row.step}: {_ops_text(row.ops)} in {row.wall_s:.2f} s: "
                f"{_per_op_us(row):.1f} us cpu per {_main_op(row)}; server "
                f"{row.extra['server_busy']:.0%} busy, its core {others:.0%} busy "
                f"with others; load {row.extra['load_busy']:.0%} busy")
    log(f"[{total - 3}/{total}] publishes with 1 and with 8 in flight (batching, "
        "for the record)")
    batch = await steps.batching(s)
    log(f"    {batch['publish_us_1_in_flight']} us cpu per publish with 1 in flight, "
        f"{batch['publish_us_8_in_flight']} with 8")
    log(f"[{total - 2}/{total}] round trips (one ping in flight)")
    rtts, rtt_cpu = await latency.round_trips(s)
    log(f"    {len(rtts)} round trips, median {statistics.median(rtts) * 1e3:.3f} ms, "
        f"{rtt_cpu * 1e6:.1f} us server cpu each")
    log(f"[{total - 1}/{total}] round trips after an idle 1/rate, rate "
        f"{', '.join(f'{r:g}' for r in latency.WAKE_RATES)} a second")
    idle_rtts, idle_cpu = await latency.idle_round_trips(s)
    log("    medians " + ", ".join(f"{statistics.median(v) * 1e3:.3f}" for v in
                                   idle_rtts.values()) + " ms; server cpu each "
        + ", ".join(f"{v * 1e6:.1f}" for v in idle_cpu.values()) + " us")
    log(f"[{total}/{total}] publish -> delivery, one message in flight")
    local = await latency.delivery_latencies(s.server.ws_url, s.server.ws_url,
                                           sc.latency_samples // 4, sc.seconds / 2)
    await s.settle(0)
    log(f"    {len(local)} deliveries, median {statistics.median(local) * 1e3:.3f} ms")
    speed.append(steps.spin_rate())
    return {"rows": rows, "idle_per_s": s.meter.idle_per_s, "rtts": rtts,
            "idle_rtts": idle_rtts, "rtt_cpu": rtt_cpu, "idle_cpu": idle_cpu,
            "local_delivery": local, "batching": batch,
            "spin_rate": speed}


def _main_op(row: Row) -> str:
    return max(row.ops, key=lambda op: (op not in NUISANCE and op != "delivery",
                                        row.ops[op]))


def _per_op_us(row: Row) -> float:
    return row.cpu_s / row.ops[_main_op(row)] * 1e6


def _ops_text(ops: dict[str, float]) -> str:
    return ", ".join(f"{int(n):,} {op}" for op, n in ops.items())


async def redis_hop(procs: Processes, scale: Scale, log: Callable[[str], None]
                    ) -> dict[str, Any] | None:
    """What a message through Redis adds: CPU in the publishing and the receiving
    instance (and in redis-server), and the publish -> delivery time over a local one."""
    url = await procs.start_redis()
    if url is None:
        log("redis: no redis-server on PATH: [model.redis] keeps the defaults")
        return None
    i0, i1 = await procs.start_instances(url)
    log(f"redis: private redis-server at {url}; instances i0 pid {i0.pid}, i1 pid "
        f"{i1.pid}")
    redis_pid = procs.redis_pid
    assert redis_pid is not None
    s = Session(i0, Meter(i0, None), scale, log)
    try:
        await s.settle(0)
        pids = {"i0": i0.pid, "i1": i1.pid, "redis": redis_pid}
        idle_window = max(0.2, scale.seconds / 3)
        before = {k: _cpu(p) for k, p in pids.items()}
        t0 = time.perf_counter()
        await asyncio.sleep(idle_window)
        idle = {k: (_cpu(p) - before[k]) / (time.perf_counter() - t0)
                for k, p in pids.items()}
        log(f"redis: publishes from i0 through Redis ({scale.seconds:g} s, nobody "
            "subscribed)")
        pubs = await s.requesters(scale.sockets)
        before = {k: _cpu(p) for k, p in pids.items()}
        t0 = time.perf_counter()
        n = await steps.run_for(pubs, scale.seconds, steps.publish_frame("cal/redis"),
                                (b'"ack"',))
        wall = time.perf_counter() - t0
        cpu = {k: max(0.0, _cpu(p) - before[k] - idle[k] * wall) for k, p in pids.items()}
        await s.done_with(pubs)
        log(f"    {n:,} publishes: {cpu['i0'] / n * 1e6:.1f} us cpu per publish in i0, "
            f"{cpu['i1'] / n * 1e6:.1f} in i1, {cpu['redis'] / n * 1e6:.1f} in redis-server")
        log("redis: publish on i0 -> delivery on i1, one message in flight")
        crossed = await latency.delivery_latencies(i0.ws_url, i1.ws_url,
                                                 scale.latency_samples // 4,
                                                 scale.seconds / 2)
        log(f"    {len(crossed)} deliveries, median "
            f"{statistics.median(crossed) * 1e3:.3f} ms")
    finally:
        await s.close()
    return {"publishes": n, "wall_s": round(wall, 3),
            "cpu_s": {k: round(v, 6) for k, v in cpu.items()},
            "idle_per_s": {k: round(v, 6) for k, v in idle.items()},
            "crossed_delivery_s": crossed}


def _cpu(pid: int) -> float:
    return process_cpu_s(pid)


# -- from measurements to a model -----------------------------------------------------


def build_model(measured: dict[str, Any], scale: Scale, machine: dict[str, Any],
                when: datetime) -> dict[str, Any]:
    """The model table (and its `measured` record) from `measure`'s output."""
    rows: list[Row] = measured["rows"]
    turn_us = turns.turns_from_pairs(rows)
    fit_rows = turns.less_turns(rows, turn_us)
    try:
        fit = fit_costs(fit_rows, [*OPERATIONS, *NUISANCE])
    except FitError as exc:
        raise CalibrationError(f"the measurements do not fit: {exc}; rerun with more "
                               "--seconds") from None
    costs = {op: fit.costs_us[op] for op in OPERATIONS}
    try:
        rtt_median_s, sigma = lognormal(measured["rtts"])
    except FitError as exc:
        raise CalibrationError(f"the round trips do not fit: {exc}") from None
    # One way is half of what a round trip spends outside the server's CPU (a lone
    # ping: its cost and its whole turn); the spread is the round trips' own (the
    # part the server takes varies with them).
    alone_us = costs["frame"] + turn_us.get("frame", 0.0)
    median_ms = max(MIN_LATENCY_MS, (rtt_median_s - alone_us / 1e6) / 2 * 1e3)
    redis_table, redis_record, source = _redis(measured.get("redis"), costs,
                                               measured["local_delivery"],
                                               measured.get("redis_missing", ""))
    date = when.strftime("%Y-%m-%d")
    name = (f"{machine['host']}, {machine['cpus']} vCPU {machine['arch']} "
            f"{machine['cpu_model']} (rtmsim calibrate, {date})")
    record: dict[str, Any] = {
        "date": when.isoformat(timespec="seconds"), **machine,
        "cpu_clock": "/proc/PID/task/*/schedstat (server process, all threads)",
        "seconds_per_step": scale.seconds, "sockets_per_step": scale.sockets,
        "sockets_per_turn_step": scale.turn_sockets,
        "idle_cpu_per_s": round(measured["idle_per_s"], 6),
        "placement": measured.get("placement", {}),
        "nuisance_us": {op: round(fit.costs_us[op], 2) for op in NUISANCE},
        "clamped": fit.clamped,
        "fit_max_abs_residual": round(max(abs(r) for r in fit.residuals), 4),
        "predicted": {k: round(v, 1) for k, v in saturation(costs, turn_us).items()},
        "batching": measured["batching"],
        # Plain-Python loop turns per CPU second of the load process, before and after:
        # how fast the vCPUs ran (compare two calibrations by it).
        "spin_rate": [round(x) for x in measured["spin_rate"]],
        "server_core_used_by_others": _others(rows),
        "network": {
            "round_trips": len(measured["rtts"]),
            "rtt_median_ms": round(statistics.median(measured["rtts"]) * 1e3, 4),
            "one_way": "median_ms = (median round trip - frame - its turn) / 2; "
                       "sigma = the round trips' log interquartile range / 1.349",
        },
        "redis": redis_record,
        "steps": _step_records(rows, fit, turn_us),
    }
    network = {"median_ms": round(median_ms, 4), "sigma": round(sigma, 3)}
    wake_cpu = wake_cpu_curve(measured.get("rtt_cpu"), measured.get("idle_cpu"))
    record["wake"] = {
        "round_trips_median_ms": {f"{rate:g}": round(statistics.median(v) * 1e3, 4)
                                  for rate, v in measured["idle_rtts"].items()},
        "server_cpu_us": {"back_to_back": round(measured.get("rtt_cpu", math.nan) * 1e6, 2),
                          **{f"{rate:g}": round(v * 1e6, 2) for rate, v in
                             (measured.get("idle_cpu") or {}).items()}},
        "wake_curve": "[1000/rate ms, (median round trip at rate - median back to back) "
                      "us - the wake_cpu_curve's us there], a ping at a time 1/rate apart",
        "wake_cpu_curve": "[1000/rate ms, server CPU a round trip at rate - back to back "
                          "us]"}
    model = {
        "name": name, "source": source, "cores": 1, "backlog": 2048,
        "wake_curve": wake_curve(measured["rtts"], measured["idle_rtts"], wake_cpu),
        "wake_cpu_curve": wake_cpu,
        "costs_us": {op: round(v, 2) for op, v in costs.items()},
        **({"turn_us": {op: round(v, 2) for op, v in turn_us.items()}} if turn_us else {}),
        "network": network,
        "redis": redis_table,
        "measured": record,
    }
    lg = measured.get("load_generator")
    if lg is not None:
        model["load_generator"] = loadgen.load_generator_table(lg)
        record["load_generator"] = {**lg, "split": loadgen.LOOP_SPLIT if "bursts" in lg
                                    else loadgen.SPLIT}
    raw_client, record["raw_client"] = raw_client_costs(rows)
    if raw_client is not None:
        model["raw_client"] = raw_client
    return model


def wake_curve(back_to_back: list[float], idle: dict[float, list[float]],
               cpu: list[list[float]] | None = None) -> list[list[float]]:
    """`wake_curve` points: after 1/rate idle, what a round trip takes beyond one
    back to back (medians; never below 0), idle ascending; less the server's extra CPU
    at that idle (`cpu`: the `wake_cpu_curve`), which the engine charges as CPU."""
    base = statistics.median(back_to_back)
    extra_cpu = {ms: us for ms, us in cpu or []}
    points = [[ms := round(1e3 / rate, 3),
               round(max(0.0, (statistics.median(rtts) - base) * 1e6
                         - extra_cpu.get(ms, 0.0)), 1)]
              for rate, rtts in idle.items() if rtts]
    return sorted(points)


def wake_cpu_curve(back_to_back_cpu: float | None, idle_cpu: dict[float, float] | None
                   ) -> list[list[float]]:
    """`wake_cpu_curve` points: after 1/rate idle, the server's CPU a round trip beyond
    one back to back (never below 0), idle ascending; none without the figures."""
    if back_to_back_cpu is None or not idle_cpu or back_to_back_cpu != back_to_back_cpu:
        return []
    return sorted([round(1e3 / rate, 3), round(max(0.0, cpu - back_to_back_cpu) * 1e6, 1)]
                  for rate, cpu in idle_cpu.items() if cpu == cpu)


def _others(rows: list[Row]) -> float:
    """The share of the server's core that went to other processes and interrupts
    while the steps ran (time-weighted): above ~0.15 the figures are suspect."""
    wall = sum(r.wall_s for r in rows)
    used = sum((r.extra["core_busy"] - r.extra["server_busy"]) * r.wall_s for r in rows)
    return round(max(0.0, used / wall), 3) if wall else 0.0


def _step_records(rows: list[Row], fit: Fit, turn_us: dict[str, float]
                  ) -> list[dict[str, Any]]:
    """Each step as measured, with what the costs and turns make of it."""
    fitted = {r.step: fit.predicted_cpu_s(r) + turns.turn_cpu_s(r, turn_us) for r in rows}
    used = {r.step for r in used_rows(rows)}
    return [{"step": r.step, "ops": {op: int(n) for op, n in r.ops.items()},
             "cpu_s": round(r.cpu_s, 6), "wall_s": round(r.wall_s, 3), **r.extra,
             "fitted_cpu_s": round(fitted[r.step], 6),
             "residual": round(fitted[r.step] / r.cpu_s - 1, 4) if r.step in used
             else "unused"}
            for r in rows]


def _redis(redis: dict[str, Any] | None, costs: dict[str, float], local: list[float],
           missing: str = "") -> tuple[dict[str, float], dict[str, Any], str]:
    defaults = RedisModel()
    if redis is None:
        return ({"send_us": defaults.send_us, "receive_us": defaults.receive_us,
                 "server_us": defaults.server_us, "latency_ms": defaults.latency_ms},
                {"measured": False},
                f"rtmsim calibrate; [model.redis] left at the defaults: {missing}")
    n = redis["publishes"]
    sender_us = max(0.1, redis["cpu_s"]["i0"] / n * 1e6 - costs["publish"])
    receiver_us = max(0.1, redis["cpu_s"]["i1"] / n * 1e6)
    server_us = redis["cpu_s"]["redis"] / n * 1e6
    extra_ms = (statistics.median(redis["crossed_delivery_s"])
                - statistics.median(local)) * 1e3
    # A crossing in the engine, as RedisBackend does it: the quota charge's round trip
    # to Redis (2 x latency_ms), the PUBLISH's way to Redis and on to the other instance
    # (2 x latency_ms more), the sender's, redis-server's and the receiver's CPU on the
    # way: what it adds beyond that CPU, quartered.
    latency_ms = max(MIN_LATENCY_MS,
                     (extra_ms - (sender_us + server_us + receiver_us) / 1e3) / 4)
    record = {
        "measured": True, "publishes": n, "wall_s": redis["wall_s"],
        "cpu_s": redis["cpu_s"], "idle_per_s": redis["idle_per_s"],
        "crossed_delivery_median_ms": round(
            statistics.median(redis["crossed_delivery_s"]) * 1e3, 4),
        "local_delivery_median_ms": round(statistics.median(local) * 1e3, 4),
        "send_us": "i0's CPU per publish (nobody subscribed) less a memory publish",
        "receive_us": "i1's CPU per message it receives from Redis and finds no one for",
        "server_us": "redis-server's CPU per publish (the ledger's charge included)",
        "latency_ms": "one way, instance <-> Redis: (median publish->delivery through "
                      "Redis - a local one - send_us - server_us - receive_us) / 4 (the "
                      "quota charge's round trip, then the PUBLISH's way there and on)",
    }
    return ({"send_us": round(sender_us, 2), "receive_us": round(receiver_us, 2),
             "server_us": round(server_us, 2), "latency_ms": round(latency_ms, 4)},
            record, "rtmsim calibrate")


# -- the command ----------------------------------------------------------------------


def run_calibration(out: Path, scale: Scale, *, redis: bool = True,
                    log: Callable[[str], None] = print,
                    load_generator: bool = True) -> dict[str, Any]:
    """Measure, fit, write the model to `out`; the model table. CalibrationError on
    any problem (one line)."""
    out = check_out(out)
    server_cpus, client_cpus = split_cpus()
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)  # this process is the load
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(4096, scale.batch * 2 + 256)
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard >= wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    when = datetime.now().astimezone()
    start = time.perf_counter()
    coro = measure(scale, server_cpus, client_cpus, redis=redis, log=log,
                   load_generator=load_generator)
    measured = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    model = build_model(measured, scale, machine_description(), when)
    model["measured"]["calibration_s"] = round(time.perf_counter() - start, 1)
    out.write_text(toml_text({"model": model}, header(model, scale)))
    try:
        load_model(out)
    except ConfigError as exc:  # a bug here, not the user's: say so plainly
        raise CalibrationError(f"wrote {out} but it does not load: {exc}") from None
    return model


def scale_from(args: argparse.Namespace) -> Scale:
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise CalibrationError(f"--seconds must be > 0, got {args.seconds:g}")
    return Scale.for_seconds(args.seconds)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """The `rtmsim calibrate` command; errors are one line, exit code 2."""
    def log(text: str) -> None:
        print(f"rtmsim: calibrate: {text}", file=sys.stderr, flush=True)

    try:
        scale = scale_from(args)
        out = Path(args.out) if args.out else default_out()
        model = run_calibration(out, scale, redis=not args.no_redis, log=log,
                                load_generator=not args.no_load_generator)
    except CalibrationError as exc:
        if args.debug:
            raise
        print(f"rtmsim: calibrate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"out": str(out), "model": model}))
    else:
        print(table(model))
    print(f"rtmsim: calibrate: wrote {out} in {model['measured']['calibration_s']} s",
          file=sys.stderr if args.json else sys.stdout)
    return 0

