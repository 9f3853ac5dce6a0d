"""The relay's directory on PostgreSQL: one directory that several relay processes serve.

The same calls and rules as the embedded store (``relay/directory_store.py``), with nothing that
decides a call kept only in one process's memory:

- A write to one identity's KeyPackages (publish, take) first takes a transaction-scoped
  advisory lock on that identity, so the pool quota per suite is exact and a single-use
  KeyPackage is handed out once, whichever process serves the publish and the fetch.
- The bytes of all KeyPackages live in the one-row ``directory_usage``; each write adds its
  change under that row's lock (after the identity lock: one lock order everywhere), so the
  directory's byte cap is exact too.
- Username bindings are serialised by one advisory lock: a binding happens once per login, and
  two logins of one name through two processes must not both find the name free.

:attr:`PgDirectory.identities` and :attr:`PgDirectory.total_bytes` are gauges, re-read at open
and after each purge. Errors are those of :meth:`relay.store_pg.PgStore.connection`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from node.core.errors import StorageError
from relay.batches import Batches
from relay.directory_store import (
    DirectoryFullError,
    DirectoryQuotas,
    KeyPackagePoolFullError,
    SuiteCount,
)
from relay.store_pg import PgStore

__all__ = ["PgDirectory"]

# pg_advisory_xact_lock(class, key): the class keeps these apart from any other advisory lock
# ("qpcd" in ASCII); the key is 32 bits of the identity (two sharing them only wait longer).
_LOCK_CLASS = 0x71706364
_BIND_KEY = 0  # the one lock every binding takes

_COUNTS = """
SELECT suite, SUM(n)::bigint, bool_or(last) FROM (
    SELECT suite, COUNT(*) AS n, false AS last FROM key_packages WHERE identity = $1
    GROUP BY suite
    UNION ALL
    SELECT suite, 0, true FROM last_resort WHERE identity = $1
) AS held GROUP BY suite ORDER BY suite
"""


# The same for several identities at once (the pool-runs-low check of concurrent fetches).
_COUNTS_MANY = """
SELECT identity, SUM(n)::bigint FROM (
    SELECT identity, suite, COUNT(*) AS n FROM key_packages WHERE identity = ANY($1::bytea[])
    GROUP BY identity, suite
    UNION ALL
    SELECT identity, suite, 0 FROM last_resort WHERE identity = ANY($1::bytea[])
) AS held GROUP BY identity, suite
"""
MAX_LOW_BATCH_CALLS = 128


def _identity_key(identity: bytes) -> int:
    return int.from_bytes(hashlib.sha256(identity).digest()[:4], "big", signed=True)


class PgDirectory:
    """:class:`~relay.store_api.DirectoryBackend` on the pool of a :class:`PgStore` (which
    owns the pool: closing this closes nothing)."""

    def __init__(self, store: PgStore, quotas: DirectoryQuotas | None = None) -> None:
        self._store = store
        self.quotas = quotas or DirectoryQuotas()
        self.gauges = (0, 0)  # identities, bytes: as of the last refresh
        # Asked at every fetch of a mailbox: concurrent ones go in one query.
        self._lows: Batches[tuple[bytes, int], bool] = Batches(
            store.spawn,
            self._runs_low_batch,
            max_calls=MAX_LOW_BATCH_CALLS,
            max_weight=MAX_LOW_BATCH_CALLS,
            weigh=lambda _call: 1,
        )

    @property
    def identities(self) -> int:
        return self.gauges[0]

    @property
    def total_bytes(self) -> int:
        return self.gauges[1]

    async def refresh(self) -> None:
        async with self._store.connection() as conn:
            total = await conn.fetchval("SELECT bytes FROM directory_usage")
            owners = await conn.fetchval(
                "SELECT COUNT(*) FROM (SELECT identity FROM key_packages"
                " UNION SELECT identity FROM last_resort) AS owners"
            )
        self.gauges = (int(owners), int(total))

    async def _lock(self, conn: Any, identity: bytes) -> None:
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, $2)", _LOCK_CLASS, _identity_key(identity)
        )

    async def _add_bytes(self, conn: Any, delta: int) -> int:
        total = int(
            await conn.fetchval(
                "UPDATE directory_usage SET bytes = bytes + $1 RETURNING bytes", delta
            )
        )
        self.gauges = (self.gauges[0], total)
        return total

    async def _counts(self, conn: Any, identity: bytes) -> list[SuiteCount]:
        rows = await conn.fetch(_COUNTS, identity)
        return [SuiteCount(int(r[0]), int(r[1]), bool(r[2])) for r in rows]

    # --- KeyPackages ---------------------------------------------------------------------------

    async def runs_low(self, identity: bytes, low_water: int) -> bool:
        return await self._lows.call((identity, low_water))

    async def _runs_low_batch(self, calls: list[tuple[bytes, int]]) -> list[bool | StorageError]:
        """Whether each identity holds fewer than its ``low_water`` single-use KeyPackages of
        some suite it has published (a suite with only a last-resort one counts as none)."""
        async with self._store.connection() as conn:
            rows = await conn.fetch(_COUNTS_MANY, list({identity for identity, _ in calls}))
        fewest: dict[bytes, int] = {}
        for identity, n in rows:
            key = bytes(identity)
            fewest[key] = min(int(n), fewest.get(key, int(n)))
        return [identity in fewest and fewest[identity] < low for identity, low in calls]

    async def publish(
        self,
        identity: bytes,
        single_use: Sequence[tuple[int, bytes]],
        last_resort: Sequence[tuple[int, bytes]],
        now_ms: int,
    ) -> list[SuiteCount]:
        quotas = self.quotas
        async with self._store.connection() as conn, conn.transaction():
            await self._lock(conn, identity)
            singles = {c.suite: c.single_use for c in await self._counts(conn, identity)}
            delta = 0
            for suite, body in single_use:
                status = await conn.execute(
                    "INSERT INTO key_packages (identity, suite, digest, body, stored_at_ms)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (identity, digest) DO NOTHING",
                    identity,
                    suite,
                    hashlib.sha256(body).digest(),
                    body,
                    now_ms,
                )
                if status.endswith(" 0"):
                    continue  # a retry of one already held
                singles[suite] = singles.get(suite, 0) + 1
                delta += len(body)
                if singles[suite] > quotas.max_per_suite:
                    raise KeyPackagePoolFullError(
                        f"this relay holds at most {quotas.max_per_suite} single-use"
                        " KeyPackages per suite for one identity"
                    )
            for rank, (suite, body) in enumerate(last_resort):
                old = await conn.fetchval(
                    "SELECT length(body) FROM last_resort WHERE identity = $1 AND suite = $2",
                    identity,
                    suite,
                )
                delta += len(body) - int(old or 0)
                await conn.execute(
                    "INSERT INTO last_resort (identity, suite, rank, body, stored_at_ms)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (identity, suite) DO UPDATE"
                    " SET rank = excluded.rank, body = excluded.body,"
                    " stored_at_ms = excluded.stored_at_ms",
                    identity,
                    suite,
                    rank,
                    body,
                    now_ms,
                )
            if delta:
                total = await self._add_bytes(conn, delta)
                # As on SQLite: a publish that does not grow the directory is never refused.
                if delta > 0 and total > quotas.max_bytes:
                    raise DirectoryFullError("the relay's directory is full")
            return await self._counts(conn, identity)

    async def take(self, identity: bytes, not_before_ms: int) -> list[bytes]:
        async with self._store.connection() as conn, conn.transaction():
            await self._lock(conn, identity)
            _, freed = await self._purge_owner(conn, identity, not_before_ms)
            ranked = {
                int(r[0]): int(r[1])
                for r in await conn.fetch(
                    "SELECT suite, rank FROM last_resort WHERE identity = $1", identity
                )
            }
            held = [c.suite for c in await self._counts(conn, identity)]
            suites = sorted(held, key=lambda s: (ranked.get(s, len(ranked)), s))
            out: list[bytes] = []
            for suite in suites:
                body = await conn.fetchval(
                    "DELETE FROM key_packages WHERE seq = (SELECT seq FROM key_packages"
                    " WHERE identity = $1 AND suite = $2 ORDER BY seq LIMIT 1)"
                    " RETURNING body",
                    identity,
                    suite,
                )
                if body is not None:
                    out.append(bytes(body))
                    freed += len(body)
                    continue
                body = await conn.fetchval(
                    "SELECT body FROM last_resort WHERE identity = $1 AND suite = $2",
                    identity,
                    suite,
                )
                if body is not None:
                    out.append(bytes(body))
            if freed:
                await self._add_bytes(conn, -freed)
        return out

    async def purge_expired(self, not_before_ms: int) -> int:
        """Delete every KeyPackage stored before ``not_before_ms``, one owner per transaction
        (its lock first, as every writer takes it); return how many went."""
        removed = 0
        async with self._store.connection() as conn:
            owners = await conn.fetch(
                "SELECT identity FROM key_packages WHERE stored_at_ms < $1"
                " UNION SELECT identity FROM last_resort WHERE stored_at_ms < $1",
                not_before_ms,
            )
            for (identity,) in owners:
                async with conn.transaction():
                    await self._lock(conn, bytes(identity))
                    gone, freed = await self._purge_owner(conn, bytes(identity), not_before_ms)
                    if freed:
                        await self._add_bytes(conn, -freed)
                    removed += gone
        await self.refresh()
        return removed

    async def _purge_owner(self, conn: Any, identity: bytes, not_before_ms: int) -> tuple[int, int]:
        """Delete the KeyPackages of ``identity`` stored before ``not_before_ms`` (its lock
        held); return (how many, their bytes)."""
        count = size = 0
        for table in ("key_packages", "last_resort"):
            # The table name is one of our two literals, never input.
            row = await conn.fetchrow(
                f"WITH gone AS (DELETE FROM {table} WHERE identity = $1"  # noqa: S608
                " AND stored_at_ms < $2 RETURNING length(body) AS size)"
                " SELECT COUNT(*), COALESCE(SUM(size), 0) FROM gone",
                identity,
                not_before_ms,
            )
            count += int(row[0])
            size += int(row[1])
        return count, size

    # --- usernames -----------------------------------------------------------------------------

    async def bind(self, username: str, identity: bytes, now_ms: int) -> None:
        async with self._store.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _LOCK_CLASS, _BIND_KEY)
            await conn.execute(
                "DELETE FROM usernames WHERE identity = $1 OR username = $2", identity, username
            )
            await conn.execute(
                "INSERT INTO usernames (username, identity, bound_at_ms) VALUES ($1, $2, $3)",
                username,
                identity,
                now_ms,
            )

    async def identity_of(self, username: str) -> bytes | None:
        async with self._store.connection() as conn:
            found = await conn.fetchval(
                "SELECT identity FROM usernames WHERE username = $1", username
            )
        return None if found is None else bytes(found)

    async def username_of(self, identity: bytes) -> str | None:
        async with self._store.connection() as conn:
            found = await conn.fetchval(
                "SELECT username FROM usernames WHERE identity = $1", identity
            )
        return None if found is None else str(found)

    async def close(self) -> None:
        """The pool is the :class:`PgStore`'s: it closes it."""
        await self._lows.wait_idle()
