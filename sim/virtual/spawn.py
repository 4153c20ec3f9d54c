"""Which user class each spawned user is, in the order Locust spawns them.

Locust's dispatcher (`locust.dispatch.UsersDispatcher`) spawns every `fixed_count`
user first and then draws the weighted classes, both with its Kullback-Leibler
generator over the classes sorted by name; this is that generator, so a virtual run
has the real run's class counts. (Locust cannot be imported here: it monkey-patches
its process with gevent.)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from heapq import heapify, heapreplace
from math import log2

from loadtests.swarmconfig import instance_of


def kl_generator(users: Iterable[tuple[str, float]]) -> Iterator[str]:
    """Locust's `_kl_generator`: weights 5 and 1 give AAABAAAAABAA."""
    heap = [(x * log2(x / (x + 1.0)), x + 1.0, x, name) for name, x in users if x > 0]
    if not heap:
        return
    heapify(heap)
    while True:
        _, x, weight, name = heap[0]
        yield name
        heapreplace(heap, (weight * log2(x / (x + 1.0)), x + 1.0, weight, name))


def class_order(classes: dict[str, tuple[int | None, int | None]]) -> Iterator[str]:
    """Class names in spawn order; `classes` maps name -> (weight, fixed_count)."""
    names = sorted(classes)
    fixed = [(n, classes[n][1]) for n in names if classes[n][1]]
    yield from itertools.islice(kl_generator(fixed), sum(k for _, k in fixed))  # type: ignore[arg-type]
    yield from kl_generator((n, classes[n][0] if classes[n][0] is not None else 1)
                            for n in names if not classes[n][1])


# Even: each class's users on every instance within this share of their mean, or two
# users (Locust's class order drifts: a class of weight 1 in 1,001 lands 48-51 times
# on each of 20 instances out of a million users).
EVEN_SHARE = 0.05
EVEN_USERS = 2


def uneven(users: int, classes: dict[str, tuple[int | None, int | None]],
           instances: int) -> str | None:
    """How `users` users of `classes` (name -> (weight, fixed_count)), given to
    `instances` instances as `instance_of` gives them, fall unevenly; None when every
    class is even on every instance. In turn, in class order: a class whose period is
    a multiple of the instance count lands on one instance."""
    counts: dict[str, list[int]] = {}
    for index, name in zip(range(1, users + 1), class_order(classes), strict=False):
        per = counts.get(name)
        if per is None:
            per = counts[name] = [0] * instances
        per[instance_of(index, instances)] += 1
    for name, per in sorted(counts.items()):
        mean = sum(per) / instances
        if max(abs(k - mean) for k in per) > max(EVEN_USERS, EVEN_SHARE * mean):
            return (f"of {users:,} users on {instances} instances, instance "
                    f"{per.index(max(per))} holds {max(per):,} {name} users, another "
                    f"{min(per):,}")
    return None
