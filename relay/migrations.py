"""One versioned list of the relay's schema migrations, for SQLite/SQLCipher and PostgreSQL.

Version 0 is "nothing, or today's plain mailbox file": the first relays created their
``envelopes`` table with ``CREATE TABLE IF NOT EXISTS`` and never set a version, so step 1
creates it the same way and a file of that age passes through unchanged. Each step names the
script for each SQLite file (mailboxes, accounts and the directory live in three files, so they
evolve apart; a file with no script at a step only has its version raised) and the one script for
PostgreSQL, where everything shares one database.

The directory file (``directory.sqlite3``) had a version list of its own before step 3, which
stopped at 1 and made the very tables step 3 makes: step 3 makes them ``IF NOT EXISTS``, so such a
file (at 0 or 1) passes through unchanged.

SQLite keeps the version in ``PRAGMA user_version`` of each file; PostgreSQL in the one-row
table ``qpc_schema``. A store newer than :data:`SCHEMA_VERSION` is refused: this code would
misread it. On SQLite the steps run when the store opens (the embedded default needs no
set-up); on PostgreSQL only ``quicnprotochat relay migrate`` runs them, under an advisory lock,
so several relay processes never race to change one schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from node.core.errors import StorageError

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "SchemaTooNewError",
    "SchemaTooOldError",
    "SqlitePart",
    "migrate_sqlite",
]

SqlitePart = Literal["mailboxes", "accounts", "directory"]

# pg_advisory_lock key for migrations: any fixed 64-bit number no other user of the database
# picks ("qpcmigr" in ASCII).
PG_MIGRATION_LOCK = 0x717063_6D69_6772


class SchemaTooNewError(StorageError):
    """The store was written by a newer relay than this one."""


class SchemaTooOldError(StorageError):
    """The PostgreSQL store needs ``quicnprotochat relay migrate`` before this relay can use it."""


@dataclass(frozen=True)
class Migration:
    """Takes a store from ``version - 1`` to ``version``."""

    version: int
    summary: str
    sqlite: dict[SqlitePart, str]  # a part not named has nothing to do at this step
    postgresql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "mailboxes, accounts and sessions",
        sqlite={
            "mailboxes": """
            CREATE TABLE IF NOT EXISTS envelopes (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                mailbox BLOB NOT NULL,
                id BLOB NOT NULL,
                body BLOB NOT NULL,
                stored_at_ms INTEGER NOT NULL,
                UNIQUE (mailbox, id)
            );
            CREATE INDEX IF NOT EXISTS envelopes_by_mailbox ON envelopes (mailbox, seq);
            CREATE INDEX IF NOT EXISTS envelopes_by_age ON envelopes (stored_at_ms);
            """,
            "accounts": """
            CREATE TABLE IF NOT EXISTS accounts (
                username TEXT PRIMARY KEY,
                record BLOB NOT NULL,
                created_ms INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS sessions (
                token_hash BLOB PRIMARY KEY,
                username TEXT NOT NULL REFERENCES accounts (username),
                identity BLOB NOT NULL,
                created_ms INTEGER NOT NULL,
                expires_ms INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS sessions_by_username ON sessions (username, created_ms);
            CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_ms);
            """,
        },
        postgresql="""
        CREATE TABLE envelopes (
            seq BIGSERIAL PRIMARY KEY,
            mailbox BYTEA NOT NULL,
            id BYTEA NOT NULL,
            body BYTEA NOT NULL,
            stored_at_ms BIGINT NOT NULL,
            UNIQUE (mailbox, id)
        );
        CREATE INDEX envelopes_by_mailbox ON envelopes (mailbox, seq);
        CREATE INDEX envelopes_by_age ON envelopes (stored_at_ms);
        -- Per-mailbox usage, row-locked by every write to that mailbox: the quota check and the
        -- order of seq numbers within a mailbox both hold across relay processes.
        CREATE TABLE mailbox_usage (
            mailbox BYTEA PRIMARY KEY,
            envelopes BIGINT NOT NULL,
            bytes BIGINT NOT NULL
        );
        -- Store-wide totals in 16 shards (by the mailbox's first byte), so that writers to
        -- different mailboxes rarely wait on one row.
        CREATE TABLE store_usage (
            shard SMALLINT PRIMARY KEY,
            bytes BIGINT NOT NULL,
            mailboxes BIGINT NOT NULL
        );
        INSERT INTO store_usage SELECT s, 0, 0 FROM generate_series(0, 15) AS s;
        CREATE TABLE accounts (
            username TEXT PRIMARY KEY,
            record BYTEA NOT NULL,
            created_ms BIGINT NOT NULL
        );
        CREATE TABLE sessions (
            token_hash BYTEA PRIMARY KEY,
            username TEXT NOT NULL REFERENCES accounts (username),
            identity BYTEA NOT NULL,
            created_ms BIGINT NOT NULL,
            expires_ms BIGINT NOT NULL,
            serial BIGSERIAL NOT NULL
        );
        CREATE INDEX sessions_by_username ON sessions (username, serial);
        CREATE INDEX sessions_by_identity ON sessions (identity);
        CREATE INDEX sessions_by_expiry ON sessions (expires_ms);
        """,
    ),
    Migration(
        2,
        "service-wide counters",
        sqlite={
            "mailboxes": """
            CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            """,
            "accounts": "",
        },
        postgresql="""
        CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
        """,
    ),
    Migration(
        3,
        "the directory: KeyPackages held for their owners, and usernames",
        sqlite={
            "directory": """
            CREATE TABLE IF NOT EXISTS key_packages (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                identity BLOB NOT NULL,
                suite INTEGER NOT NULL,
                digest BLOB NOT NULL,
                body BLOB NOT NULL,
                stored_at_ms INTEGER NOT NULL,
                UNIQUE (identity, digest)
            );
            CREATE INDEX IF NOT EXISTS key_packages_by_owner ON key_packages (identity, suite, seq);
            CREATE INDEX IF NOT EXISTS key_packages_by_age ON key_packages (stored_at_ms);
            CREATE TABLE IF NOT EXISTS last_resort (
                identity BLOB NOT NULL,
                suite INTEGER NOT NULL,
                rank INTEGER NOT NULL,
                body BLOB NOT NULL,
                stored_at_ms INTEGER NOT NULL,
                PRIMARY KEY (identity, suite)
            );
            CREATE INDEX IF NOT EXISTS last_resort_by_age ON last_resort (stored_at_ms);
            CREATE TABLE IF NOT EXISTS usernames (
                username TEXT PRIMARY KEY,
                identity BLOB NOT NULL UNIQUE,
                bound_at_ms INTEGER NOT NULL
            );
            """,
        },
        postgresql="""
        CREATE TABLE key_packages (
            seq BIGSERIAL PRIMARY KEY,
            identity BYTEA NOT NULL,
            suite INTEGER NOT NULL,
            digest BYTEA NOT NULL,
            body BYTEA NOT NULL,
            stored_at_ms BIGINT NOT NULL,
            UNIQUE (identity, digest)
        );
        CREATE INDEX key_packages_by_owner ON key_packages (identity, suite, seq);
        CREATE INDEX key_packages_by_age ON key_packages (stored_at_ms);
        CREATE TABLE last_resort (
            identity BYTEA NOT NULL,
            suite INTEGER NOT NULL,
            rank INTEGER NOT NULL,
            body BYTEA NOT NULL,
            stored_at_ms BIGINT NOT NULL,
            PRIMARY KEY (identity, suite)
        );
        CREATE INDEX last_resort_by_age ON last_resort (stored_at_ms);
        CREATE TABLE usernames (
            username TEXT PRIMARY KEY,
            identity BYTEA NOT NULL UNIQUE,
            bound_at_ms BIGINT NOT NULL
        );
        -- The bytes of every KeyPackage held, one row: each write adds its change under the
        -- row's lock, so the directory's byte cap is exact across relay processes.
        CREATE TABLE directory_usage (bytes BIGINT NOT NULL);
        INSERT INTO directory_usage VALUES (0);
        """,
    ),
    Migration(
        4,
        "who delivered each envelope that asked for a failure notice, and the notices owed",
        sqlite={
            "mailboxes": """
            ALTER TABLE envelopes ADD COLUMN sender BLOB;
            CREATE TABLE undelivered (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                sender BLOB NOT NULL,
                id BLOB NOT NULL,
                recipient BLOB NOT NULL
            );
            CREATE INDEX undelivered_by_sender ON undelivered (sender, seq);
            """,
        },
        postgresql="""
        ALTER TABLE envelopes ADD COLUMN sender BYTEA;
        CREATE TABLE undelivered (
            seq BIGSERIAL PRIMARY KEY,
            sender BYTEA NOT NULL,
            id BYTEA NOT NULL,
            recipient BYTEA NOT NULL
        );
        CREATE INDEX undelivered_by_sender ON undelivered (sender, seq);
        """,
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version


def _statements(script: str) -> list[str]:
    return [s for s in script.split(";") if s.strip() and not _only_comments(s)]


def _only_comments(statement: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in statement.splitlines())


def migrate_sqlite(
    db: Any, part: SqlitePart, where: str, errors: tuple[type[Exception], ...]
) -> int:
    """Bring one SQLite/SQLCipher file (``sqlite3`` or ``sqlcipher3`` connection in autocommit
    mode) to :data:`SCHEMA_VERSION` in one transaction; return the version it had."""
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
    except errors as exc:
        raise StorageError(f"cannot read {where}: {exc}") from exc
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"{where} is of schema version {version}, newer than this relay's {SCHEMA_VERSION}:"
            " run a newer quicnprotochat"
        )
    if version == SCHEMA_VERSION:
        return int(version)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            for step in MIGRATIONS[version:]:
                for statement in _statements(step.sqlite.get(part, "")):
                    db.execute(statement)
            # PRAGMA takes no parameters; the value is our own integer.
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except errors as exc:
        raise StorageError(f"cannot migrate {where}: {exc}") from exc
    return int(version)


async def pg_version(conn: Any) -> int:
    """The schema version of a PostgreSQL store (0 when nothing was ever migrated)."""
    exists = await conn.fetchval("SELECT to_regclass('qpc_schema') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT version FROM qpc_schema"))


async def migrate_pg(conn: Any) -> tuple[int, int]:
    """Bring a PostgreSQL store to :data:`SCHEMA_VERSION`, each step in its own transaction;
    return (version before, version after)."""
    await conn.execute("SELECT pg_advisory_lock($1)", PG_MIGRATION_LOCK)
    try:
        before = await pg_version(conn)
        if before > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"the PostgreSQL store is of schema version {before}, newer than this relay's"
                f" {SCHEMA_VERSION}: run a newer quicnprotochat"
            )
        for step in MIGRATIONS[before:]:
            async with conn.transaction():
                if step.version == 1:
                    await conn.execute("CREATE TABLE qpc_schema (version INTEGER NOT NULL)")
                    await conn.execute("INSERT INTO qpc_schema VALUES (0)")
                await conn.execute(step.postgresql)
                await conn.execute("UPDATE qpc_schema SET version = $1", step.version)
        return before, SCHEMA_VERSION
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", PG_MIGRATION_LOCK)


async def check_pg(conn: Any) -> None:
    """Refuse a PostgreSQL store this relay cannot use as it is."""
    version = await pg_version(conn)
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"the PostgreSQL store is of schema version {version}, newer than this relay's"
            f" {SCHEMA_VERSION}: run a newer quicnprotochat"
        )
    if version < SCHEMA_VERSION:
        raise SchemaTooOldError(
            f"the PostgreSQL store is of schema version {version}, this relay needs"
            f" {SCHEMA_VERSION}: run `quicnprotochat relay migrate` first"
        )
