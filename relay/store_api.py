"""What the relay service needs of a store, whichever engine holds it.

Two backends implement these protocols: the embedded SQLite/SQLCipher files
(:class:`SqliteMailboxes`, :class:`SqliteAccounts` and :class:`SqliteDirectory` below, which run
the blocking stores of ``relay/store.py``, ``relay/store_accounts.py`` and
``relay/directory_store.py`` on the runtime's executor) and PostgreSQL (``relay/store_pg.py``,
``relay/directory_pg.py``), which several relay processes share. Every call is async, so the
service never knows which one it has.

Each write is committed before the call returns: an envelope the service acknowledges is
durable. A store that cannot reach its database raises :class:`StoreUnavailableError`, and
the write it was in is rolled back whole.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Container, Iterable, Sequence
from typing import Protocol

from node.core import wire
from node.core.errors import StorageError
from node.core.runtime import Runtime
from relay.batches import put_batches
from relay.directory_store import DirectoryQuotas, DirectoryStore, SuiteCount
from relay.failure_notices import Telling
from relay.store import MailboxStore, Purged, PutCall, PutResult, StoredBatch
from relay.store_accounts import AccountStore, Session

__all__ = [
    "AccountBackend",
    "DirectoryBackend",
    "MailboxBackend",
    "SqliteAccounts",
    "SqliteDirectory",
    "SqliteMailboxes",
    "StoreUnavailableError",
]

# Called with a mailbox that has news, or None when any mailbox may have (after a reconnect).
ArrivalCallback = Callable[[bytes | None], None]


class StoreUnavailableError(StorageError):
    """The relay's database cannot be reached now; nothing of the call was stored."""


class MailboxBackend(Protocol):
    """Envelopes by mailbox, with quotas, expiry and arrival wake-ups."""

    @property
    def mailboxes(self) -> int: ...

    @property
    def total_bytes(self) -> int: ...

    @property
    def expired_purged(self) -> int: ...

    async def put(
        self,
        envelopes: Sequence[wire.Envelope],
        now_ms: int,
        *,
        new_mailbox_allowance: int | None = None,
        not_before_ms: int | None = None,
        in_use: Container[bytes] = frozenset(),
        sender: bytes | None = None,
    ) -> PutResult: ...

    async def fetch(
        self,
        mailbox: bytes,
        cursor: int,
        limit: int,
        max_bytes: int,
        *,
        not_before_ms: int | None = None,
        skip_over: int | None = None,
    ) -> StoredBatch: ...

    async def ack(self, mailbox: bytes, ids: Sequence[bytes]) -> int: ...

    async def purge_expired(self, not_before_ms: int, telling: Telling) -> Purged:
        """Delete envelopes stored before ``not_before_ms`` and store the failure notices
        owed to their senders (``relay.failure_notices``)."""

    async def count(self, mailbox: bytes) -> int: ...

    def on_arrival(self, callback: ArrivalCallback) -> None:
        """Call ``callback(mailbox)`` when another relay process stores into ``mailbox``
        (arrivals through this process are woken by the service itself)."""

    async def close(self) -> None: ...


class AccountBackend(Protocol):
    """OPAQUE records by username, and session-token hashes."""

    @property
    def accounts(self) -> int: ...

    @property
    def sessions(self) -> int: ...

    async def record(self, username: str) -> bytes | None: ...

    async def exists(self, username: str) -> bool: ...

    async def register(self, username: str, record: bytes, now_ms: int) -> None: ...

    async def open_session(
        self, token_hash: bytes, session: Session, now_ms: int, keep: int
    ) -> list[bytes]: ...

    async def session(self, token_hash: bytes) -> Session | None: ...

    async def revoke(self, token_hash: bytes) -> bool: ...

    async def has_live_session(self, identity: bytes, now_ms: int) -> bool: ...

    async def purge_expired(self, now_ms: int) -> int: ...

    async def close(self) -> None: ...


class DirectoryBackend(Protocol):
    """KeyPackages by owner and suite (pool quotas, last-resort ones, expiry), and usernames
    bound to identity keys (``relay/directory_store.py`` says what each call does)."""

    @property
    def quotas(self) -> DirectoryQuotas: ...

    @property
    def identities(self) -> int:
        """Identities holding a KeyPackage here (a gauge: may lag other processes)."""

    @property
    def total_bytes(self) -> int:
        """Bytes of every KeyPackage held (a gauge: may lag other processes)."""

    async def runs_low(self, identity: bytes, low_water: int) -> bool: ...

    async def publish(
        self,
        identity: bytes,
        single_use: Sequence[tuple[int, bytes]],
        last_resort: Sequence[tuple[int, bytes]],
        now_ms: int,
    ) -> list[SuiteCount]: ...

    async def take(self, identity: bytes, not_before_ms: int) -> list[bytes]: ...

    async def purge_expired(self, not_before_ms: int) -> int: ...

    async def bind(self, username: str, identity: bytes, now_ms: int) -> None: ...

    async def identity_of(self, username: str) -> bytes | None: ...

    async def username_of(self, identity: bytes) -> str | None: ...

    async def close(self) -> None: ...


class SqliteMailboxes:
    """:class:`MailboxBackend` over the embedded :class:`MailboxStore` (one process).

    Deliveries that arrive while a write is on the store's thread wait for it and then go
    together, one transaction and one fsync for all of them (each still all or nothing): under
    load the disk's sync latency is paid once a batch, not once a call, and each call's
    envelopes are still durable before it returns. The queue is :class:`relay.batches.Batches`,
    as on PostgreSQL.
    """

    def __init__(self, store: MailboxStore, runtime: Runtime) -> None:
        self.store = store
        self._run = runtime.run_blocking
        self._puts = put_batches(runtime.spawn, self._put_batch)

    @property
    def mailboxes(self) -> int:
        return self.store.mailboxes

    @property
    def total_bytes(self) -> int:
        return self.store.total_bytes

    @property
    def expired_purged(self) -> int:
        return self.store.expired_purged

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
        return await self._run(functools.partial(self.store.put_batch, calls))

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
        store = self.store
        return await self._run(
            lambda: store.fetch(
                mailbox, cursor, limit, max_bytes, not_before_ms=not_before_ms, skip_over=skip_over
            )
        )

    async def ack(self, mailbox: bytes, ids: Iterable[bytes]) -> int:
        store = self.store
        return await self._run(lambda: store.ack(mailbox, ids))

    async def purge_expired(self, not_before_ms: int, telling: Telling) -> Purged:
        store = self.store
        return await self._run(lambda: store.purge_expired(not_before_ms, telling))

    async def count(self, mailbox: bytes) -> int:
        store = self.store
        return await self._run(lambda: store.count(mailbox))

    def on_arrival(self, callback: ArrivalCallback) -> None:
        """One process holds an embedded store: no other process stores into it."""

    async def close(self) -> None:
        await self._puts.wait_idle()
        await self._run(self.store.close)


class SqliteAccounts:
    """:class:`AccountBackend` over the embedded :class:`AccountStore` (one process); its
    sessions are held in memory, so the per-call session check costs no thread hop."""

    def __init__(self, store: AccountStore, runtime: Runtime) -> None:
        self.store = store
        self._run = runtime.run_blocking

    @property
    def accounts(self) -> int:
        return int(self.store.accounts)

    @property
    def sessions(self) -> int:
        return self.store.sessions

    async def record(self, username: str) -> bytes | None:
        store = self.store
        return await self._run(lambda: store.record(username))

    async def exists(self, username: str) -> bool:
        store = self.store
        return await self._run(lambda: store.exists(username))

    async def register(self, username: str, record: bytes, now_ms: int) -> None:
        store = self.store
        await self._run(lambda: store.register(username, record, now_ms))

    async def open_session(
        self, token_hash: bytes, session: Session, now_ms: int, keep: int
    ) -> list[bytes]:
        store = self.store
        return await self._run(lambda: store.open_session(token_hash, session, now_ms, keep))

    async def session(self, token_hash: bytes) -> Session | None:
        return self.store.session(token_hash)

    async def revoke(self, token_hash: bytes) -> bool:
        store = self.store
        return await self._run(lambda: store.revoke(token_hash))

    async def has_live_session(self, identity: bytes, now_ms: int) -> bool:
        return self.store.has_live_session(identity, now_ms)

    async def purge_expired(self, now_ms: int) -> int:
        store = self.store
        return await self._run(lambda: store.purge_expired(now_ms))

    async def close(self) -> None:
        await self._run(self.store.close)


class SqliteDirectory:
    """:class:`DirectoryBackend` over the embedded :class:`DirectoryStore` (one process); its
    counts are held in memory, so the pool-runs-low check on every fetch costs no thread hop."""

    def __init__(self, store: DirectoryStore, runtime: Runtime) -> None:
        self.store = store
        self._run = runtime.run_blocking

    @property
    def quotas(self) -> DirectoryQuotas:
        return self.store.quotas

    @property
    def identities(self) -> int:
        return self.store.identities

    @property
    def total_bytes(self) -> int:
        return self.store.total_bytes

    async def runs_low(self, identity: bytes, low_water: int) -> bool:
        return self.store.runs_low(identity, low_water)

    async def publish(
        self,
        identity: bytes,
        single_use: Sequence[tuple[int, bytes]],
        last_resort: Sequence[tuple[int, bytes]],
        now_ms: int,
    ) -> list[SuiteCount]:
        store = self.store
        return await self._run(lambda: store.publish(identity, single_use, last_resort, now_ms))

    async def take(self, identity: bytes, not_before_ms: int) -> list[bytes]:
        store = self.store
        return await self._run(lambda: store.take(identity, not_before_ms))

    async def purge_expired(self, not_before_ms: int) -> int:
        store = self.store
        return await self._run(lambda: store.purge_expired(not_before_ms))

    async def bind(self, username: str, identity: bytes, now_ms: int) -> None:
        store = self.store
        await self._run(lambda: store.bind(username, identity, now_ms))

    async def identity_of(self, username: str) -> bytes | None:
        store = self.store
        return await self._run(lambda: store.identity_of(username))

    async def username_of(self, identity: bytes) -> str | None:
        store = self.store
        return await self._run(lambda: store.username_of(identity))

    async def close(self) -> None:
        await self._run(self.store.close)
