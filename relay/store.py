"""The relay's mailbox store: an embedded SQLite database under the data dir.

Each envelope is committed (``synchronous=FULL``) before ``deliver`` answers, so an accepted
envelope survives a relay crash. An ``ack`` is committed without waiting for the disk
(``synchronous=NORMAL`` for that transaction): a crash of the machine may bring back an
acknowledged envelope, which its owner fetches again and drops by id, and the next durable
commit syncs it anyway; one fsync a round instead of two. Envelope ids are unique per
mailbox; delivering one twice is accepted and stored once. All calls are blocking: the
service runs them on its executor (``relay.store_api``, which also batches concurrent
deliveries into one transaction, :meth:`MailboxStore.put_batch`).

Quotas are checked inside the same transaction as the write: envelopes and bytes per mailbox,
the number of mailboxes and the bytes of the whole store. The store keeps a count and byte
total per mailbox in memory (loaded when it opens), so a check costs no query.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlcipher3

from node.core import wire
from node.core.errors import StorageError
from relay.failure_notices import OWED_BATCH, Owed, Telling, notices_for
from relay.migrations import SqlitePart, migrate_sqlite

# Either library's errors: a keyed store is opened with sqlcipher3, a plain one with sqlite3
# (one library per file: two SQLite libraries in one process must not share a file).
DB_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, sqlcipher3.Error)
INTEGRITY_ERRORS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, sqlcipher3.IntegrityError)
_PLAIN_HEADER = b"SQLite format 3\x00"


class WrongDbKeyError(StorageError):
    """The relay's store does not open with the configured ``db_key``."""


def open_sqlite(path: Path, key: bytes | None, part: SqlitePart) -> Any:
    """Open (creating 0600) and migrate one relay SQLite file; with ``key`` (32 raw bytes) it is
    SQLCipher, and a plain file from before the key was set is encrypted in place first."""
    if not path.exists():
        # Created 0600 before SQLite opens it; its -wal and -shm files inherit the mode.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    elif key is not None and _is_plain(path):
        _encrypt_plain(path, key)
    elif key is None and path.stat().st_size > 0 and not _is_plain(path):
        # sqlite3 would only say "file is not a database".
        raise WrongDbKeyError(f"{path} is encrypted (SQLCipher), and no db_key is configured")
    try:
        if key is None:
            db: Any = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        else:
            db = sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False)
            # A wrong key would otherwise print "ERROR CORE" to stderr.
            db.execute("PRAGMA cipher_log_level = NONE")
            db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
            try:
                # PRAGMA key never fails; the first real read tells a wrong key.
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlcipher3.DatabaseError:
                db.close()
                raise WrongDbKeyError(
                    f"{path} does not open with the configured db_key (wrong key, or damaged)"
                ) from None
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
    except DB_ERRORS as exc:
        raise StorageError(f"cannot open the relay store at {path}: {exc}") from exc
    migrate_sqlite(db, part, str(path), DB_ERRORS)
    return db


def _is_plain(path: Path) -> bool:
    with path.open("rb") as file:
        header = file.read(len(_PLAIN_HEADER))
    return header == _PLAIN_HEADER


def _encrypt_plain(path: Path, key: bytes) -> None:
    """Copy a plain file into a new SQLCipher one (``sqlcipher_export``) and move it over the
    old: a crash leaves either the plain file or the encrypted one, never half of each."""
    tmp = path.with_name(path.name + ".encrypting")
    tmp.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        path.with_name(tmp.name + suffix).unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        db = sqlcipher3.connect(str(path), isolation_level=None)
        try:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            db.execute("ATTACH DATABASE ? AS encrypted KEY ?", (str(tmp), f"x'{key.hex()}'"))
            db.execute("SELECT sqlcipher_export('encrypted')")
            # sqlcipher_export does not copy the version.
            db.execute(f"PRAGMA encrypted.user_version = {int(version):d}")
            db.execute("DETACH DATABASE encrypted")
        finally:
            db.close()
    except sqlcipher3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot encrypt the plain relay store {path}: {exc}") from exc
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


# Bytes an envelope costs inside a FetchResult beyond its standalone encoding (list element and
# pointers); generous, since overshooting only shortens a batch.
_LIST_OVERHEAD = 64


class QuotaError(StorageError):
    """A write was refused by a quota; ``trigger`` names which (for the relay's counters)."""

    trigger = "quota"


class MailboxFullError(QuotaError):
    """The recipient's mailbox holds as many envelopes as the relay allows."""

    trigger = "refused_mailbox_envelopes"


class MailboxBytesError(QuotaError):
    """The recipient's mailbox holds as many bytes as the relay allows."""

    trigger = "refused_mailbox_bytes"


class StoreFullError(QuotaError):
    """The whole store holds as many bytes as the relay allows."""

    trigger = "refused_store_bytes"


class TooManyMailboxesError(QuotaError):
    """The relay holds as many mailboxes as it allows."""

    trigger = "refused_store_mailboxes"


class NewMailboxLimitError(QuotaError):
    """The caller may not open that many new mailboxes now."""

    trigger = "refused_new_mailboxes"


@dataclass(frozen=True)
class StoreQuotas:
    max_per_mailbox: int = 10_000
    max_mailbox_bytes: int = 64 << 20
    max_mailboxes: int = 100_000
    max_store_bytes: int = 4 << 30

    def overfills(self, usage: list[int], size: int) -> bool:
        """Whether one more envelope of ``size`` bytes overfills a mailbox holding ``usage``
        ([envelopes, bytes]): then its expired envelopes are purged first."""
        return usage[0] + 1 > self.max_per_mailbox or usage[1] + size > self.max_mailbox_bytes

    def charge(self, usage: list[int], total: int, size: int) -> int:
        """Count one more envelope of ``size`` bytes against a mailbox's ``usage`` (changed in
        place) and the store's ``total`` bytes; returns the new total. Raises the quota's error,
        changing nothing, when it is over."""
        if usage[0] + 1 > self.max_per_mailbox:
            raise MailboxFullError("the recipient's mailbox on this relay is full")
        if usage[1] + size > self.max_mailbox_bytes:
            raise MailboxBytesError("the recipient's mailbox on this relay is full")
        if total + size > self.max_store_bytes:
            raise StoreFullError("the relay's store is full")
        usage[0] += 1
        usage[1] += size
        return total + size


@dataclass(frozen=True)
class StoredBatch:
    envelopes: tuple[wire.Envelope, ...]
    cursor: int
    skipped: int = 0


@dataclass(frozen=True)
class PutResult:
    ids: list[bytes]
    new_mailboxes: int  # mailboxes the call opened that are not in ``in_use`` (charged to it)


@dataclass(frozen=True)
class PutCall:
    """The arguments of one :meth:`MailboxStore.put`, for :meth:`MailboxStore.put_batch`."""

    envelopes: tuple[wire.Envelope, ...]
    now_ms: int
    new_mailbox_allowance: int | None = None
    not_before_ms: int | None = None
    in_use: Container[bytes] = frozenset()
    # The caller's mailbox, kept with each envelope so that it can be told if one expires
    # unfetched (``relay.failure_notices``); None keeps no trace of who delivered.
    sender: bytes | None = None


@dataclass(frozen=True)
class Purged:
    """What one purge did: envelopes deleted at the end of their TTL, failure notices stored
    in their senders' mailboxes, and expired envelopes no notice could name (its sender's
    mailbox, or the store, was full)."""

    expired: int
    notices: int = 0
    untold: int = 0
    told: tuple[bytes, ...] = ()  # the mailboxes that got a notice (to wake their long polls)


@dataclass(frozen=True)
class _Staged:
    changed: dict[bytes, list[int]]
    total: int
    purged: int
    result: PutResult


def place_notices(
    quotas: StoreQuotas,
    notices: Iterable[tuple[wire.Envelope, int]],
    taken: Container[bytes],
    usage: list[int],
    total: int,
    held: int,
) -> tuple[list[tuple[wire.Envelope, bytes]], int, int, int]:
    """Which of one sender's failure notices its mailbox takes, on either store: each charged
    to ``usage`` (its [envelopes, bytes], changed in place) and the store's ``total`` bytes,
    and opening the mailbox only while the store holds fewer than its most (``held`` now). One
    whose id is ``taken`` is skipped; once a quota refuses one, the rest are not even encoded.
    Returns the notices kept with their encoded bodies, the new total, the new number held and
    how many expired envelopes went untold."""
    kept: list[tuple[wire.Envelope, bytes]] = []
    untold = 0
    refused = False
    for notice, named in notices:
        if refused or notice.id in taken:
            untold += named
            continue
        body = wire.encode_envelope(notice)
        opens = usage[0] <= 0
        try:
            if opens and held + 1 > quotas.max_mailboxes:
                raise TooManyMailboxesError("no room for another mailbox")
            total = quotas.charge(usage, total, len(body))
        except QuotaError:
            refused = True
            untold += named
            continue
        held += opens
        kept.append((notice, body))
    return kept, total, held, untold


class _HeldIds:
    """The ids one mailbox holds, asked of the open SQLite transaction one at a time."""

    def __init__(self, db: Any, mailbox: bytes) -> None:
        self._db = db
        self._mailbox = mailbox

    def __contains__(self, envelope_id: object) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM envelopes WHERE mailbox = ? AND id = ?", (self._mailbox, envelope_id)
        ).fetchone()
        return row is not None


def batch_of(
    rows: Iterable[tuple[int, bytes]], cursor: int, max_bytes: int, skip_over: int | None
) -> StoredBatch:
    """The fetch answer for ``rows`` (seq, body), oldest first: past the first envelope no more
    than ``max_bytes``; one larger than ``skip_over`` is passed over and counted."""
    taken: list[wire.Envelope] = []
    size = 0
    last = cursor
    skipped = 0
    for seq, body in rows:
        if skip_over is not None and len(body) > skip_over:
            skipped += 1
            last = seq
            continue
        size += len(body) + _LIST_OVERHEAD
        if taken and size > max_bytes:
            break
        taken.append(wire.decode_envelope(bytes(body)))
        last = seq
    return StoredBatch(tuple(taken), last, skipped)


class MailboxStore:
    """Envelopes by mailbox, in arrival order, until the owner acknowledges them or they
    expire."""

    def __init__(
        self,
        path: Path,
        max_per_mailbox: int = 10_000,
        quotas: StoreQuotas | None = None,
        *,
        key: bytes | None = None,
    ) -> None:
        self._quotas = quotas or StoreQuotas(max_per_mailbox=max_per_mailbox)
        # mailbox -> [envelopes, bytes], and the sums over all mailboxes.
        self._usage: dict[bytes, list[int]] = {}
        self.total_bytes = 0
        self.expired_purged = 0
        self._db = open_sqlite(path, key, "mailboxes")
        try:
            self._reload_usage()
        except DB_ERRORS as exc:
            raise StorageError(f"cannot open the relay store at {path}: {exc}") from exc

    @property
    def mailboxes(self) -> int:
        """Mailboxes holding at least one envelope."""
        return len(self._usage)

    def close(self) -> None:
        self._db.close()

    def put(
        self,
        envelopes: Sequence[wire.Envelope],
        now_ms: int,
        *,
        new_mailbox_allowance: int | None = None,
        not_before_ms: int | None = None,
        in_use: Container[bytes] = frozenset(),
        sender: bytes | None = None,
    ) -> PutResult:
        """Store envelopes atomically; return the ids now held (new or already present) and
        how many new mailboxes the call opened. Raises a :class:`QuotaError` (and stores
        nothing) when a quota would be exceeded, or when the call would open more than
        ``new_mailbox_allowance`` new mailboxes. An empty mailbox in ``in_use`` (its owner
        reads it: acks emptied it) is not new, though it still counts against the store's
        number of mailboxes. Envelopes stored before ``not_before_ms`` have expired: a full
        mailbox is purged of them before it is judged full. ``sender`` (a mailbox) is told
        of any of these envelopes that expires unfetched."""
        call = PutCall(
            tuple(envelopes), now_ms, new_mailbox_allowance, not_before_ms, in_use, sender
        )
        try:
            with self._transaction():
                staged = self._stage(call)
        except DB_ERRORS as exc:
            raise StorageError(f"relay store write failed: {exc}") from exc
        return self._apply(staged)

    def put_batch(self, calls: Sequence[PutCall]) -> list[PutResult | StorageError]:
        """Several :meth:`put` calls in one transaction and one fsync, each still all or
        nothing (a savepoint each): its result, or the error that refused it alone. If the
        commit itself fails, every call gets that error and nothing of the batch is kept."""
        outcomes: list[PutResult | StorageError] = []
        try:
            with self._transaction():
                for call in calls:
                    self._db.execute("SAVEPOINT put")
                    try:
                        staged = self._stage(call)
                    except QuotaError as exc:
                        self._db.execute("ROLLBACK TO put")
                        self._db.execute("RELEASE put")
                        outcomes.append(exc)
                        continue
                    self._db.execute("RELEASE put")
                    # Applied now, so the next call of the batch sees this one's usage.
                    outcomes.append(self._apply(staged))
        except DB_ERRORS as exc:
            if any(isinstance(o, PutResult) for o in outcomes):
                self._reload_usage()  # what was applied for the batch was never committed
            error = StorageError(f"relay store write failed: {exc}")
            return [error] * len(calls)
        return outcomes

    def _reload_usage(self) -> None:
        """Usage and counters as the file holds them (at open, and after a failed batch)."""
        rows = self._db.execute(
            "SELECT mailbox, COUNT(*), SUM(LENGTH(body)) FROM envelopes GROUP BY mailbox"
        ).fetchall()
        found = self._db.execute(
            "SELECT value FROM counters WHERE name = 'envelopes_expired'"
        ).fetchone()
        self._usage = {bytes(m): [int(count), int(size)] for m, count, size in rows}
        self.total_bytes = sum(size for _, size in self._usage.values())
        self.expired_purged = 0 if found is None else int(found[0])

    def _stage(self, call: PutCall) -> _Staged:
        """The writes of one put inside the open transaction; the usage it would leave."""
        quotas = self._quotas
        envelopes, now_ms, not_before_ms = call.envelopes, call.now_ms, call.not_before_ms
        changed: dict[bytes, list[int]] = {}
        total = self.total_bytes
        purged = 0
        for env in envelopes:
            mailbox = env.recipient
            if self._db.execute(
                "SELECT 1 FROM envelopes WHERE mailbox = ? AND id = ?",
                (mailbox, env.id),
            ).fetchone():
                continue  # a retry of something already held: accepted as it is
            body = wire.encode_envelope(env)
            usage = changed.get(mailbox)
            if usage is None:
                usage = changed[mailbox] = list(self._usage.get(mailbox, (0, 0)))
            if not_before_ms is not None and quotas.overfills(usage, len(body)):
                freed = self._purge_mailbox(mailbox, not_before_ms)
                purged += freed[0]
                usage[0] -= freed[0]
                usage[1] -= freed[1]
                total -= freed[1]
            total = quotas.charge(usage, total, len(body))
            self._db.execute(
                "INSERT INTO envelopes (mailbox, id, body, stored_at_ms, sender)"
                " VALUES (?, ?, ?, ?, ?)",
                (mailbox, env.id, body, now_ms, call.sender),
            )
        opened = [m for m in changed if self._usage.get(m, (0, 0))[0] == 0]
        if opened and self.mailboxes + len(opened) > quotas.max_mailboxes:
            raise TooManyMailboxesError("the relay holds as many mailboxes as it allows")
        new = sum(1 for m in opened if m not in call.in_use)
        if call.new_mailbox_allowance is not None and new > call.new_mailbox_allowance:
            raise NewMailboxLimitError("too many new mailboxes from this caller")
        if purged:
            self._add_counter("envelopes_expired", purged)
        ids = [env.id for env in envelopes]
        return _Staged(changed, total, purged, PutResult(ids, new))

    def _apply(self, staged: _Staged) -> PutResult:
        for mailbox, usage in staged.changed.items():
            self._set_usage(mailbox, usage)
        self.total_bytes = staged.total
        self.expired_purged += staged.purged
        return staged.result

    def _add_counter(self, name: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    def _set_usage(self, mailbox: bytes, usage: list[int]) -> None:
        if usage[0] <= 0:
            self._usage.pop(mailbox, None)
        else:
            self._usage[mailbox] = usage

    def _purge_mailbox(self, mailbox: bytes, not_before_ms: int) -> tuple[int, int]:
        (count, size) = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM envelopes"
            " WHERE mailbox = ? AND stored_at_ms < ?",
            (mailbox, not_before_ms),
        ).fetchone()
        if count:
            # Their senders are told at the next purge (the notices go to other mailboxes,
            # which this put has not judged).
            self._db.execute(
                "INSERT INTO undelivered (sender, id, recipient) SELECT sender, id, mailbox"
                " FROM envelopes WHERE mailbox = ? AND stored_at_ms < ? AND sender IS NOT NULL"
                " ORDER BY seq",
                (mailbox, not_before_ms),
            )
            self._db.execute(
                "DELETE FROM envelopes WHERE mailbox = ? AND stored_at_ms < ?",
                (mailbox, not_before_ms),
            )
        return int(count), int(size)

    def purge_expired(self, not_before_ms: int, telling: Telling) -> Purged:
        """Delete every envelope stored before ``not_before_ms`` (one transaction), then tell
        the senders who asked (:mod:`relay.failure_notices`, a transaction a batch)."""
        try:
            with self._transaction():
                rows = self._db.execute(
                    "SELECT mailbox, COUNT(*), SUM(LENGTH(body)) FROM envelopes"
                    " WHERE stored_at_ms < ? GROUP BY mailbox",
                    (not_before_ms,),
                ).fetchall()
                self._db.execute(
                    "INSERT INTO undelivered (sender, id, recipient) SELECT sender, id, mailbox"
                    " FROM envelopes WHERE stored_at_ms < ? AND sender IS NOT NULL ORDER BY seq",
                    (not_before_ms,),
                )
                self._db.execute("DELETE FROM envelopes WHERE stored_at_ms < ?", (not_before_ms,))
                removed = sum(int(count) for _, count, _ in rows)
                if removed:
                    self._add_counter("envelopes_expired", removed)
        except DB_ERRORS as exc:
            raise StorageError(f"relay store purge failed: {exc}") from exc
        for mailbox, count, size in rows:
            usage = self._usage.get(bytes(mailbox), [0, 0])
            self._set_usage(bytes(mailbox), [usage[0] - int(count), usage[1] - int(size)])
            self.total_bytes -= int(size)
        self.expired_purged += removed
        told: dict[bytes, int] = {}
        untold = 0
        while True:
            try:
                with self._transaction():
                    handled, lost, changed, total = self._tell_batch(telling, told)
            except DB_ERRORS as exc:
                raise StorageError(f"relay store purge failed: {exc}") from exc
            for mailbox, left in changed.items():
                self._set_usage(mailbox, left)
            self.total_bytes = total
            untold += lost
            if handled < OWED_BATCH:
                break
        return Purged(removed, sum(told.values()), untold, tuple(told))

    def _tell_batch(
        self, telling: Telling, told: dict[bytes, int]
    ) -> tuple[int, int, dict[bytes, list[int]], int]:
        """Store the notices for the oldest :data:`OWED_BATCH` debts (inside the open
        transaction), each charged to its sender's quota, and clear those debts. Returns the
        debts handled, the expired envelopes left untold, the usage of the mailboxes told and
        the store's byte total; ``told`` counts the notices stored, by mailbox."""
        owed: dict[bytes, list[Owed]] = {}
        last = 0
        for seq, sender, envelope_id, recipient in self._db.execute(
            "SELECT seq, sender, id, recipient FROM undelivered ORDER BY seq LIMIT ?",
            (OWED_BATCH,),
        ).fetchall():
            owed.setdefault(bytes(sender), []).append(
                (int(seq), bytes(envelope_id), bytes(recipient))
            )
            last = int(seq)
        usage: dict[bytes, list[int]] = {}
        total = self.total_bytes
        stored = untold = 0
        held = self.mailboxes
        for sender, entries in owed.items():
            mine = usage[sender] = list(self._usage.get(sender, (0, 0)))
            made = notices_for(sender, entries, telling)
            kept, total, held, lost = place_notices(
                self._quotas, made, _HeldIds(self._db, sender), mine, total, held
            )
            untold += lost
            self._db.executemany(
                "INSERT INTO envelopes (mailbox, id, body, stored_at_ms) VALUES (?, ?, ?, ?)",
                [(sender, notice.id, body, telling.now_ms) for notice, body in kept],
            )
            if kept:
                told[sender] = told.get(sender, 0) + len(kept)
                stored += len(kept)
        handled = sum(len(e) for e in owed.values())
        if handled:
            self._db.execute("DELETE FROM undelivered WHERE seq <= ?", (last,))
        if stored:
            self._add_counter("failure_notices", stored)
        if untold:
            self._add_counter("failure_notices_untold", untold)
        return handled, untold, usage, total

    def fetch(
        self,
        mailbox: bytes,
        cursor: int,
        limit: int,
        max_bytes: int,
        *,
        not_before_ms: int | None = None,
        skip_over: int | None = None,
    ) -> StoredBatch:
        """Envelopes after ``cursor``, oldest first: at most ``limit`` of them and, past the
        first, no more than ``max_bytes`` encoded, so that the answer fits in one frame.
        Envelopes stored before ``not_before_ms`` have expired and are never returned; one
        larger than ``skip_over`` could never be carried by an answer and is passed over
        (counted in ``skipped``), so a fetch always makes progress."""
        rows = self._db.execute(
            "SELECT seq, body FROM envelopes WHERE mailbox = ? AND seq > ? AND stored_at_ms >= ?"
            " ORDER BY seq LIMIT ?",
            (mailbox, cursor, -(1 << 62) if not_before_ms is None else not_before_ms, limit),
        ).fetchall()
        return batch_of(rows, cursor, max_bytes, skip_over)

    def ack(self, mailbox: bytes, ids: Iterable[bytes]) -> int:
        removed = 0
        usage = list(self._usage.get(mailbox, (0, 0)))
        freed = 0
        with self._transaction(durable=False):
            for envelope_id in ids:
                row = self._db.execute(
                    "DELETE FROM envelopes WHERE mailbox = ? AND id = ? RETURNING LENGTH(body)",
                    (mailbox, envelope_id),
                ).fetchone()
                if row is not None:
                    removed += 1
                    freed += int(row[0])
        usage[0] -= removed
        usage[1] -= freed
        self._set_usage(mailbox, usage)
        self.total_bytes -= freed
        return removed

    def count(self, mailbox: bytes) -> int:
        (n,) = self._db.execute(
            "SELECT COUNT(*) FROM envelopes WHERE mailbox = ?", (mailbox,)
        ).fetchone()
        return int(n)

    def _transaction(self, *, durable: bool = True) -> _Transaction:
        return _Transaction(self._db, durable)


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; one that need not be durable commits without an
    fsync (the setting cannot change inside a transaction, so it is switched around it)."""

    def __init__(self, db: sqlite3.Connection, durable: bool) -> None:
        self._db = db
        self._durable = durable

    def __enter__(self) -> None:
        if not self._durable:
            self._db.execute("PRAGMA synchronous = NORMAL")
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._restore()
            raise

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._restore()

    def _restore(self) -> None:
        if not self._durable:
            self._db.execute("PRAGMA synchronous = FULL")
