"""The relay's SQLite mailbox store on a real file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from node.core import wire
from relay.failure_notices import Telling
from relay.store import MailboxFullError, MailboxStore

SALT = b"salt" * 4
MAILBOX = b"\x05" * 32


def envelope(n: int, size: int = 1000) -> wire.Envelope:
    return wire.Envelope(
        os.urandom(16), MAILBOX, wire.EnvelopeKind.APPLICATION, bytes([n % 256]) * size, b"g", n
    )


def test_fetch_batches_fit_the_byte_budget_and_resume_at_the_cursor(tmp_path: Path) -> None:
    store = MailboxStore(tmp_path / "m.sqlite3")
    sent = [envelope(n) for n in range(5)]
    store.put(sent, now_ms=0)
    first = store.fetch(MAILBOX, cursor=0, limit=100, max_bytes=2500)
    assert [e.id for e in first.envelopes] == [e.id for e in sent[:2]]
    rest = store.fetch(MAILBOX, cursor=first.cursor, limit=100, max_bytes=1_000_000)
    assert [e.id for e in rest.envelopes] == [e.id for e in sent[2:]]
    # One envelope larger than the budget still comes out, alone, rather than never.
    alone = store.fetch(MAILBOX, cursor=0, limit=100, max_bytes=10)
    assert [e.id for e in alone.envelopes] == [sent[0].id]


def test_reopened_store_keeps_everything_and_dedupes(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    store = MailboxStore(path)
    sent = [envelope(n) for n in range(3)]
    store.put(sent, now_ms=0)
    store.put(sent[:1], now_ms=1)  # a retry after a lost answer
    store.close()
    reopened = MailboxStore(path)
    assert reopened.count(MAILBOX) == 3
    assert reopened.ack(MAILBOX, [sent[0].id, os.urandom(16)]) == 1
    assert reopened.count(MAILBOX) == 2


def test_a_full_mailbox_refuses_the_whole_batch(tmp_path: Path) -> None:
    store = MailboxStore(tmp_path / "m.sqlite3", max_per_mailbox=2)
    store.put([envelope(0)], now_ms=0)
    with pytest.raises(MailboxFullError, match="full"):
        store.put([envelope(1), envelope(2)], now_ms=0)
    assert store.count(MAILBOX) == 1  # nothing of the refused batch was kept


def test_quotas_hold_across_a_restart(tmp_path: Path) -> None:
    from relay.store import StoreFullError, StoreQuotas

    path = tmp_path / "m.sqlite3"
    quotas = StoreQuotas(max_per_mailbox=2, max_store_bytes=10_000)
    store = MailboxStore(path, quotas=quotas)
    store.put([envelope(0), envelope(1)], now_ms=0)
    store.close()
    reopened = MailboxStore(path, quotas=quotas)  # the counts come back from the file
    assert reopened.mailboxes == 1
    assert reopened.total_bytes > 2000
    with pytest.raises(MailboxFullError):
        reopened.put([envelope(2)], now_ms=0)
    other = wire.Envelope(
        os.urandom(16), b"\x06" * 32, wire.EnvelopeKind.APPLICATION, b"x" * 9000, b"g", 0
    )
    with pytest.raises(StoreFullError):
        reopened.put([other], now_ms=0)


def test_fetch_passes_over_what_no_answer_could_carry(tmp_path: Path) -> None:
    store = MailboxStore(tmp_path / "m.sqlite3")
    sent = [envelope(0, size=100), envelope(1, size=5000), envelope(2, size=100)]
    store.put(sent, now_ms=0)
    batch = store.fetch(MAILBOX, cursor=0, limit=10, max_bytes=100_000, skip_over=1000)
    assert [e.id for e in batch.envelopes] == [sent[0].id, sent[2].id]
    assert batch.skipped == 1
    # Alone at the head of the mailbox, it is passed over too, and the cursor moves on.
    store.ack(MAILBOX, [sent[0].id])
    head = store.fetch(MAILBOX, cursor=0, limit=1, max_bytes=100_000, skip_over=1000)
    assert head.envelopes == ()
    assert head.skipped == 1
    rest = store.fetch(MAILBOX, cursor=head.cursor, limit=10, max_bytes=100_000, skip_over=1000)
    assert [e.id for e in rest.envelopes] == [sent[2].id]


def test_purge_removes_only_what_expired_and_frees_its_quota(tmp_path: Path) -> None:
    store = MailboxStore(tmp_path / "m.sqlite3")
    store.put([envelope(0)], now_ms=1000)
    store.put([envelope(1)], now_ms=2000)
    assert store.purge_expired(not_before_ms=1500, telling=Telling(3000, SALT)).expired == 1
    assert store.count(MAILBOX) == 1
    assert store.fetch(MAILBOX, 0, 10, 100_000, not_before_ms=2500).envelopes == ()
    assert store.purge_expired(not_before_ms=2500, telling=Telling(3000, SALT)).expired == 1
    assert (store.mailboxes, store.total_bytes, store.expired_purged) == (0, 0, 2)


def test_a_batch_of_puts_keeps_each_all_or_nothing_and_sees_the_earlier_ones(
    tmp_path: Path,
) -> None:
    from relay.store import PutCall

    path = tmp_path / "m.sqlite3"
    store = MailboxStore(path, max_per_mailbox=3)
    first, second, third = [envelope(0), envelope(1)], [envelope(2), envelope(3)], [envelope(4)]
    outcomes = store.put_batch([PutCall(tuple(c), now_ms=0) for c in (first, second, third)])
    assert [type(o).__name__ for o in outcomes] == ["PutResult", "MailboxFullError", "PutResult"]
    # The refused call left nothing behind; the others are committed, and survive a reopen.
    store.close()
    reopened = MailboxStore(path, max_per_mailbox=3)
    held = reopened.fetch(MAILBOX, cursor=0, limit=10, max_bytes=1 << 20).envelopes
    assert [e.id for e in held] == [e.id for e in first + third]
    assert reopened.count(MAILBOX) == 3


async def test_concurrent_deliveries_share_a_commit_and_each_hears_its_own_answer(
    tmp_path: Path,
) -> None:
    from collections.abc import Sequence

    from node.core.errors import StorageError
    from node.transport.runtime import RealRuntime
    from relay.store import PutCall, PutResult
    from relay.store_api import SqliteMailboxes

    runtime = RealRuntime("test-batch")
    store = MailboxStore(tmp_path / "m.sqlite3", max_per_mailbox=10)
    batches: list[int] = []
    put_batch = store.put_batch

    def counting(calls: Sequence[PutCall]) -> list[PutResult | StorageError]:
        batches.append(len(calls))
        return put_batch(calls)

    store.put_batch = counting  # type: ignore[method-assign]
    backend = SqliteMailboxes(store, runtime)
    try:
        sent = [envelope(n) for n in range(12)]
        results = await asyncio.gather(
            *(backend.put([env], now_ms=0) for env in sent), return_exceptions=True
        )
        stored = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, MailboxFullError)]
        # Ten fit, two are refused, in the order the calls were made.
        assert [r.ids for r in stored] == [[env.id] for env in sent[:10]]
        assert len(refused) == 2
        assert sum(batches) == 12 and len(batches) < 12  # the calls did not commit one by one
        assert await backend.count(MAILBOX) == 10
    finally:
        await backend.close()
        runtime.close()
