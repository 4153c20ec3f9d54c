"""`python -m sim.virtual.scale --clients N`: the engine's scale benchmark, one run.

A deploy storm of N clients (`scenarios/deploy-million.toml` with its users set to N
and one instance per 50,000 clients): subscribers and publishers with the default
policy, a rolling deploy, 10 virtual minutes. Deliveries are counted and kept as a
latency histogram, not logged a row each (`--no-deliveries`). Prints one JSON object:
wall and CPU time, events run, events/s, peak RSS, and what the run did (connects,
closes by code, deliveries). `python -m bench simulate --clients N` runs this in a child, so its
peak RSS is the run's alone. `--simulate-instances M` runs M of the instances in full and
mirrors the others (`mirror`); the counts it prints are then the deployment's.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import io
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from sim.scenario import load_scenario

from .engine import LATENCY_BOUNDS_MS
from .mirror import MirrorError, mirrored
from .model import load_model
from .run import VirtualRun

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "scenarios" / "deploy-million.toml"
PER_INSTANCE = 50_000


def scale_run(clients: int, duration_s: float, queue: str, out_dir: Path,
              simulate: int | None = None) -> dict[str, Any]:
    """One run; `simulate`: that many of the instances in full, the rest mirrored
    (`mirror`), whose figures are given for the whole deployment (x the factor)."""
    instances = max(1, -(-clients // PER_INSTANCE))
    scenario = load_scenario(SCENARIO).with_overrides(users=clients, duration_s=duration_s,
                                                      instances=instances)
    mirror = None
    if simulate is not None:
        scenario, mirror = mirrored(scenario, simulate)
    f = 1 if mirror is None else mirror.factor
    log = io.StringIO()
    run = VirtualRun(scenario, out_dir, load_model(), out=log, log_deliveries=False,
                     queue=queue, mirror=mirror)
    started, cpu = time.perf_counter(), time.process_time()
    status = run.run()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stats = json.loads((out_dir / "server-stats.json").read_text())
    closes: collections.Counter[str] = collections.Counter()
    connects = 0
    for s in stats.values():
        closes.update(s["totals"]["closes"])
        connects += s["totals"]["connections"]["total"]
    events = run.engine.events_run
    storm = deploy_report(out_dir, run.origin, scenario.swarm.users, f)
    cpu_s = [i.cpu_s() for i in run.engine.instances]
    return {"clients": clients, "instances": instances, "virtual_s": duration_s,
            "queue": queue, "status": status,
            "simulated_instances": instances if mirror is None else mirror.simulated,
            "simulated_clients": scenario.swarm.users, "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1),  # the machine is shared: wall alone can mislead
            "events": events, "events_per_s": round(events / wall),
            "peak_rss_mb": round(peak_kb / 1024), "connects": connects * f,
            "closes": {k: v * f for k, v in sorted(closes.items())},
            "deliveries": run.engine.deliveries * f,
            "delivery_ms": hist_percentiles(run.engine.latency_hist, (50, 99, 99.9)),
            "delivery_share_over_ms": hist_shares(run.engine.latency_hist, (10, 100, 1000)),
            "instance_cpu_s_mean": round(sum(cpu_s) / len(cpu_s), 1),
            "busiest_instance_cpu_s": round(max(cpu_s), 1), **storm}


def hist_shares(counts: Any, over_ms: tuple[float, ...]) -> dict[str, float]:
    """The share of deliveries slower than each bound (ms; each a bin's bound): where
    a tail is steep its percentiles jump between runs that differ little, its shares
    do not."""
    total = max(1, int(counts.sum()))
    bounds = LATENCY_BOUNDS_MS.tolist()
    return {f"{ms:g}": round(int(counts[bisect.bisect_left(bounds, ms) + 1:].sum()) / total, 6)
            for ms in over_ms}


def hist_percentiles(counts: Any, percentiles: tuple[float, ...]) -> dict[str, float]:
    """Each percentile of the delivery histogram as its bin's upper bound (ms; the
    bins are 12% wide)."""
    cum = counts.cumsum()
    tops = [*LATENCY_BOUNDS_MS.tolist(), float("inf")]
    return {f"p{p:g}": tops[int(cum.searchsorted(p / 100 * cum[-1]))] for p in percentiles}


def deploy_report(run_dir: Path, load_start: float, clients: int, factor: int = 1
                  ) -> dict[str, Any]:
    """What a rolling deploy did: the reconnect peak per second, the 4010s, and how
    long after the last wave every client was connected again (server timeline).
    `clients`: the run's; `factor`: the instances each simulated one stands for
    (`mirror`), which the counts are multiplied by."""
    per_second: collections.Counter[int] = collections.Counter()
    over_cap = 0
    for path in sorted(run_dir.glob("client-events-*/*.parquet")):
        table = pq.read_table(path, columns=["t", "op", "outcome"]).to_pydict()
        for t, op, outcome in zip(table["t"], table["op"], table["outcome"], strict=True):
            if op == "connect":
                if outcome == "close 4010":
                    over_cap += 1
                if t - load_start > 60:  # past the initial ramp: reconnects
                    per_second[int(t - load_start)] += 1
    waves = [f["start_s"] for f in json.loads((run_dir / "run.json").read_text())["faults"]
             if f.get("kind") == "deploy"]
    recovered = None
    connected: dict[float, int] = {}
    if waves:
        last = max(waves)
        for line in (run_dir / "server-timeline.jsonl").read_text().splitlines():
            sample = json.loads(line)
            if sample["t"] - load_start <= last + 0.5:
                continue
            now = sample["stats"]["totals"]["connections"]["now"]
            connected[sample["t"]] = connected.get(sample["t"], 0) + now
        full = [t for t, n in sorted(connected.items()) if n >= clients]
        if full:
            recovered = round(full[0] - load_start - last, 1)
    peak_s, peak = per_second.most_common(1)[0] if per_second else (None, 0)
    return {"reconnect_peak_per_s": peak * factor, "reconnect_peak_at_s": peak_s,
            "connects_over_cap_4010": over_cap * factor, "last_wave_s": max(waves, default=None),
            "recovered_s_after_last_wave": recovered}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.virtual.scale")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--keep", type=Path, help="keep the run directory here")
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--queue", choices=("heap", "simpy"), default="heap")
    parser.add_argument("--simulate-instances", type=int, metavar="M",
                        help="M of the instances in full, the others mirrored")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        print("--clients must be >= 1 and --duration > 0", file=sys.stderr)
        return 2
    run = (args.clients, args.duration, args.queue)
    try:
        if args.keep is not None:
            result = scale_run(*run, args.keep, args.simulate_instances)
        else:
            with tempfile.TemporaryDirectory(prefix="rtmsim-scale-") as tmp:
                result = scale_run(*run, Path(tmp) / "run", args.simulate_instances)
    except MirrorError as e:
        print(e, file=sys.stderr)
        return 2
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Freeing a million clients' objects at exit took 50 s more (measured from the
    # result printed to the process gone), which `bench simulate` waited for: the
    # run is over and its result printed, so the process ends without it.
    os._exit(code)
