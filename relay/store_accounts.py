"""The relay's account store: OPAQUE registration records and session-token hashes.

Its own SQLite file (``accounts.sqlite3``) beside the mailbox store, so the two evolve apart.
The schema carries a version (``PRAGMA user_version``); :data:`MIGRATIONS` lists the steps from
each earlier version, applied in order inside one transaction when the store opens.

What a leak of this file gives away: usernames, the identity keys that logged in, and OPAQUE
records. A record is useless for guessing passwords offline without the relay's OPRF seed, which
lives sealed in another file (``relay/accounts.py``); tokens are kept only as SHA-256 hashes.

Live sessions are also held in memory (loaded when the store opens; bounded by the number of
accounts times ``max_sessions_per_account``), so the check that gates every mailbox call costs
no query. All calls are blocking: the service runs them on its executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.core.errors import StorageError
from relay.migrations import MIGRATIONS, SCHEMA_VERSION
from relay.store import DB_ERRORS, INTEGRITY_ERRORS, open_sqlite

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "AccountStore", "Session", "UsernameTakenError"]


class UsernameTakenError(StorageError):
    """The username is already registered."""


class TooManyAccountsError(StorageError):
    """The relay holds as many accounts as it allows."""


@dataclass(frozen=True)
class Session:
    username: str
    identity: bytes
    expires_ms: int


class AccountStore:
    """Accounts by username, and the sessions their logins opened."""

    def __init__(
        self, path: Path, max_accounts: int = 1_000_000, *, key: bytes | None = None
    ) -> None:
        self._max_accounts = max_accounts
        self._sessions: dict[bytes, Session] = {}  # token hash -> session
        self._by_identity: dict[bytes, set[bytes]] = {}  # identity -> token hashes
        self._db = open_sqlite(path, key, "accounts")
        try:
            (self.accounts,) = self._db.execute("SELECT COUNT(*) FROM accounts").fetchone()
            rows = self._db.execute(
                "SELECT token_hash, username, identity, expires_ms FROM sessions"
            ).fetchall()
        except DB_ERRORS as exc:
            raise StorageError(f"cannot open the relay account store at {path}: {exc}") from exc
        for token_hash, username, identity, expires_ms in rows:
            self._remember(bytes(token_hash), Session(username, bytes(identity), expires_ms))

    @property
    def schema_version(self) -> int:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        return int(version)

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def close(self) -> None:
        self._db.close()

    # --- accounts ------------------------------------------------------------------------------

    def record(self, username: str) -> bytes | None:
        row = self._db.execute(
            "SELECT record FROM accounts WHERE username = ?", (username,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def exists(self, username: str) -> bool:
        return self.record(username) is not None

    def register(self, username: str, record: bytes, now_ms: int) -> None:
        """Store a new account's OPAQUE record; an existing name is never overwritten."""
        if self.accounts >= self._max_accounts:
            raise TooManyAccountsError("this relay holds as many accounts as it allows")
        try:
            self._db.execute(
                "INSERT INTO accounts (username, record, created_ms) VALUES (?, ?, ?)",
                (username, record, now_ms),
            )
        except INTEGRITY_ERRORS:
            raise UsernameTakenError(f"{username} is already registered") from None
        except DB_ERRORS as exc:
            raise StorageError(f"relay account store write failed: {exc}") from exc
        self.accounts += 1

    # --- sessions ------------------------------------------------------------------------------

    def open_session(
        self, token_hash: bytes, session: Session, now_ms: int, keep: int
    ) -> list[bytes]:
        """Store a new session; of the account's sessions only the ``keep`` newest stay (the
        others are revoked, so logins cannot grow the table). Returns the revoked hashes."""
        try:
            with _Transaction(self._db):
                self._db.execute(
                    "INSERT INTO sessions (token_hash, username, identity, created_ms,"
                    " expires_ms) VALUES (?, ?, ?, ?, ?)",
                    (token_hash, session.username, session.identity, now_ms, session.expires_ms),
                )
                old = self._db.execute(
                    "SELECT token_hash FROM sessions WHERE username = ?"
                    " ORDER BY created_ms DESC, rowid DESC LIMIT -1 OFFSET ?",
                    (session.username, keep),
                ).fetchall()
                dropped = [bytes(row[0]) for row in old]
                for gone in dropped:
                    self._db.execute("DELETE FROM sessions WHERE token_hash = ?", (gone,))
        except DB_ERRORS as exc:
            raise StorageError(f"relay account store write failed: {exc}") from exc
        for gone in dropped:
            self._forget(gone)
        self._remember(token_hash, session)
        return dropped

    def session(self, token_hash: bytes) -> Session | None:
        return self._sessions.get(token_hash)

    def revoke(self, token_hash: bytes) -> bool:
        try:
            self._db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
        except DB_ERRORS as exc:
            raise StorageError(f"relay account store write failed: {exc}") from exc
        return self._forget(token_hash)

    def has_live_session(self, identity: bytes, now_ms: int) -> bool:
        """Whether ``identity`` holds a session that has not expired (revoked ones are gone)."""
        hashes = self._by_identity.get(identity, ())
        return any(self._sessions[h].expires_ms > now_ms for h in hashes)

    def purge_expired(self, now_ms: int) -> int:
        try:
            rows = self._db.execute(
                "DELETE FROM sessions WHERE expires_ms <= ? RETURNING token_hash", (now_ms,)
            ).fetchall()
        except DB_ERRORS as exc:
            raise StorageError(f"relay account store purge failed: {exc}") from exc
        for (token_hash,) in rows:
            self._forget(bytes(token_hash))
        return len(rows)

    def _remember(self, token_hash: bytes, session: Session) -> None:
        self._sessions[token_hash] = session
        self._by_identity.setdefault(session.identity, set()).add(token_hash)

    def _forget(self, token_hash: bytes) -> bool:
        session = self._sessions.pop(token_hash, None)
        if session is None:
            return False
        hashes = self._by_identity.get(session.identity)
        if hashes is not None:
            hashes.discard(token_hash)
            if not hashes:
                del self._by_identity[session.identity]
        return True


class _Transaction:
    def __init__(self, db: Any) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
