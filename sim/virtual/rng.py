"""A random source of 56 bytes for a million virtual users.

`random.Random` carries the Mersenne Twister's 2.5 KB of state: at a million users
that is 2.9 GB before anything else. A virtual user draws a few numbers per
reconnect, so a small generator (splitmix64: one 64-bit integer of state, a good
statistical quality for this use) is enough; the distributions (`uniform`,
`randrange`, `sample`, `choice`, ...) are `random.Random`'s own methods, borrowed.
Seeded from a string as `random.Random(str)` is, it is as reproducible.
"""

from __future__ import annotations

import hashlib
from random import Random

MASK = (1 << 64) - 1


class SmallRandom:
    """The part of `random.Random` the behaviours and retry policies use."""

    __slots__ = ("_state",)

    def __init__(self, seed: str) -> None:
        self._state = int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=8).digest(),
                                     "little")

    def _next64(self) -> int:
        self._state = z = (self._state + 0x9E3779B97F4A7C15) & MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def random(self) -> float:
        """A float in [0, 1) from the top 53 bits."""
        return (self._next64() >> 11) * (1.0 / (1 << 53))

    def getrandbits(self, k: int) -> int:
        out, bits = 0, 0
        while bits < k:
            out |= self._next64() << bits
            bits += 64
        return out & ((1 << k) - 1)

    _randbelow = Random._randbelow_with_getrandbits
    randrange = Random.randrange
    randint = Random.randint
    uniform = Random.uniform
    choice = Random.choice
    choices = Random.choices
    sample = Random.sample
    shuffle = Random.shuffle
    expovariate = Random.expovariate
    gauss = Random.normalvariate
    lognormvariate = Random.lognormvariate
    normalvariate = Random.normalvariate
