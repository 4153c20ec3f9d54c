"""The provided locustfile: every rtmsim user class, against any running server.

    locust -f loadtests/locustfile.py --host ws://127.0.0.1:8765
    locust -f loadtests/locustfile.py --host ws://127.0.0.1:8765 --headless -u 100 -r 20 \\
        --run-time 1m --rtmsim-key pk_live_demo --rtmsim-run-dir results/mine Publisher Subscriber

The credential defaults to the demo key; `--rtmsim-key` or RTMSIM_KEY overrides it.
`--rtmsim-config FILE` (JSON written by `rtmsim run`) sets per-class parameters, the
retry policy per class and the load shape (RTMSIM_SHAPE=step_ramp|spike|soak).
"""

from __future__ import annotations

from loadtests.shapes import SHAPES
from loadtests.swarmconfig import locustfile_shape, locustfile_variants
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
    for name, base in locustfile_variants().items():
        if name not in globals():
            globals()[name] = type(name, (globals()[base],), {"__module__": __name__})


_variants()

_shape = locustfile_shape()
if _shape:
    Shape = SHAPES[_shape]
