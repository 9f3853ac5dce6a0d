"""``relay status``: what a relay's data directory holds, read without changing anything.

The SQLite stores are opened read-only (``mode=ro``), so this works beside a running relay (WAL
readers do not block its writer) and on a stopped one; a keyed store (``db_key``) is read through
SQLCipher with that key. With ``store = "postgresql"`` the same counts come from the database,
in a read-only transaction. Nothing here needs the passphrase: the stores hold no secret in the
clear (bodies are counted, never read).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import sqlcipher3

from node.core.errors import StorageError
from relay.migrations import check_pg
from relay.server import RelayConfig
from relay.store import DB_ERRORS, WrongDbKeyError
from relay.store_pg import UNAVAILABLE, connect_pg

__all__ = ["read_status", "status_lines"]

MAILBOXES_FILE = "mailboxes.sqlite3"
ACCOUNTS_FILE = "accounts.sqlite3"
# Not limits, and two of them secret (a dsn may hold a password): never shown.
_NOT_LIMITS = {"host", "port", "data_dir", "passphrase", "db_key", "dsn"}


_PLAIN_HEADER = b"SQLite format 3\x00"
_OPEN_ERRORS: tuple[type[Exception], ...] = (*DB_ERRORS, OSError)
_ENVELOPE_COUNTS = (
    "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(stored_at_ms) FROM envelopes"
)
_MAILBOX_COUNTS = (
    "SELECT COUNT(*), COALESCE(MAX(n), 0) FROM "
    "(SELECT COUNT(*) AS n FROM envelopes GROUP BY mailbox) AS per_mailbox"
)


def _open_read_only(path: Path, key: bytes | None) -> Any:
    """``path`` opened read-only: with ``key`` through SQLCipher, unless the file is still
    plain (a relay encrypts it in place at its next start)."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        with path.open("rb") as file:
            plain = file.read(len(_PLAIN_HEADER)) == _PLAIN_HEADER
        if key is None or plain:
            db: Any = sqlite3.connect(uri, uri=True)
        else:
            db = sqlcipher3.connect(uri, uri=True)
            # A wrong key would otherwise print "ERROR CORE" to stderr.
            db.execute("PRAGMA cipher_log_level = NONE")
            db.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        db.execute("PRAGMA query_only = ON")
        # PRAGMA key never fails; the first real read tells a wrong key or a keyed file.
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except _OPEN_ERRORS as exc:
        if key is not None and isinstance(exc, sqlcipher3.DatabaseError):
            raise WrongDbKeyError(
                f"{path} does not open with the configured db_key (wrong key, or damaged)"
            ) from None
        if key is None and isinstance(exc, sqlite3.DatabaseError):
            raise StorageError(
                f"cannot read {path}: {exc} (an encrypted store needs db_key or"
                " $QUICNPROTOCHAT_RELAY_DB_KEY)"
            ) from None
        raise StorageError(f"cannot read {path}: {exc}") from None
    return db


def _mailboxes(path: Path, key: bytes | None, not_before_ms: int | None) -> dict[str, Any]:
    db = _open_read_only(path, key)
    try:
        envelopes, size, oldest = db.execute(_ENVELOPE_COUNTS).fetchone()
        mailboxes, largest = db.execute(_MAILBOX_COUNTS).fetchone()
        expired = 0
        if not_before_ms is not None:
            (expired,) = db.execute(
                "SELECT COUNT(*) FROM envelopes WHERE stored_at_ms < ?", (not_before_ms,)
            ).fetchone()
    except DB_ERRORS as exc:
        raise StorageError(f"cannot read {path}: {exc}") from None
    finally:
        db.close()
    return _mailbox_status(mailboxes, envelopes, size, largest, oldest, expired)


def _mailbox_status(
    mailboxes: int, envelopes: int, size: int, largest: int, oldest: int | None, expired: int
) -> dict[str, Any]:
    return {
        "mailboxes": int(mailboxes),
        "envelopes": int(envelopes),
        "bytes": int(size),
        "largest_mailbox": int(largest),
        "oldest_stored_ms": None if oldest is None else int(oldest),
        "expired_not_purged": int(expired),
    }


def _accounts(path: Path, key: bytes | None, now_ms: int | None) -> dict[str, Any]:
    db = _open_read_only(path, key)
    try:
        (accounts,) = db.execute("SELECT COUNT(*) FROM accounts").fetchone()
        (sessions,) = db.execute(
            "SELECT COUNT(*) FROM sessions WHERE expires_ms > ?",
            (now_ms if now_ms is not None else -1,),
        ).fetchone()
    except DB_ERRORS as exc:
        raise StorageError(f"cannot read {path}: {exc}") from None
    finally:
        db.close()
    return {"accounts": int(accounts), "live_sessions": int(sessions)}


async def _read_pg(
    config: RelayConfig, not_before_ms: int | None, now_ms: int | None, accounts: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    conn = await connect_pg(config.dsn, config.pg_timeout_s)
    try:
        await check_pg(conn)
        async with conn.transaction(readonly=True):
            envelopes, size, oldest = await conn.fetchrow(_ENVELOPE_COUNTS)
            mailboxes, largest = await conn.fetchrow(_MAILBOX_COUNTS)
            expired = 0
            if not_before_ms is not None:
                expired = await conn.fetchval(
                    "SELECT COUNT(*) FROM envelopes WHERE stored_at_ms < $1", not_before_ms
                )
            held = None
            if accounts:
                count = await conn.fetchval("SELECT COUNT(*) FROM accounts")
                live = await conn.fetchval(
                    "SELECT COUNT(*) FROM sessions WHERE expires_ms > $1",
                    now_ms if now_ms is not None else -1,
                )
                held = {"accounts": int(count), "live_sessions": int(live)}
    except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
        raise StorageError(f"cannot read the PostgreSQL store: {exc}") from None
    finally:
        await conn.close()
    return _mailbox_status(mailboxes, envelopes, size, largest, oldest, expired), held


def read_status(
    config: RelayConfig, *, now_ms: int | None = None, accounts: bool = True
) -> dict[str, Any]:
    """Mailboxes (counts, bytes, the fullest), accounts and live sessions, and the limits in
    force, of the relay whose configuration is ``config``.

    :param now_ms: the wall clock, to count live sessions and expired envelopes; None skips
        both counts.
    """
    where = config.data_dir
    not_before = None if now_ms is None else now_ms - int(config.envelope_ttl_s * 1000)
    limits = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in _NOT_LIMITS
    }
    if config.store == "postgresql":
        # Called from a command or an executor thread, never from inside a running loop.
        mailboxes, held = asyncio.run(_read_pg(config, not_before, now_ms, accounts))
        return {
            "data_dir": str(where),
            "store": "postgresql",
            "mailboxes": mailboxes,
            "accounts": held,
            "limits": limits,
        }
    if not (where / MAILBOXES_FILE).is_file():
        raise StorageError(f"{where} holds no relay store ({MAILBOXES_FILE})")
    key = config.raw_db_key()
    out: dict[str, Any] = {
        "data_dir": str(where),
        "store": "sqlcipher" if key is not None else "sqlite",
        "mailboxes": _mailboxes(where / MAILBOXES_FILE, key, not_before),
        "accounts": None,
        "limits": limits,
    }
    if accounts and (where / ACCOUNTS_FILE).is_file():
        out["accounts"] = _accounts(where / ACCOUNTS_FILE, key, now_ms)
    return out


def status_lines(status: dict[str, Any]) -> list[str]:
    """``status`` for a person: a few lines, then one ``key = value`` line per limit."""
    store = status["mailboxes"]
    lines = [
        f"data directory: {status['data_dir']}",
        f"store: {status['store']}",
        f"mailboxes: {store['mailboxes']} holding {store['envelopes']} envelopes, "
        f"{store['bytes']} bytes (fullest: {store['largest_mailbox']} envelopes; "
        f"expired, not yet purged: {store['expired_not_purged']})",
    ]
    accounts = status["accounts"]
    if accounts is None:
        lines.append("accounts: none (no accounts store)")
    else:
        lines.append(
            f"accounts: {accounts['accounts']}, live sessions: {accounts['live_sessions']}"
        )
    lines.append("limits:")
    lines += [f"  {key} = {value!r}" for key, value in sorted(status["limits"].items())]
    return lines
