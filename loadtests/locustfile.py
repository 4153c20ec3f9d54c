"""The provided locustfile: every rtmsim user class, against any running server.

    locust -f loadtests/locustfile.py --host ws://127.0.0.1:8765
    locust -f loadtests/locustfile.py --host ws://127.0.0.1:8765 --headless -u 100 -r 20 \\
        --run-time 1m --rtmsim-key pk_live_demo --rtmsim-run-dir results/mine Publisher Subscriber

The credential defaults to the demo key; `--rtmsim-key` or RTMSIM_KEY overrides it.
`--rtmsim-config FILE` (JSON written by `rtmsim run`) sets per-class parameters, the
retry policy per class and the load shape (RTMSIM_SHAPE=step_ramp|spike|soak).
"""

from __future__ import annotations

import json
import os

from loadtests.users import (  # noqa: F401  (Locust collects the User classes)
    Chatter,
    Churner,
    DirectSender,
    Misbehaving,
    Publisher,
    QuotaBurner,
    RateAbuser,
    Subscriber,
)


def _variants() -> None:
    """Scenario classes like `[swarm.classes.FastRetry] class = "Publisher"` become
    subclasses here, so Locust can run several variants of one behaviour."""
    path = os.environ.get("RTMSIM_SWARM_CONFIG")
    if not path:
        return
    with open(path, encoding="utf-8") as f:
        classes = json.load(f).get("classes", {})
    for name, params in classes.items():
        base = params.get("class")
        if base and base != name and name not in globals():
            globals()[name] = type(name, (globals()[base],), {"__module__": __name__})


_variants()

if os.environ.get("RTMSIM_SHAPE"):
    from loadtests.shapes import SHAPES

    Shape = SHAPES[os.environ["RTMSIM_SHAPE"]]
