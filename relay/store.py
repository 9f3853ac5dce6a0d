"""The relay's mailbox store: an embedded SQLite database under the data dir.

Each envelope is committed (``synchronous=FULL``) before ``deliver`` answers, so an accepted
envelope survives a relay crash. Envelope ids are unique per mailbox; delivering one twice is
accepted and stored once. All calls are blocking: the service runs them on its executor.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.core import wire
from node.core.errors import StorageError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS envelopes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox BLOB NOT NULL,
    id BLOB NOT NULL,
    body BLOB NOT NULL,
    stored_at_ms INTEGER NOT NULL,
    UNIQUE (mailbox, id)
);
CREATE INDEX IF NOT EXISTS envelopes_by_mailbox ON envelopes (mailbox, seq);
"""


# Bytes an envelope costs inside a FetchResult beyond its standalone encoding (list element and
# pointers); generous, since overshooting only shortens a batch.
_LIST_OVERHEAD = 64


class MailboxFullError(StorageError):
    """The recipient's mailbox holds as many envelopes as the relay allows."""


@dataclass(frozen=True)
class StoredBatch:
    envelopes: tuple[wire.Envelope, ...]
    cursor: int


class MailboxStore:
    """Envelopes by mailbox, in arrival order, until the owner acknowledges them."""

    def __init__(self, path: Path, max_per_mailbox: int = 10_000) -> None:
        self._max = max_per_mailbox
        if not path.exists():
            # Created 0600 before SQLite opens it; its -wal and -shm files inherit the mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the relay store at {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def put(self, envelopes: Sequence[wire.Envelope], now_ms: int) -> list[bytes]:
        """Store envelopes atomically; return the ids now held (new or already present)."""
        try:
            with self._transaction():
                for env in envelopes:
                    if self._db.execute(
                        "SELECT 1 FROM envelopes WHERE mailbox = ? AND id = ?",
                        (env.recipient, env.id),
                    ).fetchone():
                        continue  # a retry of something already held: accepted as it is
                    (count,) = self._db.execute(
                        "SELECT COUNT(*) FROM envelopes WHERE mailbox = ?", (env.recipient,)
                    ).fetchone()
                    if count >= self._max:
                        raise MailboxFullError("the recipient's mailbox on this relay is full")
                    self._db.execute(
                        "INSERT OR IGNORE INTO envelopes (mailbox, id, body, stored_at_ms)"
                        " VALUES (?, ?, ?, ?)",
                        (env.recipient, env.id, wire.encode_envelope(env), now_ms),
                    )
        except sqlite3.Error as exc:
            raise StorageError(f"relay store write failed: {exc}") from exc
        return [env.id for env in envelopes]

    def fetch(self, mailbox: bytes, cursor: int, limit: int, max_bytes: int) -> StoredBatch:
        """Envelopes after ``cursor``, oldest first: at most ``limit`` of them and, past the
        first, no more than ``max_bytes`` encoded, so that the answer fits in one frame."""
        rows = self._db.execute(
            "SELECT seq, body FROM envelopes WHERE mailbox = ? AND seq > ? ORDER BY seq LIMIT ?",
            (mailbox, cursor, limit),
        ).fetchall()
        taken: list[wire.Envelope] = []
        size = 0
        last = cursor
        for seq, body in rows:
            size += len(body) + _LIST_OVERHEAD
            if taken and size > max_bytes:
                break
            taken.append(wire.decode_envelope(body))
            last = seq
        return StoredBatch(tuple(taken), last)

    def ack(self, mailbox: bytes, ids: Iterable[bytes]) -> int:
        removed = 0
        with self._transaction():
            for envelope_id in ids:
                cur = self._db.execute(
                    "DELETE FROM envelopes WHERE mailbox = ? AND id = ?", (mailbox, envelope_id)
                )
                removed += cur.rowcount
        return removed

    def count(self, mailbox: bytes) -> int:
        (n,) = self._db.execute(
            "SELECT COUNT(*) FROM envelopes WHERE mailbox = ?", (mailbox,)
        ).fetchone()
        return int(n)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
