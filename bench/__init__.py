"""Benchmarks of `rtmsim serve` against a bare `websockets` broadcast server.

Not tests: they print numbers and assert nothing (`python -m bench --help`).

- `__main__`: the command line; one JSON object on stdout with `--json`.
- `benchmarks`: what each benchmark runs, where, and what it reports.
- `procs`: child processes (servers, load clients), /proc readings, the bench config.
- `load`: the load-generator processes (`python -m bench.load`).
- `loadtests.rawws`: the minimal WebSocket client they use, cheap enough per frame
  that the server, not the client, is the bottleneck on a 2-core machine (it lives in
  `loadtests` so that `rtmsim calibrate`, in `sim`, drives the server with it too).
- `bare_server`: the baseline server (`python -m bench.bare_server`).
- `calibratecheck`: `rtmsim calibrate`'s costs against `fanout` and `reqack` at
  saturation (`python -m bench calibrate-check`).
"""
