"""The relay's per-caller allowances: the token buckets it shares with the node."""

from __future__ import annotations

from node.core.rate_limit import TokenBuckets

__all__ = ["TokenBuckets"]
