"""`python -m bench`: throughput and memory benchmarks of `rtmsim serve` vs a bare baseline.

    python -m bench fanout --seconds 5 --json       delivered msgs/s, 50 subs, 4 pubs
    python -m bench reqack --seconds 5 --json       publish+ack round trips/s, 8 conns
    python -m bench connections --n 15000 --json    KB of RSS per idle connection
    python -m bench soak --minutes 10 --json        leaks: RSS slope, fds and tasks after
    python -m bench analyze --events 10000000       `rtmsim analyze` wall, RSS, bytes on disk
    python -m bench simulate --check                virtual-time models vs published results
    python -m bench simulate --clients 100000       the virtual engine at scale: wall, RSS
    python -m bench simulate --clients 1000000 --simulate-instances 2 --compare
                                                    mirrored vs in full
    python -m bench calibrate-check --json          calibrated costs vs fanout/reqack saturation
    python -m bench validate --check                rtmsim run vs rtmsim simulate, same seed
    python -m bench plancheck --json                predicted vs measured capacity, 2 instances

Progress goes to stderr; the result goes to stdout: one JSON object with `--json`, a
short summary otherwise. Problems are one line and exit code 2 (`--debug` shows the
traceback). These print numbers; nothing here asserts on speed. `simulate --check`,
`simulate --compare` and `calibrate-check` are checks: they exit 1 when a figure misses
its bound.
`validate --check` are checks: they exit 1 when a figure misses its bound.
`plancheck` is a check: it exits 1 when the prediction misses the measured capacity by
more than 25%.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import benchmarks
from .analyze import analyze
from .calibratecheck import calibrate_check
from .calibratecheck import check_summary as calibrate_summary
from .mirrorcheck import mirror_compare, mirror_summary
from .plancheck import add_plancheck_arguments, plancheck_from_args
from .planreport import plancheck_summary
from .procs import FAULT_MODES, ROOT, BenchError
from .redisbench import redis_fanout
from .simulate import check_summary, scale_summary, simulate_check, simulate_scale
from .soak import soak
from .swarm import swarm
from .validate import SCENARIOS, validate, validate_summary


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _non_negative(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench", description="Benchmarks of rtmsim serve "
                     "against a bare websockets broadcast server, each in its own process.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.add_argument("--no-pin", action="store_true",
                       help="do not pin the server to CPU 0 and the clients to the others")
        p.add_argument("--quiet", action="store_true", help="no progress on stderr")
        p.add_argument("--ours-root", type=Path, default=ROOT, metavar="DIR",
                       help="checkout whose `rtmsim serve` is `ours` (default: this one)")
        p.add_argument("--faults", choices=FAULT_MODES, default="none",
                       help="none: no fault configured (default); armed: one never-firing "
                       "fault per family, so every hook runs in full")

    for name, text in (("fanout", "delivered msgs/s: N subscribers on one channel, P "
                        "publishers awaiting each ack"),
                       ("reqack", "publish -> ack round trips/s over C connections")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--seconds", type=_positive(float), default=5.0,
                       help="measured window per server (default 5)")
        p.add_argument("--warmup", type=_positive(float), default=1.0,
                       help="load before the window (default 1)")
        p.add_argument("--slice", type=_positive(float), default=0.25,
                       help="seconds per turn; the client alternates ours/bare (default "
                       "0.25)")
        p.add_argument("--payload-bytes", type=_positive(int), default=64,
                       help="size of each message's data (default 64)")
        common(p)
    sub.choices["fanout"].add_argument("--subscribers", type=_positive(int), default=50)
    sub.choices["fanout"].add_argument("--publishers", type=_positive(int), default=4)
    sub.choices["reqack"].add_argument("--connections", type=_positive(int), default=8)
    p = sub.add_parser("connections", help="server RSS per idle authenticated connection",
                       description="Open N idle authenticated connections to one server "
                       "process; KB of RSS per connection and connects/s, ours and bare.")
    p.add_argument("--n", type=_positive(int), default=15000)
    p.add_argument("--concurrency", type=_positive(int), default=200,
                   help="connection attempts in flight (default 200)")
    common(p)
    p = sub.add_parser("swarm", help="one Locust process: round trips/s vs a raw asyncio "
                       "loop, and the most users it holds")
    p.add_argument("--seconds", type=_positive(float), default=10.0)
    p.add_argument("--warmup", type=_positive(float), default=2.0)
    p.add_argument("--connections", type=_positive(int), default=8,
                   help="publishers awaiting acks, in Locust and in the raw loop")
    p.add_argument("--users", type=_positive(int), default=6000,
                   help="idle users to spawn in one Locust process (default 6000)")
    p.add_argument("--spawn-rate", type=_positive(float), default=400.0)
    common(p)
    p = sub.add_parser("redis", help="fan-out across two instances through Redis vs the "
                       "memory backend")
    p.add_argument("--seconds", type=_positive(float), default=5.0)
    p.add_argument("--warmup", type=_positive(float), default=1.0)
    p.add_argument("--subscribers", type=_positive(int), default=50)
    p.add_argument("--publishers", type=_positive(int), default=4)
    common(p)
    text = ("minutes of modest load with churning connections on one server: RSS slope, "
            "and whether descriptors and tasks come back once the clients left")
    p = sub.add_parser("soak", help=text, description=text)
    p.add_argument("--minutes", type=_positive(float), default=10.0,
                   help="of load once connected; fractions allowed (default 10)")
    p.add_argument("--connections", type=_positive(int), default=2000)
    p.add_argument("--churn-fraction", type=_fraction, default=0.2,
                   help="of the connections that leave and reconnect (default 0.2)")
    p.add_argument("--churn-s", type=_positive(float), default=5.0,
                   help="seconds a churning connection stays (default 5)")
    p.add_argument("--warmup-minutes", type=_non_negative, default=2.0,
                   help="RSS before this is left out of the slope (default 2)")
    common(p)
    p = sub.add_parser("analyze", help="`rtmsim analyze` on a synthesised run of N client "
                       "events: wall time, peak RSS, bytes on disk per million events")
    p.add_argument("--events", type=_positive(int), default=1_000_000)
    p.add_argument("--candidates", action="store_true",
                   help="time candidate engines (pandas/CSV, DuckDB, Polars) instead")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="synthesise into DIR and keep it (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p = sub.add_parser("simulate", help="virtual-time models: --check reproduces the "
                       "published retry results with our own classes")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true",
                      help="Brooker's backoff model, the SRE book's amplification, Bronson "
                      "et al.'s metastability at full size; exit 1 if a figure misses")
    mode.add_argument("--clients", type=_positive(int), metavar="N",
                      help="scale: a deploy storm of N clients in the virtual engine "
                      "(wall time, events/s, peak RSS)")
    p.add_argument("--duration", type=_positive(float), default=600.0,
                   help="virtual seconds of the scale run (default 600)")
    p.add_argument("--queue", choices=("heap", "simpy"), default="heap",
                   help="the scale run's event queue: a plain heap or SimPy's")
    p.add_argument("--simulate-instances", type=_positive(int), metavar="M",
                   help="scale: M of the instances in full, the others mirrored "
                   "(rtmsim simulate --simulate-instances)")
    p.add_argument("--compare", action="store_true",
                   help="with --simulate-instances: run the deployment in full too and "
                   "read the mirrored figures against it; exit 1 if one misses its bound")
    p.add_argument("--trials", type=_positive(int), default=500,
                   help="trials per strategy in Brooker's model (default 500)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    text = ("rtmsim calibrate, then fanout and reqack at saturation: do the calibrated "
            "costs predict them within 15%%? (exit 1 if not)")
    p = sub.add_parser("calibrate-check", help=text, description=text)
    p.add_argument("--seconds", type=_positive(float), default=5.0,
                   help="measured window per server and benchmark (default 5)")
    p.add_argument("--warmup", type=_positive(float), default=1.0)
    p.add_argument("--calibrate-seconds", type=_positive(float), default=3.0,
                   help="rtmsim calibrate --seconds (default 3: about a minute)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the server to CPU 0 and the clients to the others")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p = sub.add_parser("validate", help="real vs virtual: rtmsim run and rtmsim simulate "
                       "of the same scenario and seed, compared against issue 14's bounds")
    p.add_argument("--scenarios", type=_names, default=SCENARIOS, metavar="A,B,...",
                   help=f"scenarios/NAME.toml or .toml files (default {','.join(SCENARIOS)})")
    p.add_argument("--users", type=_positive(int), help="override swarm.users in both runs")
    p.add_argument("--seed", type=int, help="override server.seed in both runs (default: "
                   "each scenario's own)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--keep", type=Path, metavar="DIR", help="write the run directories "
                       "to DIR/SCENARIO/{real,virtual} and keep them (default: a temporary "
                       "directory)")
    where.add_argument("--from", dest="existing", type=Path, metavar="DIR",
                       help="run nothing: compare the run directories --keep DIR wrote")
    p.add_argument("--model", type=Path, metavar="FILE", help="the virtual runs' model "
                   "(rtmsim simulate --model; default: each scenario's own)")
    p.add_argument("--no-load-generator", dest="load_generator", action="store_false",
                   help="simulate without modelling the real run's Locust processes "
                        "(rtmsim simulate without --load-generator)")
    p.add_argument("--repeat", action="store_true", help="run each scenario for real twice "
                   "and hold the second run to the same bounds against the first (how far "
                   "the real harness agrees with itself; with --from, compares the second "
                   "run that --repeat --keep wrote)")
    p.add_argument("--check", action="store_true", help="exit 1 if a check misses its bound")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    text = ("capacity of 2 instances behind Redis: the model's prediction vs real processes "
            "pinned to a core each (exit 1 if they are more than a quarter apart)")
    add_plancheck_arguments(sub.add_parser("plancheck", help=text, description=text),
                            _positive)
    return parser


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"no scenario names in {text!r}")
    return names


def run(args: argparse.Namespace) -> dict[str, Any]:
    log = (lambda _: None) if args.quiet else (lambda text: print(text, file=sys.stderr,
                                                                   flush=True))
    if args.command == "analyze":
        return analyze(args.events, candidates=args.candidates, keep=args.keep, log=log)
    if args.command == "simulate" and args.clients:
        if args.compare:
            if args.simulate_instances is None:
                raise BenchError("--compare needs --simulate-instances M")
            return mirror_compare(args.clients, args.simulate_instances, args.duration,
                                  args.queue, log)
        return simulate_scale(args.clients, args.duration, args.queue, log,
                              args.simulate_instances)
    if args.command == "simulate":
        if args.trials < 2:
            raise BenchError(f"--trials {args.trials}: a mean and its error need >= 2")
        return simulate_check(args.trials, args.seed, log)
    if args.command == "calibrate-check":
        return calibrate_check(seconds=args.seconds, warmup=args.warmup,
                               calibrate_seconds=args.calibrate_seconds,
                               placement=benchmarks.Placement.choose(pinned=not args.no_pin),
                               log=log)
    if args.command == "plancheck":
        return plancheck_from_args(args, log)
    if args.command == "validate":
        if args.existing is not None and (args.users is not None or args.seed is not None):
            raise BenchError("--from compares runs already made: --users and --seed do "
                             "not apply; drop them")
        if args.existing is not None and not args.existing.is_dir():
            raise BenchError(f"--from {args.existing}: no such directory")
        if args.model is not None and not args.model.is_file():
            raise BenchError(f"--model {args.model}: no such file")
        return validate(args.scenarios, users=args.users, seed=args.seed, keep=args.keep,
                        existing=args.existing, log=log, load_generator=args.load_generator,
                        model=args.model, repeat=args.repeat)
    if not (args.ours_root / "sim" / "cli.py").is_file():
        raise BenchError(f"--ours-root {args.ours_root}: no sim/cli.py there; "
                         "give the root of an rtmsim checkout")
    placement = benchmarks.Placement.choose(pinned=not args.no_pin,
                                            ours_root=args.ours_root.resolve(),
                                            faults=args.faults)
    if args.command == "fanout":
        return benchmarks.fanout(seconds=args.seconds, warmup=args.warmup,
                                 slice_s=args.slice, subscribers=args.subscribers,
                                 publishers=args.publishers,
                                 payload_bytes=args.payload_bytes, placement=placement,
                                 log=log)
    if args.command == "swarm":
        with placement.children(log) as children:
            return swarm(seconds=args.seconds, warmup=args.warmup,
                         connections=args.connections, users=args.users,
                         spawn_rate=args.spawn_rate, children=children, log=log)
    if args.command == "redis":
        return redis_fanout(seconds=args.seconds, warmup=args.warmup,
                            subscribers=args.subscribers, publishers=args.publishers,
                            log=log)
    if args.command == "soak":
        if args.warmup_minutes >= args.minutes:
            raise BenchError(f"--warmup-minutes {args.warmup_minutes:g} leaves no time to "
                             f"measure in --minutes {args.minutes:g}: make it smaller")
        return soak(minutes=args.minutes, connections=args.connections,
                    churn_fraction=args.churn_fraction, churn_s=args.churn_s,
                    warmup_minutes=args.warmup_minutes, placement=placement, log=log)
    if args.command == "reqack":
        return benchmarks.reqack(seconds=args.seconds, warmup=args.warmup, slice_s=args.slice,
                                 connections=args.connections,
                                 payload_bytes=args.payload_bytes, placement=placement,
                                 log=log)
    return benchmarks.connections(n=args.n, concurrency=args.concurrency,
                                  placement=placement, log=log)


def summary(result: dict[str, Any]) -> str:
    """The human-readable result."""
    if result.get("benchmark") == "soak":
        m, rss = result["messages"], result["rss_mb"]
        slope = result["rss_slope_mb_per_10min"]
        return (f"soak: {result['duration_s'] / 60:.1f} min, {result['connections']} "
                f"connections, {result['churn_reconnects']} churn reconnects; "
                f"{m['published']} published, {m['sent']} sent, {m['delivered']} "
                f"delivered; RSS {rss['start']} -> {rss['end']} MB, slope "
                f"{'n/a' if slope is None else slope} MB/10 min; fds {result['fds']}, "
                f"tasks {result['tasks']}; server cpu {result['server_cpu']} core; "
                + ("unexpected: " + "; ".join(result["unexpected"]) if result["unexpected"]
                   else "nothing unexpected"))
    if result.get("benchmark") == "simulate":
        if result["mode"] == "mirror":
            return mirror_summary(result)
        return scale_summary(result) if result["mode"] == "scale" else check_summary(result)
    if result.get("benchmark") == "calibrate-check":
        return calibrate_summary(result)
    if result.get("benchmark") == "validate":
        return validate_summary(result)
    if result.get("benchmark") == "plancheck":
        return plancheck_summary(result)
    if result.get("benchmark") == "analyze":
        if "candidates" in result:
            return "analyze candidates: " + "; ".join(
                f"{k} {v['wall_s']} s, {v['peak_rss_mb']} MB"
                for k, v in result["candidates"].items())
        return (f"analyze: {result['events']:,} client events: rtmsim analyze "
                f"{result['wall_s']} s, peak RSS {result['peak_rss_mb']} MB; "
                f"{result['parquet_mb_per_million_events']} MB on disk per million events")
    if result.get("benchmark") == "swarm":
        return (f"swarm: Locust {result['locust']:,.0f} round trips/s, raw asyncio "
                f"{result['raw']:,.0f}, ratio {result['ratio']} (uvloop "
                f"{result['raw_uvloop']:,.0f}, ratio {result['ratio_uvloop']}); one Locust "
                f"process held "
                f"{result['max_users']} users at {result['kb_per_user']} KB each")
    if result.get("benchmark") == "redis":
        return (f"redis: fan-out via Redis {result['redis']:,.0f} msgs/s, memory "
                f"{result['memory']:,.0f} msgs/s, ratio {result['ratio']}; p99 "
                f"{result['p99_ms_redis']} ms vs {result['p99_ms_memory']} ms")
    if "ratio" in result:
        return (f"{result['benchmark']}: ours {result['ours']:,.0f} {result['unit']}, "
                f"bare {result['bare']:,.0f} {result['unit']}, ratio {result['ratio']:.3f} "
                f"({result['seconds']:g} s per server in {result['slices_per_server']} slices)")
    return (f"connections: {result['n']} idle connections: ours "
            f"{result['kb_per_connection']} KB each, {result['connects_per_s']:,.0f} "
            f"connects/s; bare {result['bare_kb_per_connection']} KB each, "
            f"{result['bare_connects_per_s']:,.0f} connects/s")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except BenchError as exc:
        if args.debug:
            raise
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(json.dumps(result) if args.json else summary(result))
    gated = args.command != "validate" or args.check  # validate fails only with --check
    return 0 if result.get("passed", True) or not gated else 1


if __name__ == "__main__":
    sys.exit(main())
