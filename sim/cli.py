"""`rtmsim`: the command line of the harness.

Bad input gets one line naming the problem and exit code 2, never a traceback
(`--debug` shows it).

The commands import their heavy parts (pandas and matplotlib for the reports, the
asyncio server for `serve`) inside the function that needs them, so that `rtmsim
serve` starts without loading the analysis and `rtmsim run` without the server.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from server.config import BACKENDS, Config, ConfigError, default_config, load_config

from . import rundir
from .run import RunError, Runner, default_run_dir
from .scenario import Scenario, load_scenario

# `simulate --server-lead`: a real run's servers start well within this of its swarm.
MAX_SERVER_LEAD_S = 600.0


class CliError(Exception):
    """A problem with the command's input, phrased for the user."""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, always `rtmsim: ...`
        self.exit(2, f"rtmsim: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rtmsim", description="Simulated realtime pub/sub service and "
                     "load-testing harness.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = sub.add_parser("serve", help="run the simulated service")
    serve.add_argument("--config", help="TOML config file (default: the built-in demo app)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="WebSocket port (default 8765; 0 = any)")
    serve.add_argument("--admin-port", type=_port,
                       help="REST control-plane port (default 8766; 0 = any)")
    serve.add_argument("--backend", choices=BACKENDS, help="routing backend")
    serve.add_argument("--seed", type=_int, help="seed for peerIds and fault decisions")
    serve.add_argument("--events", metavar="FILE", help="write the event log (JSON lines)")
    serve.add_argument("--sim-token", help="require `Authorization: Bearer T` on /sim/v1")
    serve.add_argument("--redis-url", help="Redis for the redis backend "
                       "(default redis://127.0.0.1:6379/0)")
    serve.add_argument("--redis-prefix", help="namespace of every Redis key (default rtmsim)")
    serve.add_argument("--instances", type=_int, default=1,
                       help="run N instances on consecutive ports (needs --backend redis)")
    serve.add_argument("--instance-id", help="this instance's id (welcome.metadata, events)")
    cal = sub.add_parser("calibrate", help="measure the server's CPU per operation on this "
                         "machine and write a performance model (sim/virtual/model.py)")
    cal.add_argument("--out", help="model file (default results/model-<hostname>.toml)")
    cal.add_argument("--seconds", type=_float, default=3.0,
                     help="per step, of about 15 (default 3: about a minute)")
    cal.add_argument("--no-redis", action="store_true",
                     help="leave [model.redis] at the defaults (no redis-server started)")
    cal.add_argument("--no-load-generator", action="store_true",
                     help="skip the Locust swarms that measure [model.load_generator]")
    cal.add_argument("--json", action="store_true", help="print one JSON object")
    run = sub.add_parser("run", help="run a scenario end to end (server + swarm + analysis)")
    run.add_argument("scenario", help="scenario TOML file (see scenarios/)")
    run.add_argument("--out", help="run directory (default results/<name>-<timestamp>)")
    run.add_argument("--users", type=_int, help="override swarm.users")
    run.add_argument("--duration", type=_float, help="override swarm.duration_s (seconds)")
    run.add_argument("--workers", type=_int, help="override swarm.workers (Locust processes)")
    run.add_argument("--seed", type=_int, help="override server.seed")
    run.add_argument("--no-progress", action="store_true", help="no live progress lines")
    run.add_argument("--abort-on-fail", action="store_true",
                     help="stop early once a threshold on a server count can no longer pass")
    run.add_argument("--junit", metavar="PATH", help="JUnit XML of the thresholds "
                     "(default RUN_DIR/junit.xml)")
    run.add_argument("--metrics-port", type=_port, default=0, help="the swarm's Prometheus "
                     "/metrics port on 127.0.0.1 (default: a free one, printed)")
    simulate = sub.add_parser("simulate", help="run a scenario in virtual time (the server "
                              "core in a performance model; any number of users)")
    simulate.add_argument("scenario", help="scenario TOML file (see scenarios/)")
    simulate.add_argument("--out", help="run directory "
                          "(default results/<name>-virtual-<timestamp>)")
    simulate.add_argument("--users", type=_int, help="override swarm.users")
    simulate.add_argument("--duration", type=_float, help="override swarm.duration_s (seconds)")
    simulate.add_argument("--instances", type=_int, help="override server.instances")
    simulate.add_argument("--simulate-instances", type=_int, metavar="M",
                          help="run M of the instances in full, with their share of the "
                          "users, and take the others to do what these do (their Redis "
                          "traffic as copies of these instances'): a deployment of alike "
                          "instances at a fraction of the cost; counts are the M's")
    simulate.add_argument("--model", metavar="FILE", help="performance model (default: the "
                          "scenario's [model], else the shipped calibration)")
    simulate.add_argument("--seed", type=_int, help="override server.seed")
    simulate.add_argument("--no-deliveries", action="store_true", help="count deliveries and "
                          "keep their latency histogram, without a log row each")
    simulate.add_argument("--load-generator", nargs="?", const="locust", default=False,
                          choices=("locust", "raw"), help="model the Locust processes of "
                          "`rtmsim run` (swarm.workers, the model's [model.load_generator] "
                          "costs): predict what a real run here measures, not what clients "
                          "on their own devices see; `raw`: one process of the raw load "
                          "client ([model.raw_client]), as the benchmarks load a server")
    simulate.add_argument("--server-lead", type=_float, metavar="SECONDS",
                          help="how long the servers run before the swarm starts (billing "
                          "periods open then; default 0.7, a real run's run.json has its own "
                          "as server_lead_s)")
    simulate.add_argument("--no-progress", action="store_true", help="no live progress lines")
    simulate.add_argument("--junit", metavar="PATH", help="JUnit XML of the thresholds")
    plan = sub.add_parser("plan", help="capacity: the fewest instances that keep publish "
                          "p99 and errors under limits for a load, through the scenario's "
                          "storms (virtual time, the calibrated model)")
    from .plan.command import add_arguments  # noqa: PLC0415 (light: argparse only)

    add_arguments(plan)
    analyze = sub.add_parser("analyze", help="regenerate a run directory's summary.json, "
                             "charts and report.html")
    analyze.add_argument("run_dir", metavar="RUN_DIR",
                         help="a directory written by `rtmsim run`")
    analyze.add_argument("--junit", metavar="PATH", help="JUnit XML of the thresholds "
                         "(default RUN_DIR/junit.xml)")
    export = sub.add_parser("export", help="write a run directory's client event log in "
                            "another format (CSV: one file per Locust process)")
    export.add_argument("run_dir", metavar="RUN_DIR",
                        help="a directory written by `rtmsim run`")
    export.add_argument("--csv", action="store_true", required=True,
                        help="CSV in the pre-Parquet layout, client-events-<tag>.csv")
    export.add_argument("--out", help="output directory (default RUN_DIR/export; not RUN_DIR "
                        "itself, where the analysis would read every row twice)")
    compare = sub.add_parser("compare", help="compare runs: side-by-side table and overlay "
                             "charts (compare.html, compare.json, PNGs)")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                         help="two or more directories written by `rtmsim run` (one or "
                              "more with --baseline)")
    compare.add_argument("--out", help="output directory (default results/compare-<timestamp>)")
    compare.add_argument("--baseline", metavar="RUN_DIR", help="gate: exit 1 when a run's "
                         "headline numbers are worse than this run's beyond --tolerance")
    compare.add_argument("--tolerance", type=_fraction, default=0.1,
                         help="allowed relative worsening with --baseline, e.g. 10%% or "
                              "0.1 (default 10%%)")
    compare.add_argument("--junit", metavar="PATH", help="JUnit XML of the gate, one case "
                         "per run and metric (with --baseline)")
    clients = sub.add_parser("clients", help="run any client program under a scenario's "
                             "faults and grade its retry behaviour")
    clients.add_argument("scenario",
                         help="scenario TOML file (e.g. scenarios/client-faults.toml)")
    clients.add_argument("--cmd", help="the client command, run through the shell once per "
                         "client (default: [clients] command)")
    clients.add_argument("--count", type=_int, help="copies of the command (default: "
                         "[clients] count, or 5)")
    clients.add_argument("--duration", type=_float, help="seconds (default: [clients] "
                         "duration_s, or 60)")
    clients.add_argument("--out",
                         help="run directory (default results/clients-<name>-<timestamp>)")
    clients.add_argument("--seed", type=_int, help="override server.seed")
    clients.add_argument("--no-progress", action="store_true", help="no live progress lines")
    clients.add_argument("--junit", metavar="PATH", help="JUnit XML of the grade, one case "
                         "per rule (default RUN_DIR/junit.xml)")
    return parser


def _fraction(text: str) -> float:
    """A tolerance: "10%" or 0.1."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a fraction or percentage: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _check_overrides(args: argparse.Namespace, counts: tuple[str, ...]) -> None:
    """The command line's counts are >= 1 and --duration > 0 (one line otherwise)."""
    for name in counts:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.duration is not None and args.duration <= 0:
        raise CliError(f"--duration must be > 0, got {args.duration:g}")


def _empty_run_dir(args: argparse.Namespace, default: Path) -> Path:
    run_dir = Path(args.out) if args.out else default
    if run_dir.exists() and any(run_dir.iterdir()):
        raise CliError(f"{run_dir}: exists and is not empty; choose another --out")
    return run_dir


def _load_scenario(path: str) -> Scenario:
    """The scenario at `path`, its `[traffic]` checked too (only `rtmsim plan --period`
    reads it, but a bad one is bad input wherever the file is given)."""
    from .plan.traffic import check_scenario_traffic  # noqa: PLC0415 (start-up time)

    scenario = load_scenario(path)
    check_scenario_traffic(scenario)
    return scenario


def cmd_run(args: argparse.Namespace) -> int:
    _check_overrides(args, ("users", "workers"))
    scenario = _load_scenario(args.scenario).with_overrides(
        users=args.users, duration_s=args.duration, workers=args.workers, seed=args.seed)
    run_dir = _empty_run_dir(args, default_run_dir(scenario))
    status = Runner(scenario, run_dir, progress=not args.no_progress,
                    abort_on_fail=args.abort_on_fail, metrics_port=args.metrics_port).run()
    return finish_run(run_dir, status, args.junit)


def cmd_simulate(args: argparse.Namespace) -> int:
    """`rtmsim simulate`: the scenario in virtual time, then the same analysis."""
    from .virtual.mirror import MirrorError, mirrored  # noqa: PLC0415 (start-up time)
    from .virtual.model import scenario_model  # noqa: PLC0415
    from .virtual.run import VirtualRun  # noqa: PLC0415

    _check_overrides(args, ("users", "instances", "simulate_instances"))
    lead = args.server_lead
    if lead is not None and not 0 <= lead <= MAX_SERVER_LEAD_S:
        raise CliError(f"--server-lead: must be 0 to {MAX_SERVER_LEAD_S:g} seconds, "
                       f"got {lead:g}")
    scenario = _load_scenario(args.scenario).with_overrides(
        users=args.users, duration_s=args.duration, seed=args.seed,
        instances=args.instances)
    mirror = None
    if args.simulate_instances is not None:
        try:
            scenario, mirror = mirrored(scenario, args.simulate_instances)
        except MirrorError as e:
            raise CliError(str(e)) from None
    model = scenario_model(scenario.config.extra.get("model"), scenario.path, args.model)
    if args.load_generator:
        table = "load_generator" if args.load_generator == "locust" else "raw_client"
        costs = getattr(model, table)
        if not (costs.send_us or costs.receive_us or costs.delivery_us):
            # modelled at no cost, the flag would change nothing and say it did
            raise CliError(f"--load-generator {args.load_generator}: the model "
                           f"({model.name}) has no [model.{table}] costs; calibrate them "
                           "(rtmsim calibrate, without --no-load-generator) or drop the flag")
    run_dir = _empty_run_dir(args, default_run_dir(scenario, virtual=True))
    log_deliveries = not args.no_deliveries
    if log_deliveries and mirror is not None and mirror.factor > 1:
        log_deliveries = False  # a row per copy would read as the same message delivered again
        print("rtmsim: mirrored instances: deliveries are counted, not logged a row each "
              "(--no-deliveries)")
    status = VirtualRun(scenario, run_dir, model, progress=not args.no_progress,
                        log_deliveries=log_deliveries,
                        load_generator=args.load_generator, server_lead_s=lead,
                        mirror=mirror).run()
    return finish_run(run_dir, status, args.junit)


def finish_run(run_dir: Path, status: str, junit: str | None = None) -> int:
    """Analyse the run directory, print where everything went; the exit code.

    0 when every threshold passed, 1 when one failed (or stopped the run early),
    130 when the run was interrupted.
    """
    from .report import build_all, gate_thresholds, print_summary  # noqa: PLC0415 (start-up time)

    summary = build_all(run_dir)
    print_summary(summary, run_dir)
    code = gate_thresholds(summary, run_dir, junit)
    if status == "interrupted":
        print(f"rtmsim: the run was interrupted; results so far are in {run_dir}")
        return 130
    if status == "aborted":
        print(f"rtmsim: the run stopped early on a failed threshold; results so far are in "
              f"{run_dir}")
        return 1
    return code


def serve_config(args: argparse.Namespace) -> Config:
    """The config file (or the demo) with command-line flags laid over [server]."""
    config = load_config(args.config) if args.config else default_config()
    overrides = {name: value for name, value in (
        ("host", args.host), ("port", args.port), ("admin_port", args.admin_port),
        ("backend", args.backend), ("seed", args.seed), ("sim_token", args.sim_token),
        ("redis_url", args.redis_url), ("redis_prefix", args.redis_prefix),
        ("instance_id", args.instance_id),
    ) if value is not None}
    if overrides:
        config = dataclasses.replace(config,
                                     server=dataclasses.replace(config.server, **overrides))
    if args.redis_url is not None and not args.redis_url.startswith(
            ("redis://", "rediss://", "unix://")):
        raise CliError(f"--redis-url must start with redis://, rediss:// or unix://, "
                       f"got {args.redis_url!r}")
    if args.instances < 1:
        raise CliError(f"--instances must be >= 1, got {args.instances}")
    if args.instances > 1 and config.server.backend != "redis":
        raise CliError(f"--instances {args.instances} needs the Redis backend (instances "
                       "share state through Redis): add --backend redis [--redis-url URL]")
    if args.instances > 1 and args.instance_id:
        raise CliError("--instance-id names one instance; with --instances they are "
                       "named i0, i1, ...")
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    from server.app import ServeOptions, run  # noqa: PLC0415 (start-up time)

    config = serve_config(args)
    if args.instances > 1:
        from server.instances import run_instances  # noqa: PLC0415 (start-up time)

        return run_instances(args, config)
    return run(config, ServeOptions(events_path=args.events))


def cmd_export(args: argparse.Namespace) -> int:
    """`rtmsim export RUN_DIR --csv`: each process's Parquet batches as one CSV file."""
    from loadtests.eventlog import export_csv  # noqa: PLC0415 (start-up time: pyarrow)

    run_dir = Path(args.run_dir)
    if not rundir.is_run_dir(run_dir):
        raise CliError(f"{run_dir}: not a run directory (no {rundir.RUN}); pass a directory "
                       "written by `rtmsim run`")
    logs = sorted({p.parent for p in run_dir.glob(rundir.CLIENT_EVENTS_GLOB)})
    if not logs:
        raise CliError(f"{run_dir}: no Parquet client event log ({rundir.CLIENT_EVENTS_GLOB})"
                       " to export; a run directory from before it already holds CSV")
    out = Path(args.out) if args.out else run_dir / rundir.EXPORT_DIR
    if out.resolve() == run_dir.resolve():
        raise CliError(f"--out {out}: not the run directory itself (its analysis would read "
                       "every row twice); pick another directory")
    out.mkdir(parents=True, exist_ok=True)
    for log in logs:
        dest = out / f"{log.name}.csv"
        print(f"rtmsim: {log.name}/ -> {dest} ...", flush=True)
        n = export_csv(log, dest)
        print(f"rtmsim: wrote {n:,} rows to {dest}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "calibrate":
            from .calibrate.command import cmd_calibrate  # noqa: PLC0415 (start-up time)

            return cmd_calibrate(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "simulate":
            return cmd_simulate(args)
        if args.command == "plan":
            from .plan.command import cmd_plan  # noqa: PLC0415 (start-up time)

            return cmd_plan(args)
        if args.command == "analyze":
            from .report.compare import cmd_analyze  # noqa: PLC0415 (start-up time)

            return cmd_analyze(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "compare":
            from .report.compare import cmd_compare  # noqa: PLC0415 (start-up time)

            return cmd_compare(args)
        if args.command == "clients":
            from .clients.runner import run_clients  # noqa: PLC0415 (start-up time)

            return run_clients(args.scenario, command=args.cmd, count=args.count,
                               duration_s=args.duration, out_dir=args.out, seed=args.seed,
                               progress=not args.no_progress, junit=args.junit)
    except (ConfigError, CliError, RunError) as exc:
        if args.debug:
            raise
        print(f"rtmsim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
