"""The relay's token buckets and Retry tokens as pure logic, on a clock the test moves."""

from __future__ import annotations

import pytest

from node.transport.retry import RetryTokens
from relay.limits import TokenBuckets


def test_a_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3)
    assert [buckets.take("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.take("b", 0.0)  # each key has its own
    assert not buckets.take("a", 0.4)  # 0.8 tokens
    assert buckets.take("a", 0.5)
    assert not buckets.take("a", 10.0, n=4)  # never more than the burst
    assert buckets.take("a", 10.0, n=3)


def test_a_refused_take_spends_nothing() -> None:
    buckets = TokenBuckets(rate=1.0, burst=5)
    assert not buckets.take("a", 0.0, n=6)
    assert buckets.available("a", 0.0) == 5


def test_bucket_memory_is_bounded_and_full_buckets_go_first() -> None:
    buckets = TokenBuckets(rate=1.0, burst=2, max_keys=100)
    assert buckets.take("busy", 0.0, n=2)
    for n in range(1000):
        buckets.take(n, 0.0)
        assert len(buckets) <= 100
    # The drained key survived while others came and went, unless it was the oldest.
    assert buckets.available("busy", 0.0) in (0, 2)


def test_bad_bucket_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        TokenBuckets(rate=0, burst=1)


def test_retry_tokens_bind_address_connection_id_and_age() -> None:
    tokens = RetryTokens(b"k" * 32, lifetime=10.0)
    token = tokens.issue(("127.0.0.1", 5000), b"odcid123", b"retrycid", now=100.0)
    assert tokens.check(("127.0.0.1", 5000), b"retrycid", token, now=105.0) == b"odcid123"
    assert tokens.check(("127.0.0.1", 5001), b"retrycid", token, now=105.0) is None
    assert tokens.check(("127.0.0.2", 5000), b"retrycid", token, now=105.0) is None
    assert tokens.check(("127.0.0.1", 5000), b"othercid", token, now=105.0) is None
    assert tokens.check(("127.0.0.1", 5000), b"retrycid", token, now=110.5) is None
    assert tokens.check(("127.0.0.1", 5000), b"retrycid", token, now=99.0) is None
    forged = token[:-1] + bytes([token[-1] ^ 1])
    assert tokens.check(("127.0.0.1", 5000), b"retrycid", forged, now=105.0) is None
    other_secret = RetryTokens(b"j" * 32)
    assert other_secret.check(("127.0.0.1", 5000), b"retrycid", token, now=105.0) is None
    assert tokens.check(("::1", 5000), b"retrycid", b"short", now=105.0) is None
