"""`rtmsim calibrate`: the server's CPU per operation on this machine, as a model file.

- `command`: the command; measures, fits, writes `results/model-<host>.toml`.
- `steps`: what each step does to the server, and what it counts.
- `clients`: the closed-loop sockets that do it (on `loadtests.rawws`).
- `servers`: the child processes (server, redis-server, instances) and their CPU time.
- `fit`: least squares from steps to costs, the lognormal of the latencies, and what
  the costs alone predict for the benchmarks' saturation throughput.
"""
