"""The Locust driver of the behaviours (`loadtests.users`): what it does with each intent.

Run in a subprocess: importing Locust monkey-patches the importing process with gevent.
The script swaps the driver's clock and sleep for fake ones, so every wait is exact.
"""

from __future__ import annotations

import json
import subprocess
import sys

from serverproc import ROOT

SCRIPT = r'''
import json
from types import SimpleNamespace

from locust.env import Environment
from locust.exception import StopUser

from loadtests import behaviours, catalog, users
from loadtests.intents import Disconnect, GiveUp, Idle, Renew
from loadtests.swarmconfig import OPTIONS

out = {}
out["classes"] = {name: [getattr(users, name).behaviour_type.__name__,
                         getattr(users, name).params_type.__name__,
                         getattr(users, name).__doc__ == cls.__doc__]
                  for name, cls in behaviours.BEHAVIOURS.items()}
out["catalog"] = {name: p.__name__ for name, p in catalog.USER_CLASSES.items()}

opts = SimpleNamespace(host="ws://127.0.0.1:1", **{o.dest: None for o in OPTIONS})
opts.rtmsim_key = "pk_test"
env = Environment(user_classes=[users.Subscriber], parsed_options=opts,
                  host="ws://127.0.0.1:1")
user = users.Subscriber(env)
out["policy"] = user.reporter.policy

clock = [1000.0]
sleeps = []
close_at = [1003.2]

def sleep(seconds):
    sleeps.append(round(seconds, 6))
    clock[0] += seconds
    if clock[0] >= close_at[0]:
        user.client.state.closed(1006)

users.gevent = SimpleNamespace(sleep=sleep)
users.time = SimpleNamespace(time=lambda: clock[0])

user.client.state.opened()
user._idle(Idle(1000.5, 1.0))
out["idle"] = {"sleeps": list(sleeps), "returned_at": round(clock[0], 6)}

sleeps.clear()
user.client.state.connecting()
user.client.state.opened()
close_at[0] = float("inf")
user._state = "stopping"  # Locust's graceful stop: honoured at the next wake
try:
    user._idle(Idle(clock[0] + 0.25, 1.0))
    out["stopped"] = False
except StopUser:
    out["stopped"] = True
out["stop_sleeps"] = list(sleeps)

renewed = []
for intent in (Renew("tok-1"), Renew(), Renew(None, keep_credential=False)):
    user._renew(intent)
    renewed.append([user.client.token, user.client.key])
out["renewed"] = renewed

user._disconnect(Disconnect(2.0))  # never connected: nothing to drain or close
notes = []
user.reporter.note = lambda op, outcome, **kw: notes.append([op, outcome])
try:
    user._drive(intent for intent in [GiveUp("close 4001")])
    out["gave_up"] = False
except StopUser:
    out["gave_up"] = True
out["notes"] = notes
out["user_stopped"] = user.stopped
print(json.dumps(out))
'''


def run_script() -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_locust_driver():
    out = run_script()
    # One Locust class per behaviour, with its parameter set and its docstring.
    assert out["classes"] == {name: [name, params, True]
                              for name, params in out["catalog"].items()}
    assert out["policy"] == "default"
    # Idle: sleep to each wake and check; the close at 1003.2 is noticed at 1003.5.
    assert out["idle"] == {"sleeps": [0.5, 1.0, 1.0, 1.0], "returned_at": 1003.5}
    # A graceful stop is honoured at the first wake, as between tasks.
    assert out["stopped"] is True and out["stop_sleeps"] == [0.25]
    # Renew: the token given; else the old credential; else (keep_credential=False) the key.
    assert out["renewed"] == [["tok-1", None], ["tok-1", None], [None, "pk_test"]]
    # GiveUp: logged as give_up with its reason, and the user stops.
    assert out["gave_up"] is True and out["notes"] == [["give_up", "close 4001"]]
    assert out["user_stopped"] is True
