"""Token-bucket rate limiting, pure and clock-driven so tests need no sleeping.

Buckets live in memory per process and are bounded: the least recently touched keys are
dropped past ``max_keys`` (a dropped key simply starts with a full bucket again). With several
processes behind one address each enforces its own share; that is stated in the docs.
"""

from __future__ import annotations

import math
from collections import OrderedDict


class RateLimiter:
    def __init__(self, per_minute: int, *, max_keys: int = 100_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, t)

    def hit(self, key: str, now: float) -> int | None:
        """Take one token for ``key``. None when allowed, else seconds to wait (>= 1)."""
        tokens, last = self._buckets.pop(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._store(key, tokens - 1.0, now)
            return None
        self._store(key, tokens, now)
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


class AuthRateLimits:
    """The contract's rule: N per minute per client address, N/5 (at least 1) per key and address.

    The per-key budget is kept per (key, address): public keys are public, so a bucket shared
    by every address would let anyone who spends a victim's key budget from their own address
    lock the victim out of logging in. Counted per pair, a third party only ever spends their
    own allowance; the victim's calls from its own address draw on a bucket nobody else can
    touch. (Guessing a key's signature is not the threat a per-key limit could stop: Ed25519
    signatures are not brute-forced, so a global per-key bucket bought nothing but this hole.)
    """

    def __init__(self, per_minute: int) -> None:
        self.by_address = RateLimiter(per_minute)
        self.by_key = RateLimiter(max(1, per_minute // 5))

    def check(self, address: str, public_key: str | None, now: float) -> int | None:
        wait = self.by_address.hit(address, now)
        if wait is None and public_key is not None:
            # Checked before the body's schema, so the key may be anything: a real one is at
            # most 64 characters, and capping it keeps a bucket's name small. An address has no
            # NUL, so splitting at the last NUL gives the pair back: pairs cannot collide.
            wait = self.by_key.hit(f"{public_key[:64]}\x00{address}", now)
        return wait
