"""Per-caller allowances: token buckets keyed by caller, by (caller, mailbox), … (the relay's
and the node's).

Pure logic: every method takes ``now`` (seconds on the runtime's monotonic clock), so the
simulator and unit tests drive it without a loop. Memory is bounded: past ``max_keys`` entries
the buckets that have refilled completely (indistinguishable from new ones) are dropped, and if
that is not enough the least recently used go.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    """One token bucket per key: ``burst`` tokens at most, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: dict[Hashable, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def available(self, key: Hashable, now: float) -> float:
        """Tokens ``key`` could spend at ``now``."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return self.burst
        return min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)

    def take(self, key: Hashable, now: float, n: float = 1) -> bool:
        """Spend ``n`` tokens of ``key`` if it has them; False (and nothing spent) if not."""
        tokens = self.available(key, now)
        if tokens < n:
            return False
        self._buckets.pop(key, None)  # re-inserted last: the dict's order is recency
        self._buckets[key] = _Bucket(tokens - n, now)
        if len(self._buckets) > self._max_keys:
            self._shrink(now)
        return True

    def give_back(self, key: Hashable, now: float, n: float = 1) -> None:
        """Return ``n`` tokens spent earlier (never past ``burst``): a charge that turned out
        not to be owed, such as a login attempt that succeeded."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self.burst, self.available(key, now) + n)
            bucket.at = now

    def _shrink(self, now: float) -> None:
        rate, burst = self.rate, self.burst
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.at) * rate >= burst]
        for key in full:
            del self._buckets[key]
        # Down to 90%, so the next scan is many insertions away.
        while len(self._buckets) > self._max_keys * 9 // 10:
            del self._buckets[next(iter(self._buckets))]
