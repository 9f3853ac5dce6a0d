"""``relay migrate --from-sqlite``: move an embedded relay store into PostgreSQL.

Everything moves in one PostgreSQL transaction, so a failed or interrupted move leaves the
target as it was and can simply be run again. Envelopes keep their ``seq`` numbers (and the
sequence continues after the largest), so a node's fetch cursor from the old relay stays valid.
The target must hold no envelopes or accounts yet: the move never merges two communities.
The relay must be stopped while it runs (docs/operations.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.core.errors import StorageError
from relay.migrations import migrate_pg
from relay.store import DB_ERRORS, open_sqlite

__all__ = ["MoveReport", "move_sqlite_to_pg", "sqlite_files"]

_BATCH = 1000


@dataclass(frozen=True)
class MoveReport:
    envelopes: int
    mailboxes: int
    accounts: int
    sessions: int
    key_packages: int = 0
    usernames: int = 0


def sqlite_files(source: Path) -> tuple[Path, Path | None]:
    """The mailbox file and (if present) the account file of a relay data directory, or of
    a mailbox file named directly (its account file sits beside it)."""
    mailboxes = source / "mailboxes.sqlite3" if source.is_dir() else source
    if not mailboxes.is_file():
        raise StorageError(f"--from-sqlite {source}: no relay mailbox store there")
    accounts = mailboxes.with_name("accounts.sqlite3")
    return mailboxes, accounts if accounts.is_file() else None


def _read(db: Any, sql: str) -> list[Any]:
    try:
        return list(db.execute(sql).fetchall())
    except DB_ERRORS as exc:
        raise StorageError(f"cannot read the SQLite store: {exc}") from exc


async def move_sqlite_to_pg(conn: Any, source: Path, key: bytes | None) -> MoveReport:
    """Copy the SQLite store at ``source`` into the PostgreSQL database of ``conn``."""
    mailbox_file, account_file = sqlite_files(source)
    # Opening migrates the files to this relay's schema first: one code path reads them.
    mailbox_db = open_sqlite(mailbox_file, key, "mailboxes")
    account_db = None if account_file is None else open_sqlite(account_file, key, "accounts")
    directory_file = mailbox_file.with_name("directory.sqlite3")
    directory_db = (
        open_sqlite(directory_file, key, "directory") if directory_file.is_file() else None
    )
    try:
        await migrate_pg(conn)
        async with conn.transaction():
            held = await conn.fetchval(
                "SELECT (SELECT COUNT(*) FROM envelopes) + (SELECT COUNT(*) FROM accounts)"
                " + (SELECT COUNT(*) FROM undelivered)"
            )
            if held:
                raise StorageError(
                    "the PostgreSQL store already holds envelopes or accounts: move into an"
                    " empty database"
                )
            envelopes = 0
            cursor = mailbox_db.execute(
                "SELECT seq, mailbox, id, body, stored_at_ms, sender FROM envelopes ORDER BY seq"
            )
            while True:
                try:
                    rows = cursor.fetchmany(_BATCH)
                except DB_ERRORS as exc:
                    raise StorageError(f"cannot read the SQLite store: {exc}") from exc
                if not rows:
                    break
                await conn.copy_records_to_table(
                    "envelopes",
                    records=[
                        (s, bytes(m), bytes(i), bytes(b), t, None if f is None else bytes(f))
                        for s, m, i, b, t, f in rows
                    ],
                    columns=["seq", "mailbox", "id", "body", "stored_at_ms", "sender"],
                )
                envelopes += len(rows)
            await conn.execute(
                "SELECT setval(pg_get_serial_sequence('envelopes', 'seq'),"
                " GREATEST((SELECT MAX(seq) FROM envelopes), 1))"
            )
            # Failure notices owed and not yet stored: the target's next purge tells them.
            owed = _read(mailbox_db, "SELECT sender, id, recipient FROM undelivered ORDER BY seq")
            await conn.executemany(
                "INSERT INTO undelivered (sender, id, recipient) VALUES ($1, $2, $3)",
                [(bytes(f), bytes(i), bytes(r)) for f, i, r in owed],
            )
            await conn.execute(
                "INSERT INTO mailbox_usage (mailbox, envelopes, bytes)"
                " SELECT mailbox, COUNT(*), SUM(length(body)) FROM envelopes GROUP BY mailbox"
            )
            await conn.execute(
                "UPDATE store_usage s SET bytes = u.bytes, mailboxes = u.mailboxes FROM"
                " (SELECT get_byte(mailbox, 0) % 16 AS shard, SUM(bytes) AS bytes,"
                " COUNT(*) AS mailboxes FROM mailbox_usage GROUP BY 1) u WHERE s.shard = u.shard"
            )
            for name, value in _read(mailbox_db, "SELECT name, value FROM counters"):
                await conn.execute(
                    "INSERT INTO counters (name, value) VALUES ($1, $2) ON CONFLICT (name)"
                    " DO UPDATE SET value = counters.value + excluded.value",
                    name,
                    int(value),
                )
            accounts = sessions = 0
            if account_db is not None:
                rows = _read(account_db, "SELECT username, record, created_ms FROM accounts")
                await conn.copy_records_to_table(
                    "accounts",
                    records=[(u, bytes(r), c) for u, r, c in rows],
                    columns=["username", "record", "created_ms"],
                )
                accounts = len(rows)
                rows = _read(
                    account_db,
                    "SELECT token_hash, username, identity, created_ms, expires_ms FROM sessions"
                    " ORDER BY created_ms, rowid",
                )
                # One by one, so that ``serial`` keeps the old order (newest kept on login).
                await conn.executemany(
                    "INSERT INTO sessions (token_hash, username, identity, created_ms,"
                    " expires_ms) VALUES ($1, $2, $3, $4, $5)",
                    [(bytes(h), u, bytes(i), c, e) for h, u, i, c, e in rows],
                )
                sessions = len(rows)
            key_packages = usernames = 0
            if directory_db is not None:
                key_packages, usernames = await _move_directory(conn, directory_db)
            mailboxes = int(await conn.fetchval("SELECT COUNT(*) FROM mailbox_usage"))
            if int(await conn.fetchval("SELECT COUNT(*) FROM envelopes")) != envelopes:
                raise StorageError("the move did not copy every envelope; nothing was moved")
    finally:
        mailbox_db.close()
        if account_db is not None:
            account_db.close()
        if directory_db is not None:
            directory_db.close()
    return MoveReport(envelopes, mailboxes, accounts, sessions, key_packages, usernames)


async def _move_directory(conn: Any, db: Any) -> tuple[int, int]:
    """The directory's KeyPackages (single-use in their order, and last-resort ones) and
    usernames, into the same transaction as the rest."""
    if await conn.fetchval(
        "SELECT (SELECT COUNT(*) FROM key_packages) + (SELECT COUNT(*) FROM usernames)"
    ):
        raise StorageError(
            "the PostgreSQL directory already holds data: move into an empty database"
        )
    rows = _read(
        db, "SELECT seq, identity, suite, digest, body, stored_at_ms FROM key_packages ORDER BY seq"
    )
    await conn.copy_records_to_table(
        "key_packages",
        records=[(q, bytes(i), s, bytes(d), bytes(b), t) for q, i, s, d, b, t in rows],
        columns=["seq", "identity", "suite", "digest", "body", "stored_at_ms"],
    )
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence('key_packages', 'seq'),"
        " GREATEST((SELECT MAX(seq) FROM key_packages), 1))"
    )
    last = _read(db, "SELECT identity, suite, rank, body, stored_at_ms FROM last_resort")
    await conn.copy_records_to_table(
        "last_resort",
        records=[(bytes(i), s, r, bytes(b), t) for i, s, r, b, t in last],
        columns=["identity", "suite", "rank", "body", "stored_at_ms"],
    )
    await conn.execute(
        "UPDATE directory_usage SET bytes = (SELECT COALESCE(SUM(length(body)), 0) FROM"
        " key_packages) + (SELECT COALESCE(SUM(length(body)), 0) FROM last_resort)"
    )
    names = _read(db, "SELECT username, identity, bound_at_ms FROM usernames")
    await conn.copy_records_to_table(
        "usernames",
        records=[(u, bytes(i), t) for u, i, t in names],
        columns=["username", "identity", "bound_at_ms"],
    )
    return len(rows) + len(last), len(names)
