"""`rtmsim`: the command line of the harness.

Bad input gets one line naming the problem and exit code 2, never a traceback
(`--debug` shows it).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from server.config import BACKENDS, Config, ConfigError, default_config, load_config


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
    return parser


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
    from server.app import ServeOptions, run

    config = serve_config(args)
    if args.instances > 1:
        from server.instances import run_instances

        return run_instances(args, config)
    return run(config, ServeOptions(events_path=args.events))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return cmd_serve(args)
    except (ConfigError, CliError) as exc:
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
