"""The relay's directory store: KeyPackages held for their owners, and username bindings.

Its own SQLite file (``directory.sqlite3``) beside the mailbox and account stores, SQLCipher when
the relay has a ``db_key``; its schema is the ``directory`` part of the one migration list
(``relay/migrations.py``), applied when the store opens. This is the embedded backend: several
relay processes share the PostgreSQL one (``relay/directory_pg.py``), and the service reaches
either through :class:`~relay.store_api.DirectoryBackend`.

* **KeyPackages.** Per identity and suite: a pool of single-use ones, each handed out once
  (oldest first), and at most one last-resort one, handed out without being used up when the
  pool is empty. A KeyPackage older than ``max_age_ms`` is never handed out and is purged
  (an MLS KeyPackage has a lifetime: the owner publishes fresh ones long before it ends).
* **Usernames.** One row per username: the identity key that last logged in as it. An identity
  is bound to one username at most (its latest login). See ``docs/adr/0007-relay-directory.md``.

What the store checks is only what is about its own size (pool per suite, bytes in all): whose
KeyPackages they are and whether they verify is the service's job, before it calls. Counts per
identity and suite are kept in memory (loaded when the store opens), so the check that tells a
mailbox owner its pool runs low costs no query. All calls are blocking: the service runs them
on its executor.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.core.errors import StorageError
from relay.store import DB_ERRORS, open_sqlite


class DirectoryQuotaError(StorageError):
    """A publish was refused by a quota; ``trigger`` names which (for the relay's counters)."""

    trigger = "refused_directory_quota"


class KeyPackagePoolFullError(DirectoryQuotaError):
    """The publisher's pool of one suite would hold more than the relay allows."""

    trigger = "refused_key_package_pool"


class DirectoryFullError(DirectoryQuotaError):
    """All KeyPackages together would take more bytes than the relay allows."""

    trigger = "refused_directory_full"


@dataclass(frozen=True)
class DirectoryQuotas:
    max_per_suite: int = 32  # single-use KeyPackages per identity and suite
    max_bytes: int = 1 << 30  # every KeyPackage held, single-use and last-resort
    max_age_ms: int = 28 * 24 * 3600 * 1000


@dataclass(frozen=True)
class SuiteCount:
    suite: int
    single_use: int
    last_resort: bool


@dataclass
class _Holding:
    single_use: dict[int, int]  # suite -> count
    last_resort: dict[int, int]  # suite -> bytes of the last-resort one


class DirectoryStore:
    """KeyPackages by owner and suite, and usernames bound to identity keys."""

    def __init__(
        self, path: Path, quotas: DirectoryQuotas | None = None, *, key: bytes | None = None
    ) -> None:
        self.quotas = quotas or DirectoryQuotas()
        self._held: dict[bytes, _Holding] = {}
        self.total_bytes = 0
        self._db: Any = open_sqlite(path, key, "directory")
        try:
            singles = self._db.execute(
                "SELECT identity, suite, COUNT(*), SUM(LENGTH(body)) FROM key_packages"
                " GROUP BY identity, suite"
            ).fetchall()
            lasts = self._db.execute(
                "SELECT identity, suite, LENGTH(body) FROM last_resort"
            ).fetchall()
        except DB_ERRORS as exc:
            self._db.close()
            raise StorageError(f"cannot open the relay directory at {path}: {exc}") from exc
        for identity, suite, count, size in singles:
            self._holding(bytes(identity)).single_use[int(suite)] = int(count)
            self.total_bytes += int(size)
        for identity, suite, size in lasts:
            self._holding(bytes(identity)).last_resort[int(suite)] = int(size)
            self.total_bytes += int(size)

    @property
    def schema_version(self) -> int:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        return int(version)

    @property
    def identities(self) -> int:
        """Identities holding at least one KeyPackage here."""
        return len(self._held)

    def close(self) -> None:
        self._db.close()

    def _holding(self, identity: bytes) -> _Holding:
        held = self._held.get(identity)
        if held is None:
            held = self._held[identity] = _Holding({}, {})
        return held

    def _settle(self, identity: bytes) -> None:
        held = self._held.get(identity)
        if held is None:
            return
        held.single_use = {s: n for s, n in held.single_use.items() if n > 0}
        if not held.single_use and not held.last_resort:
            del self._held[identity]

    # --- KeyPackages ---------------------------------------------------------------------------

    def counts(self, identity: bytes) -> list[SuiteCount]:
        """What ``identity`` holds here, per suite (by code point)."""
        held = self._held.get(identity)
        if held is None:
            return []
        suites = sorted(set(held.single_use) | set(held.last_resort))
        return [SuiteCount(s, held.single_use.get(s, 0), s in held.last_resort) for s in suites]

    def runs_low(self, identity: bytes, low_water: int) -> bool:
        """Whether, in a suite ``identity`` published, fewer than ``low_water`` single-use
        KeyPackages are left (False for an identity that published none)."""
        held = self._held.get(identity)
        if held is None:
            return False
        suites = set(held.single_use) | set(held.last_resort)
        return any(held.single_use.get(s, 0) < low_water for s in suites)

    def publish(
        self,
        identity: bytes,
        single_use: Sequence[tuple[int, bytes]],
        last_resort: Sequence[tuple[int, bytes]],
        now_ms: int,
    ) -> list[SuiteCount]:
        """Add ``single_use`` (suite, KeyPackage) pairs to the pool of ``identity`` and make
        each of ``last_resort`` its last-resort one of that suite (their order is the owner's
        preference). All or nothing: raises a :class:`DirectoryQuotaError` and stores nothing
        when a quota would be exceeded. One already held is accepted and kept once."""
        quotas = self.quotas
        held = self._held.get(identity) or _Holding({}, {})
        singles = dict(held.single_use)
        lasts = dict(held.last_resort)
        total = self.total_bytes
        try:
            with _Transaction(self._db):
                for suite, body in single_use:
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO key_packages"
                        " (identity, suite, digest, body, stored_at_ms) VALUES (?, ?, ?, ?, ?)",
                        (identity, suite, hashlib.sha256(body).digest(), body, now_ms),
                    )
                    if cursor.rowcount == 0:
                        continue  # a retry of one already held
                    singles[suite] = singles.get(suite, 0) + 1
                    total += len(body)
                    if singles[suite] > quotas.max_per_suite:
                        raise KeyPackagePoolFullError(
                            f"this relay holds at most {quotas.max_per_suite} single-use"
                            " KeyPackages per suite for one identity"
                        )
                for rank, (suite, body) in enumerate(last_resort):
                    total += len(body) - lasts.get(suite, 0)
                    lasts[suite] = len(body)
                    self._db.execute(
                        "INSERT OR REPLACE INTO last_resort"
                        " (identity, suite, rank, body, stored_at_ms) VALUES (?, ?, ?, ?, ?)",
                        (identity, suite, rank, body, now_ms),
                    )
                if total > quotas.max_bytes and total > self.total_bytes:
                    raise DirectoryFullError("the relay's directory is full")
        except DB_ERRORS as exc:
            raise StorageError(f"relay directory write failed: {exc}") from exc
        mine = self._holding(identity)
        mine.single_use, mine.last_resort = singles, lasts
        self.total_bytes = total
        self._settle(identity)
        return self.counts(identity)

    def take(self, identity: bytes, not_before_ms: int) -> list[bytes]:
        """One KeyPackage of ``identity`` per suite, the owner's preferred suite first: the
        oldest single-use one, which is used up, else the last-resort one, which stays.
        KeyPackages stored before ``not_before_ms`` are too old: dropped, never handed out."""
        if identity not in self._held:
            return []
        self._purge_owner(identity, not_before_ms)
        held = self._held.get(identity)
        if held is None:
            return []
        try:
            with _Transaction(self._db):
                ranked = dict(
                    self._db.execute(
                        "SELECT suite, rank FROM last_resort WHERE identity = ?", (identity,)
                    ).fetchall()
                )
                suites = sorted(
                    set(held.single_use) | set(held.last_resort),
                    key=lambda s: (ranked.get(s, len(ranked)), s),
                )
                out: list[bytes] = []
                taken: list[tuple[int, int]] = []
                for suite in suites:
                    row = self._db.execute(
                        "DELETE FROM key_packages WHERE seq = (SELECT seq FROM key_packages"
                        " WHERE identity = ? AND suite = ? ORDER BY seq LIMIT 1)"
                        " RETURNING body",
                        (identity, suite),
                    ).fetchone()
                    if row is not None:
                        out.append(bytes(row[0]))
                        taken.append((suite, len(row[0])))
                        continue
                    row = self._db.execute(
                        "SELECT body FROM last_resort WHERE identity = ? AND suite = ?",
                        (identity, suite),
                    ).fetchone()
                    if row is not None:
                        out.append(bytes(row[0]))
        except DB_ERRORS as exc:
            raise StorageError(f"relay directory write failed: {exc}") from exc
        for suite, size in taken:
            held.single_use[suite] -= 1
            self.total_bytes -= size
        self._settle(identity)
        return out

    def _purge_owner(self, identity: bytes, not_before_ms: int) -> None:
        try:
            with _Transaction(self._db):
                singles = self._db.execute(
                    "DELETE FROM key_packages WHERE identity = ? AND stored_at_ms < ?"
                    " RETURNING suite, LENGTH(body)",
                    (identity, not_before_ms),
                ).fetchall()
                lasts = self._db.execute(
                    "DELETE FROM last_resort WHERE identity = ? AND stored_at_ms < ?"
                    " RETURNING suite, LENGTH(body)",
                    (identity, not_before_ms),
                ).fetchall()
        except DB_ERRORS as exc:
            raise StorageError(f"relay directory purge failed: {exc}") from exc
        self._forget([(identity, s, n) for s, n in singles], [(identity, s, n) for s, n in lasts])

    def _forget(
        self, singles: list[tuple[bytes, int, int]], lasts: list[tuple[bytes, int, int]]
    ) -> None:
        owners = set()
        for identity, suite, size in singles:
            held = self._held.get(identity)
            if held is not None:
                held.single_use[int(suite)] = held.single_use.get(int(suite), 1) - 1
            self.total_bytes -= int(size)
            owners.add(identity)
        for identity, suite, size in lasts:
            held = self._held.get(identity)
            if held is not None:
                held.last_resort.pop(int(suite), None)
            self.total_bytes -= int(size)
            owners.add(identity)
        for identity in owners:
            self._settle(identity)

    def purge_expired(self, not_before_ms: int) -> int:
        """Delete every KeyPackage stored before ``not_before_ms``; return how many went."""
        try:
            with _Transaction(self._db):
                singles = self._db.execute(
                    "DELETE FROM key_packages WHERE stored_at_ms < ?"
                    " RETURNING identity, suite, LENGTH(body)",
                    (not_before_ms,),
                ).fetchall()
                lasts = self._db.execute(
                    "DELETE FROM last_resort WHERE stored_at_ms < ?"
                    " RETURNING identity, suite, LENGTH(body)",
                    (not_before_ms,),
                ).fetchall()
        except DB_ERRORS as exc:
            raise StorageError(f"relay directory purge failed: {exc}") from exc
        self._forget(
            [(bytes(i), s, n) for i, s, n in singles], [(bytes(i), s, n) for i, s, n in lasts]
        )
        return len(singles) + len(lasts)

    # --- usernames -----------------------------------------------------------------------------

    def bind(self, username: str, identity: bytes, now_ms: int) -> None:
        """``username`` now resolves to ``identity``, and ``identity`` to ``username`` alone
        (an earlier name of that identity, and an earlier identity of that name, let go)."""
        try:
            with _Transaction(self._db):
                self._db.execute(
                    "DELETE FROM usernames WHERE identity = ? OR username = ?",
                    (identity, username),
                )
                self._db.execute(
                    "INSERT INTO usernames (username, identity, bound_at_ms) VALUES (?, ?, ?)",
                    (username, identity, now_ms),
                )
        except DB_ERRORS as exc:
            raise StorageError(f"relay directory write failed: {exc}") from exc

    def identity_of(self, username: str) -> bytes | None:
        row = self._lookup("SELECT identity FROM usernames WHERE username = ?", username)
        return None if row is None else bytes(row[0])

    def username_of(self, identity: bytes) -> str | None:
        row = self._lookup("SELECT username FROM usernames WHERE identity = ?", identity)
        return None if row is None else str(row[0])

    def _lookup(self, query: str, value: str | bytes) -> Any:
        try:
            return self._db.execute(query, (value,)).fetchone()
        except DB_ERRORS as exc:
            raise StorageError(f"relay directory read failed: {exc}") from exc


class _Transaction:
    def __init__(self, db: Any) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
