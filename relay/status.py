"""``relay status``: what a relay's data directory holds, read without changing anything.

The SQLite stores are opened read-only (``mode=ro``), so this works beside a running relay (WAL
readers do not block its writer) and on a stopped one. Nothing here needs the passphrase:
mailbox and account stores hold no secret in the clear (bodies are counted, never read).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

from node.core.errors import StorageError
from relay.server import RelayConfig

__all__ = ["read_status", "status_lines"]

MAILBOXES_FILE = "mailboxes.sqlite3"
ACCOUNTS_FILE = "accounts.sqlite3"
_NOT_LIMITS = {"host", "port", "data_dir", "passphrase"}


def _open_read_only(path: Path) -> sqlite3.Connection:
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        db.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read {path}: {exc}") from None
    return db


def _mailboxes(path: Path, not_before_ms: int | None) -> dict[str, Any]:
    db = _open_read_only(path)
    try:
        envelopes, size, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(stored_at_ms) FROM envelopes"
        ).fetchone()
        mailboxes, largest = db.execute(
            "SELECT COUNT(*), COALESCE(MAX(n), 0) FROM "
            "(SELECT COUNT(*) AS n FROM envelopes GROUP BY mailbox)"
        ).fetchone()
        expired = 0
        if not_before_ms is not None:
            (expired,) = db.execute(
                "SELECT COUNT(*) FROM envelopes WHERE stored_at_ms < ?", (not_before_ms,)
            ).fetchone()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read {path}: {exc}") from None
    finally:
        db.close()
    return {
        "mailboxes": int(mailboxes),
        "envelopes": int(envelopes),
        "bytes": int(size),
        "largest_mailbox": int(largest),
        "oldest_stored_ms": None if oldest is None else int(oldest),
        "expired_not_purged": int(expired),
    }


def _accounts(path: Path, now_ms: int | None) -> dict[str, Any]:
    db = _open_read_only(path)
    try:
        (accounts,) = db.execute("SELECT COUNT(*) FROM accounts").fetchone()
        (sessions,) = db.execute(
            "SELECT COUNT(*) FROM sessions WHERE expires_ms > ?",
            (now_ms if now_ms is not None else -1,),
        ).fetchone()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot read {path}: {exc}") from None
    finally:
        db.close()
    return {"accounts": int(accounts), "live_sessions": int(sessions)}


def read_status(
    config: RelayConfig, *, now_ms: int | None = None, accounts: bool = True
) -> dict[str, Any]:
    """Mailboxes (counts, bytes, the fullest), accounts and live sessions, and the limits in
    force, of the relay whose configuration is ``config``.

    :param now_ms: the wall clock, to count live sessions and expired envelopes; None skips
        both counts.
    """
    where = config.data_dir
    if not (where / MAILBOXES_FILE).is_file():
        raise StorageError(f"{where} holds no relay store ({MAILBOXES_FILE})")
    not_before = None if now_ms is None else now_ms - int(config.envelope_ttl_s * 1000)
    out: dict[str, Any] = {
        "data_dir": str(where),
        "mailboxes": _mailboxes(where / MAILBOXES_FILE, not_before),
        "accounts": None,
        "limits": {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(config)
            if f.name not in _NOT_LIMITS
        },
    }
    if accounts and (where / ACCOUNTS_FILE).is_file():
        out["accounts"] = _accounts(where / ACCOUNTS_FILE, now_ms)
    return out


def status_lines(status: dict[str, Any]) -> list[str]:
    """``status`` for a person: a few lines, then one ``key = value`` line per limit."""
    store = status["mailboxes"]
    lines = [
        f"data directory: {status['data_dir']}",
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
