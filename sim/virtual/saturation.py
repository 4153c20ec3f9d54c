"""The engine's prediction of the `fanout` and `reqack` benchmarks' saturated rates.

The same configurations `python -m bench fanout` and `reqack` run against a server
pinned to one core (`bench/load.py`): 50 subscribers on one channel and 4 publishers
awaiting each ack; 8 connections publishing to a channel nobody subscribes to, a
publish and its ack at a time. Here they are Subscriber and Publisher behaviours in a
closed loop against one virtual instance, so the prediction is the model's costs
and queue, not a formula. `python -m sim.virtual.saturation` prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from server.schema import ConfigError
from sim.scenario import parse_scenario

from .model import Model, load_model
from .run import VirtualRun

CONFIGS = {
    "fanout": {"subscribers": 50, "publishers": 4, "channel": "bench/fanout"},
    "reqack": {"subscribers": 0, "publishers": 8, "channel": "bench/reqack"},
}
SCENARIO = """
[server]
seed = 1
[limits]
rate_per_second = 1000000.0
burst = 1000000.0
[swarm]
users = {users}
spawn_rate = 10000
duration_s = {seconds}
[swarm.classes.Publisher]
fixed_count = {publishers}
rate = 1000000.0
channels = ["{channel}"]
payload_bytes = 64
policy = "none"
"""
SUBSCRIBERS = """
[swarm.classes.Subscriber]
fixed_count = {subscribers}
channels = ["{channel}"]
subscriptions = 1
wildcard_fraction = 0.0
rate = 0.01
"""


def predict(name: str, model: Model, seconds: float = 10.0, warmup: float = 2.0
            ) -> dict[str, Any]:
    """The engine's steady-state rate for config `name`: delivered/s or round trips/s."""
    c = CONFIGS[name]
    text = SCENARIO.format(users=c["subscribers"] + c["publishers"], seconds=seconds, **c)
    if c["subscribers"]:
        text += SUBSCRIBERS.format(**c)
    scenario = parse_scenario(tomllib.loads(text), text, default_name=f"saturation-{name}")
    with tempfile.TemporaryDirectory(prefix="rtmsim-saturation-") as tmp:
        run = VirtualRun(scenario, Path(tmp) / "run", model, out=io.StringIO(),
                         progress=False, log_deliveries=False)
        run.run()
        lines = (Path(tmp) / "run" / "server-timeline.jsonl").read_text().splitlines()
    samples = [json.loads(line) for line in lines]
    start = run.origin + warmup
    end = run.origin + seconds
    window = [s for s in samples if start <= s["t"] <= end]
    key = "delivered" if name == "fanout" else "published"
    first, last = window[0], window[-1]
    count = last["stats"]["totals"]["messages"][key] - first["stats"]["totals"]["messages"][key]
    cpu = last["stats"]["process"]["cpu_s"] - first["stats"]["process"]["cpu_s"]
    span = last["t"] - first["t"]
    return {"config": name, "predicted_per_s": round(count / span), "core_busy": round(
        cpu / span, 3), "unit": "delivered/s" if name == "fanout" else "round trips/s"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.virtual.saturation")
    parser.add_argument("--model", help="model file (default: the shipped calibration)")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.seconds <= 3.0:
        print("--seconds must be > 3 (the first 2 s are warm-up)", file=sys.stderr)
        return 2
    try:
        model = load_model(args.model)
    except ConfigError as exc:
        print(f"saturation: {exc}", file=sys.stderr)
        return 2
    json.dump({"model": model.name, "results": [predict(n, model, args.seconds)
                                                for n in CONFIGS]}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
