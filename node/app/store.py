"""The node's encrypted local database: SQLCipher keyed with a raw key.

What lives here: contacts, the inbox of accepted-but-not-yet-applied envelopes, the ids of
every envelope accepted within the redelivery window (for exactly-once delivery to the user),
the messages the user has read, the durable outbox, invitations waiting for the user's answer,
refusal counters, and small settings such as the relay cursor. Every method is
blocking; the node calls them through its :class:`~node.core.runtime.BlockingRunner`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlcipher3

from node.core import wire
from node.core.addresses import Address
from node.core.errors import NodeError, StorageError
from node.core.identity import mailbox_of, short_fingerprint
from node.core.keyfile import KdfParams, derive_key, derive_subkey

# 2: mls_bases. 3: contacts.chosen, seen.expires_ms, inbox.owner, outbox.created_ms,
# invitations, counters; conversations, deliveries, trust, messages.direction and
# messages.time_ms.
SCHEMA_VERSION = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS contacts (
    identity BLOB PRIMARY KEY, name TEXT NOT NULL, host TEXT, port INTEGER,
    chosen INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS seen (
    envelope_id BLOB PRIMARY KEY, expires_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, envelope BLOB NOT NULL, path TEXT NOT NULL,
    owner BLOB NOT NULL DEFAULT x''
);
CREATE TABLE IF NOT EXISTS messages (
    envelope_id BLOB PRIMARY KEY, seq INTEGER NOT NULL, group_id BLOB NOT NULL,
    sender BLOB NOT NULL, text TEXT NOT NULL, path TEXT NOT NULL,
    direction TEXT NOT NULL DEFAULT 'in', time_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS secrets (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS peers (
    fingerprint TEXT PRIMARY KEY, name TEXT NOT NULL, source TEXT NOT NULL,
    host TEXT NOT NULL, port INTEGER NOT NULL, status TEXT NOT NULL, seen_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    envelope_id BLOB PRIMARY KEY, recipient BLOB NOT NULL, envelope BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, created_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS commits_queued (group_id BLOB PRIMARY KEY, epoch INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS mls_bases (salt BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS invitations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, inviter BLOB NOT NULL, group_id BLOB NOT NULL,
    members BLOB NOT NULL, welcome BLOB NOT NULL, received_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (kind TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS seen_expiry ON seen (expires_ms);
CREATE INDEX IF NOT EXISTS inbox_owner ON inbox (owner);
CREATE INDEX IF NOT EXISTS outbox_recipient ON outbox (recipient);
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
# From version 2 (and 1, which lacks only a table _SCHEMA creates), in the same transaction
# as _SCHEMA. Contacts saved before version 3 are kept as chosen: a version-2 node could not
# tell a contact from a peer merely seen, and demoting them would hide invitations from
# people the user talks to. Ids seen before have no expiry yet (0): the first stash gives
# them a full window.
_FROM_2 = """
ALTER TABLE contacts ADD COLUMN chosen INTEGER NOT NULL DEFAULT 1;
ALTER TABLE seen ADD COLUMN expires_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE inbox ADD COLUMN owner BLOB NOT NULL DEFAULT x'';
ALTER TABLE outbox ADD COLUMN created_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN direction TEXT NOT NULL DEFAULT 'in';
ALTER TABLE messages ADD COLUMN time_ms INTEGER NOT NULL DEFAULT 0;
"""


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


@dataclass
class Stashed:
    """What :meth:`NodeStore.stash_bounded` did with each envelope."""

    fresh: list[bytes] = field(default_factory=list)  # stored now
    duplicate: list[bytes] = field(default_factory=list)  # stored before: accepted again
    refused: dict[bytes, str] = field(default_factory=dict)  # id -> refusal kind


@dataclass(frozen=True)
class StoredInvitation:
    id: int
    inviter: bytes
    group_id: bytes
    members: tuple[bytes, ...]
    welcome: bytes
    received_ms: int


class OutboxFullError(NodeError):
    """Too many envelopes already wait for this recipient (or for everyone): nothing was
    queued."""


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
        self._seen_count: int | None = None
        # The MLS state file's mark not written yet (ADR 0004): the next transaction carries
        # it, so an MLS call and the row it produced cost one commit, not two.
        self._pending_mark: tuple[bytes, bytes] | None = None
        self._outbox_bounds: tuple[int | None, int | None] = (None, None)
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
            if version > SCHEMA_VERSION:
                raise StorageError(
                    f"{path} was written by a newer quicnprotochat (schema {version}, "
                    f"this one knows {SCHEMA_VERSION})"
                )
            if version != SCHEMA_VERSION:
                self._db.execute("PRAGMA journal_mode = WAL")
                upgrade = _FROM_2 if version in (1, 2) else ""
                # One transaction: a crash mid-migration leaves version 2 as it was.
                self._db.executescript(
                    f"BEGIN IMMEDIATE; {upgrade} {_SCHEMA} "
                    f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                )
        except sqlcipher3.Error as exc:
            with contextlib.suppress(sqlcipher3.Error):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            raise StorageError(f"{path} cannot be prepared: {exc}") from exc

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
        if self._pending_mark is not None:
            with contextlib.suppress(StorageError):
                self.flush_mls_mark()
        self._db.close()

    def backup_to(self, path: Path) -> None:
        """A consistent copy of the whole database at ``path`` (which must not exist), under
        the same key: SQLite's backup API copies it in one read transaction."""
        # The copy's mark must name the state file as it is now (the backup cuts it there).
        self.flush_mls_mark()
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
    def batch(self) -> Iterator[None]:
        """One transaction around several of this store's writes (each then joins it): what
        they record commits together, with one synchronous write."""
        with self._tx():
            yield

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        if self._db.in_transaction:
            # Inside batch(): the outer transaction commits (or rolls back) for everyone.
            yield self._db
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                mark = self._pending_mark
                if mark is not None:
                    self._write_mark(self._db, *mark)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            if mark is not None and self._pending_mark is mark:
                self._pending_mark = None
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
        self.defer_mls_mark(mark, salt)
        self.flush_mls_mark()

    def defer_mls_mark(self, mark: bytes, salt: bytes) -> None:
        """Record ``mark`` with the next transaction (whichever it is), or at
        :meth:`flush_mls_mark`."""
        self._pending_mark = (mark, salt)

    @property
    def mls_mark_pending(self) -> bool:
        return self._pending_mark is not None

    def flush_mls_mark(self) -> None:
        """Write the deferred mark now (nothing to do when none is deferred)."""
        if self._pending_mark is not None:
            if self._db.in_transaction:
                # It would commit only with the batch, after the call it must precede.
                raise StorageError("the MLS state's mark cannot be written inside a batch")
            with self._tx():
                pass

    @staticmethod
    def _write_mark(db: Any, mark: bytes, salt: bytes) -> None:
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

    def secrets_named(self, prefix: str) -> dict[str, bytes]:
        """Every secret whose key starts with ``prefix``."""
        rows = self._query(
            "SELECT key, value FROM secrets WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        )
        return {str(k): bytes(v) for k, v in rows}

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

    def save_peer_claim(self, peer: SeenPeer) -> None:
        """What an mDNS advertisement claims: it never replaces a peer a handshake proved
        (a spoofed advertisement carrying a proven peer's fingerprint changes nothing)."""
        if peer.status == "confirmed":
            self.save_peer(peer)
            return
        with self._tx() as db:
            db.execute(
                "INSERT INTO peers VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO"
                " UPDATE SET name = excluded.name, source = excluded.source, host = excluded.host,"
                " port = excluded.port, status = excluded.status,"
                " seen_at_ms = excluded.seen_at_ms WHERE peers.status != 'confirmed'",
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

    def forget_peer_claim(self, fingerprint: str) -> None:
        """An mDNS goodbye: forgets a claim, never a peer a handshake proved."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM peers WHERE fingerprint = ? AND status != 'confirmed'", (fingerprint,)
            )

    def forget_peer(self, fingerprint: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM peers WHERE fingerprint = ?", (fingerprint,))

    def peers(self) -> list[SeenPeer]:
        rows = self._query("SELECT * FROM peers ORDER BY seen_at_ms DESC")
        return [SeenPeer(f, n, s, h, int(p), st, int(t)) for f, n, s, h, p, st, t in rows]

    # --- contacts ---------------------------------------------------------------------------

    def save_contact(
        self, identity: bytes, name: str, address: Address | None, *, chosen: bool = True
    ) -> None:
        """``chosen``: the user chose this identity (else it is kept as a group member's
        address)."""
        host, port = address if address is not None else (None, None)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO contacts (identity, name, host, port, chosen)"
                " VALUES (?, ?, ?, ?, ?)",
                (identity, name, host, port, int(chosen)),
            )

    def contacts(self) -> list[tuple[bytes, str, Address | None]]:
        return [(i, n, a) for i, n, a, _ in self.contacts_chosen()]

    def contacts_chosen(self) -> list[tuple[bytes, str, Address | None, bool]]:
        """(identity, name, address, chosen by the user) of every saved contact."""
        rows = self._query("SELECT identity, name, host, port, chosen FROM contacts")
        return [
            (bytes(i), n, (h, int(p)) if h is not None else None, bool(c)) for i, n, h, p, c in rows
        ]

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

    def seen_ids(self, ids: Sequence[bytes]) -> set[bytes]:
        """Of ``ids``, those of envelopes already received (and not yet expired from ``seen``)."""
        found = set()
        for envelope_id in ids:
            if self._query("SELECT 1 FROM seen WHERE envelope_id = ?", (envelope_id,)):
                found.add(envelope_id)
        return found

    def stash_bounded(
        self,
        envelopes: Sequence[wire.Envelope],
        path: str,
        owners: Sequence[bytes],
        *,
        now_ms: int,
        window_ms: int,
        max_seen: int,
        max_share: int,
    ) -> Stashed:
        """:meth:`stash_incoming` within bounds, in one transaction: ids expire at the
        envelope's ``created_at_ms + window_ms`` (expired ones are deleted first); past
        ``max_seen`` ids, or ``max_share`` inbox rows of one owner (``owners[i]`` for
        ``envelopes[i]``), an envelope is refused, not stored. A duplicate is never refused."""
        result = Stashed()
        with self._tx() as db:
            seen = self._count_seen(db, now_ms, window_ms)
            shares: dict[bytes, int] = {}
            for env, owner in zip(envelopes, owners, strict=True):
                if db.execute("SELECT 1 FROM seen WHERE envelope_id = ?", (env.id,)).fetchone():
                    result.duplicate.append(env.id)
                    continue
                if seen >= max_seen:
                    result.refused[env.id] = "seen_full"
                    continue
                if owner not in shares:
                    (count,) = db.execute(
                        "SELECT COUNT(*) FROM inbox WHERE owner = ?", (owner,)
                    ).fetchone()
                    shares[owner] = int(count)
                if shares[owner] >= max_share:
                    result.refused[env.id] = "deferred_share_full"
                    continue
                db.execute(
                    "INSERT INTO seen (envelope_id, expires_ms) VALUES (?, ?)",
                    (env.id, env.created_at_ms + window_ms),
                )
                db.execute(
                    "INSERT INTO inbox (envelope, path, owner) VALUES (?, ?, ?)",
                    (wire.encode_envelope(env), path, owner),
                )
                seen += 1
                shares[owner] += 1
                result.fresh.append(env.id)
        self._seen_count = seen
        return result

    def _count_seen(self, db: Any, now_ms: int, window_ms: int) -> int:
        """Forget expired ids; date those kept from before expiry existed; count the rest."""
        db.execute("UPDATE seen SET expires_ms = ? WHERE expires_ms = 0", (now_ms + window_ms,))
        gone = db.execute("DELETE FROM seen WHERE expires_ms < ?", (now_ms,)).rowcount
        if self._seen_count is None:
            (count,) = db.execute("SELECT COUNT(*) FROM seen").fetchone()
            return int(count)
        return self._seen_count - max(0, int(gone))

    def seen_count(self) -> int:
        (count,) = self._query("SELECT COUNT(*) FROM seen")[0]
        return int(count)

    def incoming_owners(self) -> dict[int, bytes]:
        """The owner (the share it counts against) of each inbox row, by seq."""
        return {int(q): bytes(o) for q, o in self._query("SELECT seq, owner FROM inbox")}

    def pending_incoming(self) -> list[tuple[int, wire.Envelope, str]]:
        rows = self._query("SELECT seq, envelope, path FROM inbox ORDER BY seq")
        return [(int(seq), wire.decode_envelope(bytes(env)), path) for seq, env, path in rows]

    def incoming_after(self, seq: int) -> tuple[int, list[tuple[int, wire.Envelope, str]]]:
        """How many envelopes wait in all, and those stored after ``seq``, oldest first."""
        (count,) = self._query("SELECT COUNT(*) FROM inbox")[0]
        rows = self._query(
            "SELECT seq, envelope, path FROM inbox WHERE seq > ? ORDER BY seq", (seq,)
        )
        return int(count), [(int(q), wire.decode_envelope(bytes(e)), p) for q, e, p in rows]

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

    def fail_relayed(
        self, undelivered: Sequence[tuple[bytes, bytes]], reason: str
    ) -> list[StoredDelivery]:
        """Mark ``failed`` (with ``reason``) the deliveries a relay took and then dropped
        unfetched: (envelope id, recipient mailbox) pairs from its failure notice. Only one in
        state ``relay`` whose recipient has that mailbox changes; returns those that did."""
        changed: list[StoredDelivery] = []
        with self._tx() as db:
            for envelope_id, mailbox in undelivered:
                row = db.execute(
                    "SELECT message_id, recipient FROM deliveries"
                    " WHERE envelope_id = ? AND state = 'relay'",
                    (envelope_id,),
                ).fetchone()
                if row is None or mailbox_of(bytes(row[1])) != mailbox:
                    continue
                db.execute(
                    "UPDATE deliveries SET state = 'failed', reason = ? WHERE envelope_id = ?",
                    (reason, envelope_id),
                )
                changed.append(
                    StoredDelivery(envelope_id, bytes(row[0]), bytes(row[1]), "failed", reason)
                )
        return changed

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
    ) -> dict[bytes, int]:
        """Record (recipient identity, envelope) pairs before the first delivery attempt. With
        ``commit`` = (group id, epoch), they are the fan-out of this node's commit into that
        epoch, and that is recorded in the same transaction. Past the bounds
        (:meth:`set_outbox_bounds`), application envelopes raise :class:`OutboxFullError` and
        none of ``items`` is queued; other kinds always are. Returns how many envelopes now
        wait for each recipient of ``items``."""
        with self._tx() as db:
            if any(env.kind is wire.EnvelopeKind.APPLICATION for _, env in items):
                self._check_outbox_room(db, items, *self._outbox_bounds)
            for recipient, env in items:
                db.execute(
                    "INSERT OR IGNORE INTO outbox (envelope_id, recipient, envelope, created_ms)"
                    " VALUES (?, ?, ?, ?)",
                    (env.id, recipient, wire.encode_envelope(env), env.created_at_ms),
                )
            if commit is not None:
                db.execute(
                    "INSERT OR REPLACE INTO commits_queued (group_id, epoch) VALUES (?, ?)",
                    commit,
                )
            waiting = {}
            for recipient in dict.fromkeys(r for r, _ in items):
                (count,) = db.execute(
                    "SELECT COUNT(*) FROM outbox WHERE recipient = ?", (recipient,)
                ).fetchone()
                waiting[recipient] = int(count)
            return waiting

    def set_outbox_bounds(self, max_total: int, max_per_recipient: int) -> None:
        """Envelopes the outbox may hold in all, and for one recipient (application
        messages past them are refused)."""
        self._outbox_bounds = (max_total, max_per_recipient)

    @staticmethod
    def _check_outbox_room(
        db: Any,
        items: Sequence[tuple[bytes, wire.Envelope]],
        max_total: int | None,
        max_per_recipient: int | None,
    ) -> None:
        if max_total is not None:
            (total,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
            if int(total) + len(items) > max_total:
                raise OutboxFullError(
                    f"the outbox is full ({total} envelopes wait; at most {max_total})"
                )
        if max_per_recipient is not None:
            adding: dict[bytes, int] = {}
            for recipient, _ in items:
                adding[recipient] = adding.get(recipient, 0) + 1
            for recipient, n in adding.items():
                (queued,) = db.execute(
                    "SELECT COUNT(*) FROM outbox WHERE recipient = ?", (recipient,)
                ).fetchone()
                if int(queued) + n > max_per_recipient:
                    raise OutboxFullError(
                        f"{queued} envelopes already wait for {short_fingerprint(recipient)} "
                        f"(at most {max_per_recipient}): nothing was queued"
                    )

    def outbox_expire(
        self, before_ms: int, now_ms: int, reason: str = "not delivered in time"
    ) -> list[tuple[bytes, bytes]]:
        """Drop queued envelopes made before ``before_ms`` (a recipient would refuse them);
        those queued before creation times were kept get ``now_ms``. Their deliveries become
        ``failed`` with ``reason``, in the same transaction. Returns (envelope id, recipient)
        of each that went."""
        with self._tx() as db:
            db.execute("UPDATE outbox SET created_ms = ? WHERE created_ms = 0", (now_ms,))
            gone = [
                (bytes(e), bytes(r))
                for e, r in db.execute(
                    "SELECT envelope_id, recipient FROM outbox WHERE created_ms < ?", (before_ms,)
                ).fetchall()
            ]
            db.execute("DELETE FROM outbox WHERE created_ms < ?", (before_ms,))
            db.executemany(
                "UPDATE deliveries SET state = 'failed', reason = ? WHERE envelope_id = ?",
                [(reason, envelope_id) for envelope_id, _ in gone],
            )
            return gone

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

    # --- invitations waiting for the user ---------------------------------------------------

    def add_invitation(
        self,
        inviter: bytes,
        group_id: bytes,
        members: Sequence[bytes],
        welcome: bytes,
        received_ms: int,
        *,
        max_total: int,
        max_per_inviter: int,
    ) -> int | str:
        """Keep a Welcome for the user to accept or refuse; its id, or the refusal kind when
        ``max_total`` wait already, or ``max_per_inviter`` from this inviter. The same
        inviter's Welcome to the same group again (applied again after a crash) is the one
        already kept."""
        with self._tx() as db:
            same = db.execute(
                "SELECT id FROM invitations WHERE inviter = ? AND group_id = ?",
                (inviter, group_id),
            ).fetchone()
            if same:
                return int(same[0])
            (by_inviter,) = db.execute(
                "SELECT COUNT(*) FROM invitations WHERE inviter = ?", (inviter,)
            ).fetchone()
            if int(by_inviter) >= max_per_inviter:
                return "invitation_per_inviter"
            (total,) = db.execute("SELECT COUNT(*) FROM invitations").fetchone()
            if int(total) >= max_total:
                return "invitations_full"
            cur = db.execute(
                "INSERT INTO invitations (inviter, group_id, members, welcome, received_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                (inviter, group_id, b"".join(members), welcome, received_ms),
            )
            return int(cur.lastrowid)

    def invitations(self) -> list[StoredInvitation]:
        rows = self._query(
            "SELECT id, inviter, group_id, members, welcome, received_ms FROM invitations"
            " ORDER BY id"
        )
        return [
            StoredInvitation(
                int(i), bytes(s), bytes(g), _split_identities(bytes(m)), bytes(w), int(t)
            )
            for i, s, g, m, w, t in rows
        ]

    def drop_invitation(self, invitation_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM invitations WHERE id = ?", (invitation_id,))

    def expire_invitations(self, before_ms: int) -> list[int]:
        """Drop invitations received before ``before_ms``; return their ids."""
        with self._tx() as db:
            ids = [
                int(i)
                for (i,) in db.execute(
                    "SELECT id FROM invitations WHERE received_ms < ?", (before_ms,)
                ).fetchall()
            ]
            db.execute("DELETE FROM invitations WHERE received_ms < ?", (before_ms,))
        return ids

    # --- refusal counters -------------------------------------------------------------------

    def add_counts(self, counts: dict[str, int]) -> None:
        with self._tx() as db:
            for kind, n in counts.items():
                db.execute(
                    "INSERT INTO counters (kind, count) VALUES (?, ?)"
                    " ON CONFLICT (kind) DO UPDATE SET count = count + excluded.count",
                    (kind, n),
                )

    def counts(self) -> dict[str, int]:
        return {k: int(n) for k, n in self._query("SELECT kind, count FROM counters")}

    def incoming_count(self) -> int:
        (count,) = self._query("SELECT COUNT(*) FROM inbox")[0]
        return int(count)


IDENTITY_SIZE = 32


def _split_identities(joined: bytes) -> tuple[bytes, ...]:
    return tuple(joined[i : i + IDENTITY_SIZE] for i in range(0, len(joined), IDENTITY_SIZE))


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
