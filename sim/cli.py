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
    def error(self, message: str) -> None:  # one line, exit 2
        self.exit(2, f"{self.prog}: {message}\n")


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
    return parser


def serve_config(args: argparse.Namespace) -> Config:
    """The config file (or the demo) with command-line flags laid over [server]."""
    config = load_config(args.config) if args.config else default_config()
    overrides = {name: value for name, value in (
        ("host", args.host), ("port", args.port), ("admin_port", args.admin_port),
        ("backend", args.backend), ("seed", args.seed), ("sim_token", args.sim_token),
    ) if value is not None}
    if overrides:
        config = dataclasses.replace(config,
                                     server=dataclasses.replace(config.server, **overrides))
    if config.server.backend != "memory":
        raise CliError(f"backend {config.server.backend!r} is not available yet; "
                       "use --backend memory")
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    from server.app import ServeOptions, run

    config = serve_config(args)
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
