"""The server config every throughput measurement runs (`python -m bench`,
`rtmsim calibrate`), defined once below both.

Limits high enough that the token bucket and the message quota never trip, while their
code still runs on every frame; the demo app's keys, as in the default config.
"""

PUBLISHABLE_KEY = "pk_live_demo"
SECRET_KEY_ID = "sk_id_demo"
SECRET = "sk_secret_demo"

BENCH_CONFIG = f"""\
# rtmsim config for benchmarks and calibration: every check runs, none trips.
[limits]
rate_per_second = 1000000000.0
burst = 1000000000.0

[[apps]]
id = "app_demo"

[apps.plan]
name = "bench"
max_concurrent_connections = 1000000
max_messages_per_period = 1000000000000000

[[apps.keys]]
id = "{PUBLISHABLE_KEY}"
channel_patterns = ["**"]
actions = ["subscribe", "publish", "presence", "send"]

[[apps.keys]]
id = "{SECRET_KEY_ID}"
secret = "{SECRET}"
"""
