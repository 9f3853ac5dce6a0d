"""The node's encrypted local database: SQLCipher keyed with a raw key.

What lives here: contacts, the inbox of accepted-but-not-yet-applied envelopes, the ids of
every envelope ever accepted (for exactly-once delivery to the user), the messages the user
has read, the durable outbox, and small settings such as the relay cursor. Every method is
blocking; the node calls them through its :class:`~node.core.runtime.BlockingRunner`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlcipher3

from node.core import wire
from node.core.addresses import Address
from node.core.errors import StorageError
from node.core.keyfile import KdfParams, derive_key, derive_subkey

SCHEMA_VERSION = 3  # 2: mls_bases; 3: conversations, deliveries, message direction and time
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS contacts (
    identity BLOB PRIMARY KEY, name TEXT NOT NULL, host TEXT, port INTEGER
);
CREATE TABLE IF NOT EXISTS seen (envelope_id BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, envelope BLOB NOT NULL, path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    envelope_id BLOB PRIMARY KEY, seq INTEGER NOT NULL, group_id BLOB NOT NULL,
    sender BLOB NOT NULL, text TEXT NOT NULL, path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS peers (
    fingerprint TEXT PRIMARY KEY, name TEXT NOT NULL, source TEXT NOT NULL,
    host TEXT NOT NULL, port INTEGER NOT NULL, status TEXT NOT NULL, seen_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    envelope_id BLOB PRIMARY KEY, recipient BLOB NOT NULL, envelope BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS commits_queued (group_id BLOB PRIMARY KEY, epoch INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS mls_bases (salt BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS conversations (
    conv_id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, group_id BLOB UNIQUE,
    peer BLOB, created_ms INTEGER NOT NULL, read_upto INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'active'
);
CREATE TABLE IF NOT EXISTS deliveries (
    envelope_id BLOB PRIMARY KEY, message_id BLOB NOT NULL, recipient BLOB NOT NULL,
    state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS deliveries_by_message ON deliveries (message_id);
CREATE TABLE IF NOT EXISTS trust (
    identity BLOB PRIMARY KEY, petname TEXT, verified INTEGER NOT NULL DEFAULT 0
);
"""
# Columns added after the table was first shipped: (table, column, declaration).
_ADDED_COLUMNS = (
    ("messages", "direction", "TEXT NOT NULL DEFAULT 'in'"),
    ("messages", "time_ms", "INTEGER NOT NULL DEFAULT 0"),
)


class WrongStoreKeyError(StorageError):
    """The database does not open with this key: a wrong passphrase, a damaged salt or a
    damaged file."""


@dataclass(frozen=True)
class StoredMessage:
    """A chat line kept for the user: received (``envelope_id`` is its envelope's id) or sent
    by this node (``direction`` "out", ``envelope_id`` is a local message id)."""

    envelope_id: bytes
    group_id: bytes
    sender: bytes
    text: str
    path: str
    time_ms: int = 0
    direction: str = "in"
    row: int = 0  # its place in the local log: later rows were kept later


@dataclass(frozen=True)
class StoredConversation:
    conv_id: str
    kind: str  # "dm" | "group" | "notepad"
    name: str
    group_id: bytes | None
    peer: bytes | None
    created_ms: int
    read_upto: int  # the log row of the last message the user has seen
    state: str  # "active" | "left"


@dataclass(frozen=True)
class StoredDelivery:
    envelope_id: bytes
    message_id: bytes
    recipient: bytes
    state: str  # "queued" | "direct" | "relay" | "failed"
    reason: str


@dataclass(frozen=True)
class SeenPeer:
    """A node discovery saw, for ``quicnprotochat peers``."""

    fingerprint: str
    name: str
    source: str  # "lan" | "dht"
    host: str
    port: int
    status: str  # "claimed" | "confirmed" | "refuted" | "record"
    seen_at_ms: int


SALT_SIZE = 16


def read_salt(path: Path) -> bytes:
    """The Argon2 salt of an existing data directory; never creates one."""
    try:
        salt = path.read_bytes()
    except FileNotFoundError:
        raise StorageError(f"{path} is missing") from None
    except OSError as exc:
        raise StorageError(f"{path} cannot be read: {exc.strerror}") from exc
    if len(salt) != SALT_SIZE:
        raise StorageError(f"{path} is damaged (it holds {len(salt)} bytes, not {SALT_SIZE})")
    return salt


def write_salt(path: Path, salt: bytes) -> None:
    """Create the salt of a new data directory: mode 0600, never over an existing one."""
    if len(salt) != SALT_SIZE:
        raise ValueError(f"a salt is {SALT_SIZE} bytes")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, salt)
        os.fsync(fd)
    finally:
        os.close(fd)


def store_keys(passphrase: bytes, salt: bytes, params: KdfParams) -> tuple[bytes, bytes]:
    """(SQLCipher key, MLS state key) from the passphrase and the data dir's salt. Blocking."""
    master = derive_key(passphrase, salt, params)
    return derive_subkey(master, "sqlcipher"), derive_subkey(master, "mls-state")


def derive_store_keys(
    data_dir: Path, passphrase: bytes, params: KdfParams, fresh_salt: bytes
) -> tuple[bytes, bytes]:
    """(SQLCipher key, MLS state key) from the passphrase and the data dir's salt, creating
    the salt from ``fresh_salt`` if there is none yet. Blocking. For a directory that may
    already hold state use :func:`read_salt` and :func:`store_keys`: a new salt next to an
    old database would only end in "wrong passphrase"."""
    path = data_dir / "store.salt"
    if not path.exists():
        write_salt(path, fresh_salt)
    return store_keys(passphrase, read_salt(path), params)


class NodeStore:
    """``create``: make the file if it is missing (a new data directory only); otherwise a
    missing file is refused. ``read_only``: open without writing anything (``doctor``)."""

    def __init__(
        self, path: Path, key: bytes, *, create: bool = True, read_only: bool = False
    ) -> None:
        if len(key) != 32:
            raise ValueError("the database key is 32 bytes")
        self.path = path
        self._key = key
        in_memory = str(path) == ":memory:"
        if not in_memory and not path.exists():
            if not create or read_only:
                raise StorageError(f"{path} is missing")
            # Created 0600 before SQLite opens it; its -wal and -shm files inherit the mode.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            if read_only:
                uri = f"file:{path}?mode=ro"
                self._db = sqlcipher3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False
                )
            else:
                self._db = sqlcipher3.connect(
                    str(path), isolation_level=None, check_same_thread=False
                )
            # A wrong key would otherwise print "ERROR CORE" to stderr.
            self._db.execute("PRAGMA cipher_log_level = NONE")
            self._db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
            # PRAGMA key never fails; the first real read tells a wrong key.
            self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlcipher3.DatabaseError as exc:
            raise WrongStoreKeyError(
                f"{path} does not open: wrong passphrase, or the file is damaged"
            ) from exc
        if not in_memory:
            self._check_integrity()
        if read_only:
            return
        try:
            self._db.execute("PRAGMA synchronous = FULL")
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            # An existing database is not written merely by being opened.
            if version != SCHEMA_VERSION:
                self._db.execute("PRAGMA journal_mode = WAL")
                self._db.executescript(_SCHEMA)
                self._add_columns()
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlcipher3.Error as exc:
            raise StorageError(f"{path} cannot be prepared: {exc}") from exc

    def _add_columns(self) -> None:
        for table, column, declaration in _ADDED_COLUMNS:
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def _check_integrity(self) -> None:
        """Every page's HMAC (SQLCipher), then SQLite's own structure check: a damaged page
        is refused at open, not found later in the middle of receiving a message."""
        try:
            bad = self._db.execute("PRAGMA cipher_integrity_check").fetchall()
            quick = self._db.execute("PRAGMA quick_check").fetchall()
        except sqlcipher3.Error as exc:
            raise StorageError(f"{self.path} is damaged: {exc}") from exc
        if bad or quick != [("ok",)]:
            raise StorageError(f"{self.path} is damaged (its integrity check fails)")

    def close(self) -> None:
        self._db.close()

    def backup_to(self, path: Path) -> None:
        """A consistent copy of the whole database at ``path`` (which must not exist), under
        the same key: SQLite's backup API copies it in one read transaction."""
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            copy = sqlcipher3.connect(str(path))
            try:
                copy.execute("PRAGMA cipher_log_level = NONE")
                copy.execute(f"PRAGMA key = \"x'{self._key.hex()}'\"")
                self._db.backup(copy)
            finally:
                copy.close()
        except sqlcipher3.Error as exc:
            raise StorageError(f"cannot copy {self.path}: {exc}") from exc

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return list(self._db.execute(sql, args).fetchall())
        except sqlcipher3.Error as exc:
            raise StorageError(f"local database read failed: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlcipher3.Error as exc:
            with contextlib.suppress(sqlcipher3.Error):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            raise StorageError(f"local database write failed: {exc}") from exc

    # --- the MLS state file's last recorded point (ADR 0004) ----------------------------------

    def mls_mark(self) -> tuple[bytes | None, set[bytes]]:
        """The mark recorded after the last MLS call, and every base salt seen."""
        rows = self._query("SELECT value FROM meta WHERE key = 'mls_mark'")
        salts = {bytes(s) for (s,) in self._query("SELECT salt FROM mls_bases")}
        return (bytes(rows[0][0]) if rows else None), salts

    def set_mls_mark(self, mark: bytes, salt: bytes) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('mls_mark', ?)", (mark,))
            db.execute("INSERT OR IGNORE INTO mls_bases (salt) VALUES (?)", (salt,))

    # --- settings ---------------------------------------------------------------------------

    def get_int(self, key: str, default: int = 0) -> int:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return int(rows[0][0]) if rows else default

    def set_int(self, key: str, value: int) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def get_secret(self, key: str) -> bytes | None:
        rows = self._query("SELECT value FROM secrets WHERE key = ?", (key,))
        return bytes(rows[0][0]) if rows else None

    def set_secret(self, key: str, value: bytes) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO secrets (key, value) VALUES (?, ?)", (key, value))

    # --- peers seen by discovery ------------------------------------------------------------

    def save_peer(self, peer: SeenPeer) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO peers VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    peer.fingerprint,
                    peer.name,
                    peer.source,
                    peer.host,
                    peer.port,
                    peer.status,
                    peer.seen_at_ms,
                ),
            )

    def forget_peer(self, fingerprint: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM peers WHERE fingerprint = ?", (fingerprint,))

    def peers(self) -> list[SeenPeer]:
        rows = self._query("SELECT * FROM peers ORDER BY seen_at_ms DESC")
        return [SeenPeer(f, n, s, h, int(p), st, int(t)) for f, n, s, h, p, st, t in rows]

    # --- contacts ---------------------------------------------------------------------------

    def save_contact(self, identity: bytes, name: str, address: Address | None) -> None:
        host, port = address if address is not None else (None, None)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO contacts (identity, name, host, port) VALUES (?, ?, ?, ?)",
                (identity, name, host, port),
            )

    def contacts(self) -> list[tuple[bytes, str, Address | None]]:
        rows = self._query("SELECT identity, name, host, port FROM contacts")
        return [(bytes(i), n, (h, int(p)) if h is not None else None) for i, n, h, p in rows]

    # --- receiving --------------------------------------------------------------------------

    def stash_incoming(self, envelopes: Sequence[wire.Envelope], path: str) -> list[bytes]:
        """Persist envelopes not seen before; return their ids. Call before accepting them."""
        fresh = []
        with self._tx() as db:
            for env in envelopes:
                cur = db.execute("INSERT OR IGNORE INTO seen (envelope_id) VALUES (?)", (env.id,))
                if cur.rowcount:
                    db.execute(
                        "INSERT INTO inbox (envelope, path) VALUES (?, ?)",
                        (wire.encode_envelope(env), path),
                    )
                    fresh.append(env.id)
        return fresh

    def pending_incoming(self) -> list[tuple[int, wire.Envelope, str]]:
        rows = self._query("SELECT seq, envelope, path FROM inbox ORDER BY seq")
        return [(int(seq), wire.decode_envelope(bytes(env)), path) for seq, env, path in rows]

    def complete_incoming(self, seq: int, message: StoredMessage | None) -> int | None:
        """The envelope at ``seq`` was applied: drop it from the inbox, keep what it said.
        Returns the message's row in the log (None: no message, or kept before)."""
        with self._tx() as db:
            db.execute("DELETE FROM inbox WHERE seq = ?", (seq,))
            if message is None:
                return None
            cur = _insert_message(db, message, seq)
            return int(cur.lastrowid) if cur.rowcount else None

    def messages(self) -> list[StoredMessage]:
        rows = self._query(
            "SELECT envelope_id, group_id, sender, text, path, time_ms, direction, rowid"
            " FROM messages ORDER BY rowid"
        )
        return [_message(row) for row in rows]

    # --- what the user decided about contacts (node.app.contact_book) ------------------------

    def save_trust(self, identity: bytes, petname: str | None, verified: bool) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO trust VALUES (?, ?, ?)", (identity, petname, int(verified))
            )

    def trust(self) -> dict[bytes, tuple[str | None, bool]]:
        rows = self._query("SELECT identity, petname, verified FROM trust")
        return {bytes(i): (p, bool(v)) for i, p, v in rows}

    # --- conversations (node.app.conversations) ----------------------------------------------

    def save_conversation(self, conv: StoredConversation) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO conversations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conv.conv_id,
                    conv.kind,
                    conv.name,
                    conv.group_id,
                    conv.peer,
                    conv.created_ms,
                    conv.read_upto,
                    conv.state,
                ),
            )

    def conversations(self) -> list[StoredConversation]:
        rows = self._query("SELECT * FROM conversations ORDER BY created_ms, conv_id")
        return [
            StoredConversation(
                c,
                k,
                n,
                None if g is None else bytes(g),
                None if p is None else bytes(p),
                int(t),
                int(r),
                st,
            )
            for c, k, n, g, p, t, r, st in rows
        ]

    def message_page(
        self, group_id: bytes, limit: int, before_row: int | None = None
    ) -> list[StoredMessage]:
        """At most ``limit`` messages of a conversation, newest last, older than ``before_row``
        if given: history is read a page at a time, never all at once."""
        bound = before_row if before_row is not None else 2**62
        rows = self._query(
            "SELECT envelope_id, group_id, sender, text, path, time_ms, direction, rowid"
            " FROM messages WHERE group_id = ? AND rowid < ? ORDER BY rowid DESC LIMIT ?",
            (group_id, bound, limit),
        )
        return [_message(row) for row in reversed(rows)]

    def unread_counts(self) -> dict[bytes, tuple[int, int]]:
        """Per group: (messages received after the conversation's read mark, newest row)."""
        rows = self._query(
            "SELECT m.group_id, SUM(m.direction = 'in' AND m.rowid > c.read_upto), MAX(m.rowid)"
            " FROM messages m JOIN conversations c ON c.group_id = m.group_id"
            " GROUP BY m.group_id"
        )
        return {bytes(g): (int(u or 0), int(n or 0)) for g, u, n in rows}

    def save_outgoing(self, message: StoredMessage) -> int:
        """Keep a message this node sends (before its first attempt); returns its log row."""
        with self._tx() as db:
            cur = _insert_message(db, message, 0)
            return int(cur.lastrowid or 0)

    def save_deliveries(self, deliveries: Sequence[StoredDelivery]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?, ?, ?)",
                [(d.envelope_id, d.message_id, d.recipient, d.state, d.reason) for d in deliveries],
            )

    def update_delivery(self, envelope_id: bytes, state: str, reason: str) -> bytes | None:
        """Record how a tracked envelope fared; returns its message id (None: not tracked)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT message_id FROM deliveries WHERE envelope_id = ?", (envelope_id,)
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE deliveries SET state = ?, reason = ? WHERE envelope_id = ?",
                (state, reason, envelope_id),
            )
            return bytes(row[0])

    def deliveries_of(self, message_ids: Sequence[bytes]) -> list[StoredDelivery]:
        if not message_ids:
            return []
        marks = ", ".join("?" * len(message_ids))
        rows = self._query(
            # Only "?" placeholders are formatted in; the ids are bound.
            f"SELECT * FROM deliveries WHERE message_id IN ({marks}) ORDER BY rowid",  # noqa: S608
            tuple(message_ids),
        )
        return [StoredDelivery(bytes(e), bytes(m), bytes(r), s, w) for e, m, r, s, w in rows]

    def message_group(self, message_id: bytes) -> bytes | None:
        rows = self._query("SELECT group_id FROM messages WHERE envelope_id = ?", (message_id,))
        return bytes(rows[0][0]) if rows else None

    def queued_deliveries(self) -> list[bytes]:
        rows = self._query("SELECT envelope_id FROM deliveries WHERE state = 'queued'")
        return [bytes(e) for (e,) in rows]

    # --- outbox -----------------------------------------------------------------------------

    def outbox_put(
        self,
        items: Sequence[tuple[bytes, wire.Envelope]],
        commit: tuple[bytes, int] | None = None,
    ) -> None:
        """Record (recipient identity, envelope) pairs before the first delivery attempt. With
        ``commit`` = (group id, epoch), they are the fan-out of this node's commit into that
        epoch, and that is recorded in the same transaction."""
        with self._tx() as db:
            for recipient, env in items:
                db.execute(
                    "INSERT OR IGNORE INTO outbox (envelope_id, recipient, envelope)"
                    " VALUES (?, ?, ?)",
                    (env.id, recipient, wire.encode_envelope(env)),
                )
            if commit is not None:
                db.execute(
                    "INSERT OR REPLACE INTO commits_queued (group_id, epoch) VALUES (?, ?)",
                    commit,
                )

    def queued_commit_epoch(self, group_id: bytes) -> int | None:
        """The epoch of the latest own commit of this group whose fan-out was queued."""
        rows = self._query("SELECT epoch FROM commits_queued WHERE group_id = ?", (group_id,))
        return int(rows[0][0]) if rows else None

    def outbox_done(self, envelope_id: bytes) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE envelope_id = ?", (envelope_id,))

    def outbox_failed(self, envelope_id: bytes) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1 WHERE envelope_id = ?", (envelope_id,)
            )

    def outbox_for(self, recipient: bytes) -> list[wire.Envelope]:
        rows = self._query(
            "SELECT envelope FROM outbox WHERE recipient = ? ORDER BY rowid", (recipient,)
        )
        return [wire.decode_envelope(bytes(e)) for (e,) in rows]

    def outbox_count(self) -> int:
        (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def outbox(self) -> list[tuple[bytes, wire.Envelope, int]]:
        rows = self._query("SELECT recipient, envelope, attempts FROM outbox ORDER BY rowid")
        return [(bytes(r), wire.decode_envelope(bytes(e)), int(a)) for r, e, a in rows]


def _insert_message(db: Any, message: StoredMessage, seq: int) -> Any:
    return db.execute(
        "INSERT OR IGNORE INTO messages"
        " (envelope_id, seq, group_id, sender, text, path, time_ms, direction)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            message.envelope_id,
            seq,
            message.group_id,
            message.sender,
            message.text,
            message.path,
            message.time_ms,
            message.direction,
        ),
    )


def _message(row: Sequence[Any]) -> StoredMessage:
    e, g, s, t, p, ms, d, rowid = row
    return StoredMessage(bytes(e), bytes(g), bytes(s), t, p, int(ms), d, int(rowid))
