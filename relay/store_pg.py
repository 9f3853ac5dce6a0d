"""The relay's store on PostgreSQL (asyncpg), shared by several relay processes.

Every process serves every mailbox and account, so nothing that decides a call lives only in
one process's memory:

- A write to a mailbox first row-locks that mailbox's ``mailbox_usage`` row (mailboxes of one
  call in sorted order, so two writers never deadlock). The per-mailbox quotas are therefore
  exact across processes, and the ``seq`` numbers of one mailbox are handed out in commit
  order: a fetch cursor never steps over an envelope that commits later.
- Lock order everywhere: mailbox rows (sorted), then envelopes, then one ``store_usage``
  shard. The store-wide caps (bytes, mailboxes) are read without a lock: concurrent calls in
  other processes can overshoot them by at most what those calls carry (docs/operations.md).
- Deliveries (and acks) that arrive while one is being written go together in the next
  transaction (group commit, ``relay/batches.py``): set-based statements for all of them,
  each call still judged alone, in the order they came, against the quotas as the calls before
  it left them.
- Stored envelopes are announced with one ``NOTIFY qpc_mail`` a transaction (sent at commit),
  naming its mailboxes, which wakes long polls in every other process (a process wakes its own
  itself). Sessions are read from the database on every check, never cached.

A call made while the database is unreachable raises :class:`StoreUnavailableError`; its
transaction is rolled back by the server, so nothing is half-stored. The pool reconnects by
itself on the next call once the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Container, Sequence
from typing import Any

import asyncpg

from node.core import wire
from node.core.errors import StorageError
from node.core.runtime import Runtime
from relay.batches import Batches, put_batches
from relay.failure_notices import OWED_BATCH, Owed, Telling, notices_for
from relay.migrations import check_pg
from relay.store import (
    NewMailboxLimitError,
    Purged,
    PutCall,
    PutResult,
    QuotaError,
    StoredBatch,
    StoreQuotas,
    TooManyMailboxesError,
    batch_of,
    place_notices,
)
from relay.store_accounts import Session, TooManyAccountsError, UsernameTakenError
from relay.store_api import ArrivalCallback, StoreUnavailableError

__all__ = ["PgAccounts", "PgMailboxes", "PgStore", "connect_pg"]

log = logging.getLogger(__name__)

MAIL_CHANNEL = "qpc_mail"
_SHARDS = 16
# The LISTEN connection: how often it is looked at, how often an idle one must answer a trivial
# query (a database machine that restarted, or a standby that took over its address, ends
# connections without a FIN, and a connection that only listens would never notice), and the
# longest pause between attempts to listen again.
_LISTEN_LOOK_S = 0.2
LISTEN_CHECK_S = 5.0
_LISTEN_RETRY_MAX_S = 1.0
# Errors that mean "the database is not there now", as opposed to a query it refused.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
)

_LOCK_MAILBOX = """
INSERT INTO mailbox_usage (mailbox, envelopes, bytes) VALUES ($1, 0, 0)
ON CONFLICT (mailbox) DO UPDATE SET envelopes = mailbox_usage.envelopes
RETURNING envelopes, bytes
"""
# The same for several mailboxes, locked in sorted order (rows are inserted, and their
# conflicts locked, in the order the SELECT gives them); "inserted" tells a row made now.
_LOCK_MAILBOXES = """
INSERT INTO mailbox_usage (mailbox, envelopes, bytes)
SELECT m, 0, 0 FROM unnest($1::bytea[]) AS m ORDER BY m
ON CONFLICT (mailbox) DO UPDATE SET envelopes = mailbox_usage.envelopes
RETURNING mailbox, envelopes, bytes, xmax = 0 AS inserted
"""
# Records, for the next purge to tell their senders, the expired envelopes of one (locked)
# mailbox that asked for a failure notice; run just before they are deleted.
_OWE_EXPIRED = """
INSERT INTO undelivered (sender, id, recipient)
SELECT sender, id, mailbox FROM envelopes
WHERE mailbox = $1 AND stored_at_ms < $2 AND sender IS NOT NULL ORDER BY seq
"""
_TOTALS = "SELECT COALESCE(SUM(bytes), 0), COALESCE(SUM(mailboxes), 0) FROM store_usage"
_NOTIFY = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"
# Mailboxes named by one NOTIFY payload (64 hex digits and a comma each, under 8,000 bytes).
_NOTIFY_MAILBOXES = 100
MAX_ACK_BATCH_CALLS = 128
MAX_ACK_BATCH_IDS = 16_384
# Rows one fetch query may return: no more than the pool's connections could hold at once
# without batching (8 fetches of 256).
MAX_FETCH_BATCH_CALLS = 128
MAX_FETCH_BATCH_ROWS = 2048
_FETCH_MANY = """
SELECT k.i, e.seq, e.body
FROM unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::int[])
    WITH ORDINALITY AS k(mailbox, cursor, not_before, lim, i)
CROSS JOIN LATERAL (
    SELECT seq, body FROM envelopes
    WHERE mailbox = k.mailbox AND seq > k.cursor AND stored_at_ms >= k.not_before
    ORDER BY seq LIMIT k.lim
) AS e
ORDER BY k.i, e.seq
"""


def _shard(mailbox: bytes) -> int:
    return mailbox[0] % _SHARDS if mailbox else 0


async def _keep_session(_conn: Any) -> None:
    """A pooled connection is handed back as it is: no call leaves session state on it
    (settings are ``SET LOCAL``, advisory locks transaction-scoped, LISTEN has its own
    connection), so the default reset query (``RESET ALL``, ``UNLISTEN *``…), one more round
    trip on every release, is not sent. asyncpg still rolls back a transaction left open."""


async def connect_pg(dsn: str, connect_timeout: float = 5.0) -> Any:
    """One connection (for ``relay migrate``); an unreachable server is a one-line error."""
    try:
        return await asyncpg.connect(dsn, timeout=connect_timeout)
    except asyncpg.ClientConfigurationError as exc:
        raise StorageError(f"the PostgreSQL dsn is not usable: {exc}") from None
    except UNAVAILABLE as exc:
        raise StoreUnavailableError(f"cannot reach the PostgreSQL store: {exc}") from None
    except asyncpg.PostgresError as exc:
        raise StorageError(f"the PostgreSQL store refused the connection: {exc}") from None


class PgStore:
    """A pool for calls and one connection that LISTENs; :attr:`mailboxes` and
    :attr:`accounts` are the two halves of the store interface."""

    def __init__(self, dsn: str, pool: Any, timeout: float, runtime: Runtime) -> None:
        self._dsn = dsn
        self._pool = pool
        self._timeout = timeout
        self.spawn = runtime.spawn
        # Names this process in its NOTIFY payloads, so that it skips its own: the service
        # wakes its long polls itself when a delivery through it is stored.
        self.tag = runtime.random_bytes(8).hex()
        self.mailboxes = PgMailboxes(self)
        self.accounts = PgAccounts(self)
        self._listener: Any = None
        self._listen_task: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    async def open(
        cls,
        dsn: str,
        runtime: Runtime,
        quotas: StoreQuotas,
        max_accounts: int,
        *,
        pool_size: int = 8,
        call_timeout: float = 5.0,
    ) -> PgStore:
        """Connect, refuse a schema this relay cannot use, and start listening."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=pool_size,
                timeout=call_timeout,
                command_timeout=call_timeout * 2,
                reset=_keep_session,
            )
        except asyncpg.ClientConfigurationError as exc:
            # Before UNAVAILABLE (it is an InterfaceError too): a typo is not an outage.
            raise StorageError(f"the PostgreSQL dsn is not usable: {exc}") from None
        except UNAVAILABLE as exc:
            raise StoreUnavailableError(f"cannot reach the PostgreSQL store: {exc}") from None
        except asyncpg.PostgresError as exc:
            raise StorageError(f"the PostgreSQL store refused the connection: {exc}") from None
        store = cls(dsn, pool, call_timeout, runtime)
        store.mailboxes.quotas = quotas
        store.accounts.max_accounts = max_accounts
        try:
            async with store.connection() as conn:
                await check_pg(conn)
            await store.refresh()
            await store._listen()
        except BaseException:
            await pool.close()
            raise
        store._listen_task = runtime.spawn(store._keep_listening())
        return store

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A pooled connection; losing the database becomes :class:`StoreUnavailableError`."""
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except UNAVAILABLE as exc:
            raise StoreUnavailableError(f"the PostgreSQL store is unreachable: {exc}") from None
        except asyncpg.PostgresError as exc:
            raise StorageError(f"the PostgreSQL store refused a query: {exc}") from exc

    async def refresh(self) -> None:
        """Re-read the gauges (mailboxes, bytes, accounts, sessions, expired) from the database."""
        async with self.connection() as conn:
            row = await conn.fetchrow(
                "SELECT COALESCE(SUM(bytes), 0), COALESCE(SUM(mailboxes), 0) FROM store_usage"
            )
            expired = await conn.fetchval(
                "SELECT value FROM counters WHERE name = 'envelopes_expired'"
            )
            accounts = await conn.fetchval("SELECT COUNT(*) FROM accounts")
            sessions = await conn.fetchval("SELECT COUNT(*) FROM sessions")
        self.mailboxes.gauges = (int(row[1]), int(row[0]), int(expired or 0))
        self.accounts.gauges = (int(accounts), int(sessions))

    async def _listen(self) -> None:
        conn = await asyncpg.connect(
            self._dsn, timeout=self._timeout, command_timeout=self._timeout * 2
        )
        try:
            await conn.add_listener(MAIL_CHANNEL, self._on_mail)
        except BaseException:
            conn.terminate()
            raise
        self._listener = conn

    async def _keep_listening(self) -> None:
        """Listen again once the LISTEN connection is lost, or found dead by a query it no
        longer answers; after each reconnection every long poll is woken, since notifications
        in between were lost."""
        delay = 0.1
        idle = 0.0
        while not self._closing:
            listener = self._listener
            if listener is not None and not listener.is_closed():
                await asyncio.sleep(_LISTEN_LOOK_S)
                idle += _LISTEN_LOOK_S
                if idle >= LISTEN_CHECK_S:
                    idle = 0.0
                    await self._check_listener(listener)
                continue
            try:
                await self._listen()
            except (*UNAVAILABLE, asyncpg.PostgresError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, _LISTEN_RETRY_MAX_S)
                continue
            delay = 0.1
            idle = 0.0
            log.info("listening to the PostgreSQL store again")
            self.mailboxes.notify_all()

    async def _check_listener(self, listener: Any) -> None:
        try:
            await listener.fetchval("SELECT 1", timeout=self._timeout)
        except (*UNAVAILABLE, asyncpg.PostgresError):
            log.info("the LISTEN connection to the PostgreSQL store stopped answering")
            listener.terminate()

    def _on_mail(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        # "TAG:HEX,HEX,…" (one transaction's mailboxes); a bare HEX from an older relay.
        tag, _, names = payload.rpartition(":")
        if tag == self.tag:
            return
        for name in names.split(","):
            try:
                mailbox = bytes.fromhex(name)
            except ValueError:
                continue
            if len(mailbox) == 32:
                self.mailboxes.notify(mailbox)

    async def close(self) -> None:
        await self.mailboxes.settle()
        self._closing = True
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
        if self._listener is not None:
            with contextlib.suppress(*UNAVAILABLE):
                await self._listener.close(timeout=self._timeout)
        with contextlib.suppress(*UNAVAILABLE):
            await asyncio.wait_for(self._pool.close(), self._timeout)


class PgMailboxes:
    """:class:`~relay.store_api.MailboxBackend` on PostgreSQL."""

    def __init__(self, store: PgStore) -> None:
        self._store = store
        self.quotas = StoreQuotas()
        self.gauges = (0, 0, 0)  # mailboxes, bytes, expired: as of the last refresh
        self._callbacks: list[ArrivalCallback] = []
        self._puts = put_batches(store.spawn, self._put_batch)
        self._fetches: Batches[tuple[bytes, int, int, int], list[tuple[int, bytes]]] = Batches(
            store.spawn,
            self._fetch_batch,
            max_calls=MAX_FETCH_BATCH_CALLS,
            max_weight=MAX_FETCH_BATCH_ROWS,
            weigh=lambda call: call[3],
        )
        self._acks: Batches[tuple[bytes, tuple[bytes, ...]], int] = Batches(
            store.spawn,
            self._ack_batch,
            max_calls=MAX_ACK_BATCH_CALLS,
            max_weight=MAX_ACK_BATCH_IDS,
            weigh=lambda call: len(call[1]),
        )

    @property
    def mailboxes(self) -> int:
        return self.gauges[0]

    @property
    def total_bytes(self) -> int:
        return self.gauges[1]

    @property
    def expired_purged(self) -> int:
        return self.gauges[2]

    @property
    def batches(self) -> dict[str, tuple[int, int]]:
        """Calls and the transactions that carried them, by kind: how well group commit
        does under the load at hand."""
        return {
            "put": (self._puts.calls, self._puts.batches),
            "fetch": (self._fetches.calls, self._fetches.batches),
            "ack": (self._acks.calls, self._acks.batches),
        }

    def on_arrival(self, callback: ArrivalCallback) -> None:
        self._callbacks.append(callback)

    def notify(self, mailbox: bytes) -> None:
        for callback in self._callbacks:
            callback(mailbox)

    def notify_all(self) -> None:
        for callback in self._callbacks:
            callback(None)

    async def put(
        self,
        envelopes: Sequence[wire.Envelope],
        now_ms: int,
        *,
        new_mailbox_allowance: int | None = None,
        not_before_ms: int | None = None,
        in_use: Container[bytes] = frozenset(),
        sender: bytes | None = None,
    ) -> PutResult:
        call = PutCall(
            tuple(envelopes), now_ms, new_mailbox_allowance, not_before_ms, in_use, sender
        )
        return await self._puts.call(call)

    async def _put_batch(self, calls: list[PutCall]) -> list[PutResult | StorageError]:
        """Several puts in one transaction, each judged in turn against the usage the ones
        before it left: its result, or the quota error that refuses it alone (and stores
        nothing of it). Any other failure fails the whole batch, and nothing of it is kept."""
        async with self._store.connection() as conn, conn.transaction():
            batch = await _PutBatch.begin(conn, calls, self.quotas)
            outcomes: list[PutResult | StorageError] = []
            for call in calls:
                try:
                    outcomes.append(await batch.stage(call))
                except QuotaError as exc:
                    outcomes.append(exc)
            await batch.write(self._store.tag)
        return outcomes

    async def fetch(
        self,
        mailbox: bytes,
        cursor: int,
        limit: int,
        max_bytes: int,
        *,
        not_before_ms: int | None = None,
        skip_over: int | None = None,
    ) -> StoredBatch:
        not_before = -(1 << 62) if not_before_ms is None else not_before_ms
        rows = await self._fetches.call((mailbox, cursor, not_before, limit))
        return batch_of(rows, cursor, max_bytes, skip_over)

    async def _fetch_batch(
        self, calls: list[tuple[bytes, int, int, int]]
    ) -> list[list[tuple[int, bytes]] | StorageError]:
        """Several fetches in one query: each call's rows, oldest first, as it alone would
        have read them."""
        async with self._store.connection() as conn:
            rows = await conn.fetch(_FETCH_MANY, *map(list, zip(*calls, strict=True)))
        found: list[list[tuple[int, bytes]]] = [[] for _ in calls]
        for r in rows:
            found[int(r[0]) - 1].append((int(r[1]), bytes(r[2])))
        return [*found]

    async def ack(self, mailbox: bytes, ids: Sequence[bytes]) -> int:
        return await self._acks.call((mailbox, tuple(ids)))

    async def _ack_batch(
        self, calls: list[tuple[bytes, tuple[bytes, ...]]]
    ) -> list[int | StorageError]:
        """Several acks in one transaction: each envelope is removed once, and counted for
        the first call of the batch that names it."""
        mailboxes = sorted({mailbox for mailbox, _ in calls})
        async with self._store.connection() as conn, conn.transaction():
            # As the embedded store does (relay/store.py): an ack does not wait for the WAL to
            # reach the disk. A database crash can only bring back an envelope its owner
            # already holds and drops by id; the next synchronous commit flushes it anyway.
            await conn.execute("SET LOCAL synchronous_commit = off")
            rows = await conn.fetch(
                "SELECT mailbox, envelopes, bytes FROM mailbox_usage"
                " WHERE mailbox = ANY($1::bytea[]) ORDER BY mailbox FOR UPDATE",
                mailboxes,
            )
            before = {bytes(r[0]): (int(r[1]), int(r[2])) for r in rows}
            # A mailbox without a usage row holds nothing to remove.
            keys = {(m, i) for m, ids in calls if m in before for i in ids}
            gone: dict[tuple[bytes, bytes], int] = {}
            if keys:
                deleted = await conn.fetch(
                    "DELETE FROM envelopes e USING unnest($1::bytea[], $2::bytea[])"
                    " AS k(mailbox, id) WHERE e.mailbox = k.mailbox AND e.id = k.id"
                    " RETURNING e.mailbox, e.id, length(e.body)",
                    [m for m, _ in keys],
                    [i for _, i in keys],
                )
                gone = {(bytes(r[0]), bytes(r[1])): int(r[2]) for r in deleted}
            if gone:
                usage = {m: list(u) for m, u in before.items()}
                for (mailbox, _), size in gone.items():
                    usage[mailbox][0] -= 1
                    usage[mailbox][1] -= size
                await _write_usage(conn, usage, before, calls[0][0])
        removed: list[int | StorageError] = []
        for mailbox, ids in calls:
            mine = {(mailbox, i) for i in ids}
            removed.append(sum(1 for key in mine if gone.pop(key, None) is not None))
        return removed

    async def purge_expired(self, not_before_ms: int, telling: Telling) -> Purged:
        """Delete expired envelopes, one mailbox per transaction (mailbox lock first, as every
        writer takes it), and drop the usage rows of empty mailboxes; then store the failure
        notices owed, one sender per transaction (``relay.failure_notices``)."""
        async with self._store.connection() as conn:
            mailboxes = await conn.fetch(
                "SELECT DISTINCT mailbox FROM envelopes WHERE stored_at_ms < $1", not_before_ms
            )
            removed = 0
            for (mailbox,) in sorted(mailboxes):
                async with conn.transaction():
                    row = await conn.fetchrow(_LOCK_MAILBOX, mailbox)
                    await conn.execute(_OWE_EXPIRED, mailbox, not_before_ms)
                    gone = await conn.fetchrow(
                        "WITH gone AS (DELETE FROM envelopes WHERE mailbox = $1"
                        " AND stored_at_ms < $2 RETURNING length(body) AS size)"
                        " SELECT COUNT(*), COALESCE(SUM(size), 0) FROM gone",
                        mailbox,
                        not_before_ms,
                    )
                    if gone[0]:
                        usage = {mailbox: [int(row[0]) - int(gone[0]), int(row[1]) - int(gone[1])]}
                        await _write_usage(conn, usage, {mailbox: (int(row[0]), int(row[1]))})
                        await _add_counter(conn, "envelopes_expired", int(gone[0]))
                        removed += int(gone[0])
            await conn.execute("DELETE FROM mailbox_usage WHERE envelopes = 0")
            notices = untold = 0
            told: list[bytes] = []
            senders = await conn.fetch("SELECT DISTINCT sender FROM undelivered")
            for (sender,) in sorted(senders):
                while True:
                    async with conn.transaction():
                        handled, stored, lost = await self._tell(conn, bytes(sender), telling)
                    notices += stored
                    untold += lost
                    if stored and bytes(sender) not in told:
                        told.append(bytes(sender))
                    if handled < OWED_BATCH:
                        break
        await self._store.refresh()
        return Purged(removed, notices, untold, tuple(told))

    async def _tell(self, conn: Any, sender: bytes, telling: Telling) -> tuple[int, int, int]:
        """Store the notices for the oldest :data:`OWED_BATCH` debts to ``sender`` (its usage
        row locked first, so two processes purging at once tell each debt once) and clear
        them; returns (debts handled, notices stored, envelopes left untold)."""
        rows = await conn.fetch(_LOCK_MAILBOXES, [sender])
        before = (int(rows[0][1]), int(rows[0][2]))
        owed_rows = await conn.fetch(
            "SELECT seq, id, recipient FROM undelivered WHERE sender = $1 ORDER BY seq LIMIT $2",
            sender,
            OWED_BATCH,
        )
        owed: list[Owed] = [(int(r[0]), bytes(r[1]), bytes(r[2])) for r in owed_rows]
        made = list(notices_for(sender, owed, telling))
        taken = {
            bytes(r[0])
            for r in await conn.fetch(
                "SELECT id FROM envelopes WHERE mailbox = $1 AND id = ANY($2::bytea[])",
                sender,
                [n.id for n, _ in made],
            )
        }
        total, held = await conn.fetchrow(_TOTALS)
        mine = list(before)
        kept, _, _, untold = place_notices(self.quotas, made, taken, mine, int(total), int(held))
        ids = [notice.id for notice, _ in kept]
        bodies = [body for _, body in kept]
        if ids:
            await conn.execute(
                "INSERT INTO envelopes (mailbox, id, body, stored_at_ms)"
                " SELECT $1, i, b, $4 FROM unnest($2::bytea[], $3::bytea[]) AS n(i, b)",
                sender,
                ids,
                bodies,
                telling.now_ms,
            )
            await _write_usage(conn, {sender: mine}, {sender: before})
            await _add_counter(conn, "failure_notices", len(ids))
            await conn.execute(_NOTIFY, MAIL_CHANNEL, _payloads(self._store.tag, [sender]))
        elif rows[0][3]:
            await conn.execute("DELETE FROM mailbox_usage WHERE mailbox = $1", sender)
        if untold:
            await _add_counter(conn, "failure_notices_untold", untold)
        if owed:
            await conn.execute(
                "DELETE FROM undelivered WHERE seq = ANY($1::bigint[])", [o[0] for o in owed]
            )
        return len(owed), len(ids), untold

    async def count(self, mailbox: bytes) -> int:
        async with self._store.connection() as conn:
            n = await conn.fetchval("SELECT COUNT(*) FROM envelopes WHERE mailbox = $1", mailbox)
        return int(n)

    async def settle(self) -> None:
        """Return once every call already queued has been answered."""
        for batches in (self._puts, self._fetches, self._acks):
            await batches.wait_idle()

    async def close(self) -> None:
        await self._store.close()


class PgAccounts:
    """:class:`~relay.store_api.AccountBackend` on PostgreSQL; nothing of it is cached, so every
    process sees a login or a revocation through any other at once."""

    def __init__(self, store: PgStore) -> None:
        self._store = store
        self.max_accounts = 1_000_000
        self.gauges = (0, 0)  # accounts, sessions: as of the last refresh

    @property
    def accounts(self) -> int:
        return self.gauges[0]

    @property
    def sessions(self) -> int:
        return self.gauges[1]

    async def record(self, username: str) -> bytes | None:
        async with self._store.connection() as conn:
            found = await conn.fetchval("SELECT record FROM accounts WHERE username = $1", username)
        return None if found is None else bytes(found)

    async def exists(self, username: str) -> bool:
        return await self.record(username) is not None

    async def register(self, username: str, record: bytes, now_ms: int) -> None:
        async with self._store.connection() as conn:
            held = int(await conn.fetchval("SELECT COUNT(*) FROM accounts"))
            if held >= self.max_accounts:
                raise TooManyAccountsError("this relay holds as many accounts as it allows")
            try:
                await conn.execute(
                    "INSERT INTO accounts (username, record, created_ms) VALUES ($1, $2, $3)",
                    username,
                    record,
                    now_ms,
                )
            except asyncpg.UniqueViolationError:
                raise UsernameTakenError(f"{username} is already registered") from None
        self.gauges = (held + 1, self.gauges[1])

    async def open_session(
        self, token_hash: bytes, session: Session, now_ms: int, keep: int
    ) -> list[bytes]:
        async with self._store.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO sessions (token_hash, username, identity, created_ms, expires_ms)"
                " VALUES ($1, $2, $3, $4, $5)",
                token_hash,
                session.username,
                session.identity,
                now_ms,
                session.expires_ms,
            )
            dropped = await conn.fetch(
                "DELETE FROM sessions WHERE token_hash IN (SELECT token_hash FROM sessions"
                " WHERE username = $1 ORDER BY serial DESC OFFSET $2)"
                " RETURNING token_hash, identity",
                session.username,
                keep,
            )
        return [bytes(r[0]) for r in dropped]

    async def session(self, token_hash: bytes) -> Session | None:
        async with self._store.connection() as conn:
            row = await conn.fetchrow(
                "SELECT username, identity, expires_ms FROM sessions WHERE token_hash = $1",
                token_hash,
            )
        return None if row is None else Session(row[0], bytes(row[1]), int(row[2]))

    async def revoke(self, token_hash: bytes) -> bool:
        async with self._store.connection() as conn, conn.transaction():
            identity = await conn.fetchval(
                "DELETE FROM sessions WHERE token_hash = $1 RETURNING identity", token_hash
            )
        return identity is not None

    async def has_live_session(self, identity: bytes, now_ms: int) -> bool:
        # Asked of the database each time (an index lookup), never of a cache: a revocation
        # through any process holds in every process at once.
        async with self._store.connection() as conn:
            live = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM sessions WHERE identity = $1 AND expires_ms > $2)",
                identity,
                now_ms,
            )
        return bool(live)

    async def purge_expired(self, now_ms: int) -> int:
        async with self._store.connection() as conn:
            gone = await conn.fetch(
                "DELETE FROM sessions WHERE expires_ms <= $1 RETURNING identity", now_ms
            )
        return len(gone)

    async def close(self) -> None:
        await self._store.close()


async def _add_counter(conn: Any, name: str, n: int) -> None:
    await conn.execute(
        "INSERT INTO counters (name, value) VALUES ($1, $2)"
        " ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
        name,
        n,
    )


async def _write_usage(
    conn: Any,
    usage: dict[bytes, list[int]],
    before: dict[bytes, tuple[int, int]],
    shard_of: bytes | None = None,
) -> None:
    """Store the (locked) mailboxes' new usage and add the change to one ``store_usage`` shard.

    A shard is one of 16 counters whose sums are the store's totals; a transaction adds its
    whole change to one of them (that of ``shard_of``, else of its first mailbox), the last
    lock it takes: with one shard each, two writers never wait on each other's shards in
    opposite orders, and writers in different processes seldom wait on one row at all.
    """
    changed = [(m, c, b) for m, (c, b) in usage.items() if (c, b) != before[m]]
    if not changed:
        return
    if len(changed) == 1:
        mailbox, count, size = changed[0]
        await conn.execute(
            "UPDATE mailbox_usage SET envelopes = $2, bytes = $3 WHERE mailbox = $1",
            mailbox,
            count,
            size,
        )
    else:
        await conn.execute(
            "UPDATE mailbox_usage AS u SET envelopes = v.envelopes, bytes = v.bytes"
            " FROM unnest($1::bytea[], $2::bigint[], $3::bigint[]) AS v(mailbox, envelopes, bytes)"
            " WHERE u.mailbox = v.mailbox",
            [m for m, _, _ in changed],
            [c for _, c, _ in changed],
            [b for _, _, b in changed],
        )
    size_delta = sum(b - before[m][1] for m, _, b in changed)
    mailbox_delta = sum((c > 0) - (before[m][0] > 0) for m, c, _ in changed)
    if size_delta or mailbox_delta:
        await conn.execute(
            "UPDATE store_usage SET bytes = bytes + $2, mailboxes = mailboxes + $3"
            " WHERE shard = $1",
            _shard(changed[0][0] if shard_of is None else shard_of),
            size_delta,
            mailbox_delta,
        )


def _payloads(tag: str, mailboxes: Sequence[bytes]) -> list[str]:
    """NOTIFY payloads naming ``mailboxes``: ``TAG:HEX,HEX,…``, each under PostgreSQL's
    8,000-byte limit; the tag lets the sending process skip its own."""
    return [
        f"{tag}:" + ",".join(m.hex() for m in mailboxes[i : i + _NOTIFY_MAILBOXES])
        for i in range(0, len(mailboxes), _NOTIFY_MAILBOXES)
    ]


class _PutBatch:
    """One put transaction: the locked mailboxes' usage as the calls staged so far leave it,
    and the rows they add (written at the end, in one statement)."""

    def __init__(
        self,
        conn: Any,
        quotas: StoreQuotas,
        locked: dict[bytes, tuple[int, int]],
        created: list[bytes],
        totals: tuple[int, int],
        present: set[tuple[bytes, bytes]],
    ) -> None:
        self._conn = conn
        self._quotas = quotas
        self._locked = locked
        self._created = created  # usage rows this transaction inserted
        self.usage = {m: list(u) for m, u in locked.items()}
        self.total, self.held = totals
        self._present = present  # (mailbox, id) held, or staged by an earlier call
        # mailbox, id, body, stored_at_ms, sender of each row to insert
        self._rows: tuple[list[bytes], list[bytes], list[bytes], list[int], list[bytes | None]] = (
            [],
            [],
            [],
            [],
            [],
        )
        self._stored: dict[bytes, None] = {}  # mailboxes that get envelopes, first call first
        self._purged = 0

    @classmethod
    async def begin(cls, conn: Any, calls: Sequence[PutCall], quotas: StoreQuotas) -> _PutBatch:
        """Lock every recipient's usage row (sorted, as every writer does), then read what the
        quotas need. The duplicate check comes after the locks, so that it sees every envelope
        committed by a writer that held one of them."""
        recipients = sorted({env.recipient for call in calls for env in call.envelopes})
        rows = await conn.fetch(_LOCK_MAILBOXES, recipients)
        locked = {bytes(r[0]): (int(r[1]), int(r[2])) for r in rows}
        created = [bytes(r[0]) for r in rows if r[3]]
        totals = await conn.fetchrow(_TOTALS)
        keys = {(env.recipient, env.id) for call in calls for env in call.envelopes}
        held = await conn.fetch(
            "SELECT e.mailbox, e.id FROM unnest($1::bytea[], $2::bytea[]) AS k(mailbox, id)"
            " JOIN envelopes e ON e.mailbox = k.mailbox AND e.id = k.id",
            [m for m, _ in keys],
            [i for _, i in keys],
        )
        present = {(bytes(r[0]), bytes(r[1])) for r in held}
        return cls(conn, quotas, locked, created, (int(totals[0]), int(totals[1])), present)

    async def stage(self, call: PutCall) -> PutResult:
        """Judge one call against the usage so far and stage its rows. A :class:`QuotaError`
        leaves the batch as it was, but for expired envelopes purged on the way (they were
        due to go anyway, and are counted as expired)."""
        quotas = self._quotas
        changed: dict[bytes, list[int]] = {}
        opened: list[bytes] = []
        keys: set[tuple[bytes, bytes]] = set()
        rows: list[tuple[bytes, bytes, bytes]] = []
        total = self.total
        for env in call.envelopes:
            mailbox = env.recipient
            key = (mailbox, env.id)
            if key in self._present or key in keys:
                continue  # a retry of something already held: accepted as it is
            body = wire.encode_envelope(env)
            mine = changed.get(mailbox)
            if mine is None:
                mine = changed[mailbox] = list(self.usage[mailbox])
                if mine[0] == 0:
                    opened.append(mailbox)
            if call.not_before_ms is not None and quotas.overfills(mine, len(body)):
                count, size = await self._purge(mailbox, call.not_before_ms)
                mine[0] -= count
                mine[1] -= size
                total -= size
            total = quotas.charge(mine, total, len(body))
            keys.add(key)
            rows.append((mailbox, env.id, body))
        if opened and self.held + len(opened) > quotas.max_mailboxes:
            raise TooManyMailboxesError("the relay holds as many mailboxes as it allows")
        # A mailbox its owner reads (``in_use``) is not new, even when emptied by acks.
        new = sum(1 for m in opened if m not in call.in_use)
        if call.new_mailbox_allowance is not None and new > call.new_mailbox_allowance:
            raise NewMailboxLimitError("too many new mailboxes from this caller")
        self.usage.update(changed)
        self.total = total
        self.held += len(opened)
        self._present |= keys
        mailboxes, ids, bodies, stored_at, senders = self._rows
        for mailbox, envelope_id, body in rows:
            mailboxes.append(mailbox)
            ids.append(envelope_id)
            bodies.append(body)
            stored_at.append(call.now_ms)
            senders.append(call.sender)
            self._stored[mailbox] = None
        return PutResult([env.id for env in call.envelopes], new)

    async def _purge(self, mailbox: bytes, not_before_ms: int) -> tuple[int, int]:
        # Their senders are told at the next purge: the notices go to mailboxes this batch
        # has not locked.
        await self._conn.execute(_OWE_EXPIRED, mailbox, not_before_ms)
        gone = await self._conn.fetch(
            "DELETE FROM envelopes WHERE mailbox = $1 AND stored_at_ms < $2"
            " RETURNING id, length(body)",
            mailbox,
            not_before_ms,
        )
        count, size = len(gone), sum(int(g[1]) for g in gone)
        self._present -= {(mailbox, bytes(g[0])) for g in gone}
        self.usage[mailbox][0] -= count
        self.usage[mailbox][1] -= size
        self.total -= size
        self._purged += count
        return count, size

    async def write(self, tag: str) -> None:
        """Write the staged rows and usage, and announce the mailboxes that got mail (NOTIFY
        is sent at commit)."""
        conn = self._conn
        if self._rows[0]:
            # seq is handed out in the order of the arrays: the calls' order, then each
            # call's own.
            await conn.execute(
                "INSERT INTO envelopes (mailbox, id, body, stored_at_ms, sender) SELECT * FROM"
                " unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::bigint[], $5::bytea[])",
                *self._rows,
            )
        await _write_usage(conn, self.usage, self._locked, next(iter(self._stored), None))
        unused = [m for m in self._created if self.usage[m] == [0, 0]]
        if unused:
            # Rows made only to lock mailboxes whose calls were all refused.
            await conn.execute(
                "DELETE FROM mailbox_usage WHERE mailbox = ANY($1::bytea[]) AND envelopes = 0",
                unused,
            )
        if self._purged:
            await _add_counter(conn, "envelopes_expired", self._purged)
        if self._stored:
            await conn.execute(_NOTIFY, MAIL_CHANNEL, _payloads(tag, list(self._stored)))
