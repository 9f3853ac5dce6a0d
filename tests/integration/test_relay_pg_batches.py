"""Group commit on the PostgreSQL store: concurrent deliveries and acks share one transaction,
and each call still gets exactly the answer it would have had alone (real PostgreSQL server)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from node.core import wire
from relay.migrations import migrate_pg
from relay.store import (
    MailboxBytesError,
    MailboxFullError,
    NewMailboxLimitError,
    PutResult,
    StoreQuotas,
)
from relay.store_api import StoreUnavailableError
from relay.store_pg import PgStore, connect_pg
from tests.pg_support import PostgresServer
from tests.runtime_support import Runtimes

MAILBOX = b"\x05" * 32


def envelope(n: int, mailbox: bytes = MAILBOX, size: int = 100) -> wire.Envelope:
    return wire.Envelope(
        os.urandom(16), mailbox, wire.EnvelopeKind.APPLICATION, bytes([n % 256]) * size, b"g", n
    )


def mailbox(n: int) -> bytes:
    return bytes([n % 256, n // 256]) + b"\x07" * 30


async def open_store(
    dsn: str, runtimes: Runtimes, quotas: StoreQuotas, call_timeout: float = 5.0
) -> PgStore:
    conn = await connect_pg(dsn)
    try:
        await migrate_pg(conn)
    finally:
        await conn.close()
    return await PgStore.open(dsn, runtimes(), quotas, 1000, call_timeout=call_timeout)


@pytest.fixture
async def store(pg_dsn: str, runtimes: Runtimes) -> AsyncIterator[PgStore]:
    opened = await open_store(pg_dsn, runtimes, StoreQuotas(max_per_mailbox=10))
    try:
        yield opened
    finally:
        await opened.close()


async def usage_is_true(dsn: str) -> None:
    """The usage rows and the store's totals agree with the envelopes actually held: what the
    quotas are judged by is what is there."""
    conn = await asyncpg.connect(dsn)
    try:
        wrong = await conn.fetch(
            "SELECT u.mailbox FROM mailbox_usage u LEFT JOIN (SELECT mailbox, COUNT(*) AS n,"
            " SUM(length(body)) AS b FROM envelopes GROUP BY mailbox) e USING (mailbox)"
            " WHERE u.envelopes <> COALESCE(e.n, 0) OR u.bytes <> COALESCE(e.b, 0)"
        )
        assert wrong == []
        totals = await conn.fetchrow("SELECT SUM(bytes), SUM(mailboxes) FROM store_usage")
        held = await conn.fetchrow(
            "SELECT COALESCE(SUM(length(body)), 0), COUNT(DISTINCT mailbox) FROM envelopes"
        )
        assert (int(totals[0]), int(totals[1])) == (int(held[0]), int(held[1]))
    finally:
        await conn.close()


async def test_concurrent_puts_past_the_quota_accept_exactly_the_quota_in_order(
    store: PgStore, pg_dsn: str
) -> None:
    sent = [envelope(n) for n in range(30)]
    results = await asyncio.gather(
        *(store.mailboxes.put([env], now_ms=n) for n, env in enumerate(sent)),
        return_exceptions=True,
    )
    calls, transactions = store.mailboxes.batches["put"]
    assert calls == 30 and transactions < 30  # they did go together
    # Judged in the order they came: the first ten fill the mailbox, each later one is refused.
    assert [isinstance(r, PutResult) for r in results] == [True] * 10 + [False] * 20
    assert all(isinstance(r, MailboxFullError) for r in results[10:])
    got = await store.mailboxes.fetch(MAILBOX, 0, 100, 1 << 20)
    assert [e.id for e in got.envelopes] == [e.id for e in sent[:10]]
    await usage_is_true(pg_dsn)


async def test_each_call_in_a_batch_is_judged_alone_against_those_before_it(
    pg_dsn: str, runtimes: Runtimes
) -> None:
    quotas = StoreQuotas(max_per_mailbox=6, max_mailbox_bytes=4000)
    store = await open_store(pg_dsn, runtimes, quotas)
    try:
        a = [envelope(n) for n in range(3)]
        b = [envelope(n) for n in range(3, 8)]  # 3 + 5 > 6: refused whole
        c = [envelope(n) for n in range(8, 10)]
        retry = [a[0], envelope(10)]  # one already held: stored once
        big = [envelope(11, mailbox(2), size=5000)]  # over a mailbox's bytes
        fresh = mailbox(1)
        no_new = [envelope(12, fresh)]  # may open no new mailbox
        opens = [envelope(13, fresh)]
        then = [envelope(14, fresh)]  # not new any more: allowed
        mb = store.mailboxes
        results = await asyncio.gather(
            mb.put(a, 0),
            mb.put(b, 0),
            mb.put(c, 0),
            mb.put(retry, 0),
            mb.put(big, 0),
            mb.put(no_new, 0, new_mailbox_allowance=0),
            mb.put(opens, 0, new_mailbox_allowance=1),
            mb.put(then, 0, new_mailbox_allowance=0),
            return_exceptions=True,
        )
        assert mb.batches["put"] == (8, 1)
        ok, full, ok_c, ok_retry, too_big, refused_new, opened, later = results
        assert isinstance(full, MailboxFullError)
        assert isinstance(too_big, MailboxBytesError)
        assert isinstance(refused_new, NewMailboxLimitError)
        assert isinstance(ok, PutResult) and ok.ids == [e.id for e in a] and ok.new_mailboxes == 1
        assert isinstance(ok_c, PutResult) and ok_c.new_mailboxes == 0
        assert isinstance(ok_retry, PutResult) and ok_retry.ids == [e.id for e in retry]
        assert isinstance(opened, PutResult) and opened.new_mailboxes == 1
        assert isinstance(later, PutResult) and later.new_mailboxes == 0
        got = await mb.fetch(MAILBOX, 0, 100, 1 << 20)
        assert [e.id for e in got.envelopes] == [e.id for e in [*a, *c, retry[1]]]
        fresh_got = await mb.fetch(fresh, 0, 100, 1 << 20)
        assert [e.id for e in fresh_got.envelopes] == [opens[0].id, then[0].id]
        await usage_is_true(pg_dsn)
    finally:
        await store.close()


async def test_the_same_envelope_twice_in_one_batch_is_stored_once(
    store: PgStore, pg_dsn: str
) -> None:
    env = envelope(1)
    results = await asyncio.gather(*(store.mailboxes.put([env], now_ms=0) for _ in range(5)))
    assert all(r.ids == [env.id] for r in results)
    assert await store.mailboxes.count(MAILBOX) == 1
    await usage_is_true(pg_dsn)


async def test_expired_envelopes_make_room_inside_a_batch(store: PgStore, pg_dsn: str) -> None:
    old = [envelope(n) for n in range(10)]
    await store.mailboxes.put(old, now_ms=0)
    new = [envelope(n) for n in range(10, 14)]
    results = await asyncio.gather(
        *(store.mailboxes.put([env], now_ms=100, not_before_ms=50) for env in new)
    )
    assert [r.ids for r in results] == [[e.id] for e in new]
    got = await store.mailboxes.fetch(MAILBOX, 0, 100, 1 << 20)
    assert [e.id for e in got.envelopes] == [e.id for e in new]
    await store.refresh()
    assert store.mailboxes.expired_purged == 10
    await usage_is_true(pg_dsn)


async def test_concurrent_acks_remove_each_envelope_once(store: PgStore, pg_dsn: str) -> None:
    boxes = [mailbox(n) for n in range(4)]
    held = {m: [envelope(n, m) for n in range(5)] for m in boxes}
    await asyncio.gather(*(store.mailboxes.put(envs, now_ms=0) for envs in held.values()))
    ids = {m: [e.id for e in envs] for m, envs in held.items()}
    first = boxes[0]
    removed = await asyncio.gather(
        store.mailboxes.ack(first, ids[first][:3]),
        store.mailboxes.ack(first, ids[first][1:4]),  # two of these went with the call before
        store.mailboxes.ack(first, [os.urandom(16)]),
        *(store.mailboxes.ack(m, ids[m]) for m in boxes[1:]),
        store.mailboxes.ack(mailbox(99), [os.urandom(16)]),  # a mailbox that holds nothing
    )
    assert removed == [3, 1, 0, 5, 5, 5, 0]
    assert store.mailboxes.batches["ack"][1] < 7
    assert await store.mailboxes.count(first) == 1
    await usage_is_true(pg_dsn)
    # The freed room is there for new envelopes, up to the quota and no further.
    more = [envelope(n, first) for n in range(20, 30)]
    results = await asyncio.gather(
        *(store.mailboxes.put([env], now_ms=1) for env in more), return_exceptions=True
    )
    assert [isinstance(r, PutResult) for r in results] == [True] * 9 + [False]


async def waiting_on_a_lock(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(10):
            while not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock')"
            ):
                await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def test_a_batch_cut_off_by_the_database_refuses_every_call_and_stores_none(
    postgres: PostgresServer, pg_dsn: str, runtimes: Runtimes
) -> None:
    store = await open_store(pg_dsn, runtimes, StoreQuotas(), call_timeout=2.0)
    try:
        # Hold every store_usage row: the batch stores its envelopes, then waits for its
        # shard, the last thing it writes, while the database goes away.
        blocker = await asyncpg.connect(pg_dsn)
        await blocker.execute("BEGIN")
        await blocker.execute("SELECT * FROM store_usage FOR UPDATE")
        sent: list[Sequence[wire.Envelope]] = [
            [envelope(n, mailbox(n)), envelope(n + 100, mailbox(n))] for n in range(20)
        ]
        puts = asyncio.gather(
            *(store.mailboxes.put(envs, now_ms=0) for envs in sent), return_exceptions=True
        )
        await waiting_on_a_lock(pg_dsn)
        postgres.stop()
        try:
            results = await puts
        finally:
            postgres.start()
            blocker.terminate()
        assert all(isinstance(r, StoreUnavailableError) for r in results), results
        assert store.mailboxes.batches["put"] == (20, 1)
        async with asyncio.timeout(20):
            while True:
                try:
                    counts = [await store.mailboxes.count(mailbox(n)) for n in range(20)]
                    break
                except StoreUnavailableError:
                    await asyncio.sleep(0.1)
        assert counts == [0] * 20
        await usage_is_true(pg_dsn)
        # The store carries on by itself.
        assert (await store.mailboxes.put(sent[0], now_ms=1)).ids == [e.id for e in sent[0]]
    finally:
        await store.close()


async def test_a_batch_wakes_the_other_process_for_every_mailbox_and_not_itself(
    pg_dsn: str, runtimes: Runtimes
) -> None:
    one = await open_store(pg_dsn, runtimes, StoreQuotas())
    two = await open_store(pg_dsn, runtimes, StoreQuotas())
    try:
        heard_by_one: list[bytes | None] = []
        heard_by_two: asyncio.Queue[bytes | None] = asyncio.Queue()
        one.mailboxes.on_arrival(heard_by_one.append)
        two.mailboxes.on_arrival(heard_by_two.put_nowait)
        boxes = [mailbox(n) for n in range(250)]  # more than one NOTIFY payload holds
        await asyncio.gather(*(one.mailboxes.put([envelope(0, m)], now_ms=0) for m in boxes))
        assert one.mailboxes.batches["put"][1] < len(boxes)
        heard: set[bytes | None] = set()
        async with asyncio.timeout(10):
            while heard != set(boxes):
                heard.add(await heard_by_two.get())
        # Notifications reach a listener in commit order: once one hears two's, it has had
        # every one of its own, and passed none of them on.
        await two.mailboxes.put([envelope(1, MAILBOX)], now_ms=0)
        async with asyncio.timeout(10):
            while not heard_by_one:
                await asyncio.sleep(0.01)
        assert heard_by_one == [MAILBOX]
    finally:
        await one.close()
        await two.close()


async def test_concurrent_fetches_each_read_their_own_mailbox_from_their_cursor(
    store: PgStore,
) -> None:
    boxes = [mailbox(n) for n in range(5)]
    held = {m: [envelope(n, m) for n in range(6)] for m in boxes}
    for envs in held.values():
        await store.mailboxes.put(envs, now_ms=10)
    old = mailbox(9)
    await store.mailboxes.put([envelope(0, old)], now_ms=0)
    cursors = {m: (await store.mailboxes.fetch(m, 0, 2, 1 << 20)).cursor for m in boxes}
    before = store.mailboxes.batches["fetch"]
    got = await asyncio.gather(
        *(store.mailboxes.fetch(m, cursors[m], 3, 1 << 20, not_before_ms=5) for m in boxes),
        store.mailboxes.fetch(old, 0, 10, 1 << 20, not_before_ms=5),  # expired: never out
        store.mailboxes.fetch(boxes[0], 0, 10, 1 << 20),
    )
    calls, transactions = store.mailboxes.batches["fetch"]
    assert calls - before[0] == 7 and transactions - before[1] < 7
    for m, answer in zip(boxes, got, strict=False):
        assert [e.id for e in answer.envelopes] == [e.id for e in held[m][2:5]]
    assert got[5].envelopes == ()
    assert [e.id for e in got[6].envelopes] == [e.id for e in held[boxes[0]]]
