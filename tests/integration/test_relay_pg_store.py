"""The relay's store interface on both backends (a real SQLite file, a real PostgreSQL server),
its one list of migrations from every earlier version, and what several processes sharing one
PostgreSQL database see."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from node.core import wire
from node.core.runtime import Runtime
from relay.directory_pg import PgDirectory
from relay.directory_store import DirectoryStore, SuiteCount
from relay.failure_notices import Telling
from relay.migrations import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SchemaTooNewError,
    SchemaTooOldError,
    migrate_pg,
    pg_version,
)
from relay.store import MailboxFullError, MailboxStore, StoreQuotas, WrongDbKeyError
from relay.store_accounts import AccountStore, Session
from relay.store_api import MailboxBackend, SqliteMailboxes
from relay.store_pg import PgStore, connect_pg
from tests.pg_support import PostgresServer
from tests.runtime_support import Runtimes

SALT = b"salt" * 4
MAILBOX = b"\x05" * 32
OTHER = b"\x06" * 32
SENDER = b"\x07" * 32
THIRD = b"\x08" * 32
# The mailbox file exactly as the first relays wrote it: no version, tables made "IF NOT EXISTS".
TODAYS_PLAIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS envelopes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, mailbox BLOB NOT NULL, id BLOB NOT NULL,
    body BLOB NOT NULL, stored_at_ms INTEGER NOT NULL, UNIQUE (mailbox, id));
CREATE INDEX IF NOT EXISTS envelopes_by_mailbox ON envelopes (mailbox, seq);
CREATE INDEX IF NOT EXISTS envelopes_by_age ON envelopes (stored_at_ms);
"""


def envelope(n: int, mailbox: bytes = MAILBOX, size: int = 1000) -> wire.Envelope:
    return wire.Envelope(
        os.urandom(16), mailbox, wire.EnvelopeKind.APPLICATION, bytes([n % 256]) * size, b"g", n
    )


async def migrated(dsn: str) -> None:
    conn = await connect_pg(dsn)
    try:
        await migrate_pg(conn)
    finally:
        await conn.close()


async def open_pg(dsn: str, runtimes: Runtimes, quotas: StoreQuotas | None = None) -> PgStore:
    return await PgStore.open(dsn, runtimes(), quotas or StoreQuotas(), 1000)


async def make_mailboxes(
    kind: str, where: tuple[Path, Runtimes], request: pytest.FixtureRequest, quotas: StoreQuotas
) -> MailboxBackend:
    tmp_path, runtimes = where
    if kind == "sqlite":
        runtime: Runtime = runtimes()
        return SqliteMailboxes(MailboxStore(tmp_path / "m.sqlite3", quotas=quotas), runtime)
    dsn = request.getfixturevalue("pg_dsn")
    await migrated(dsn)
    return (await open_pg(dsn, runtimes, quotas)).mailboxes


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_both_backends_fetch_in_order_dedupe_ack_once_and_refuse_whole_batches(
    kind: str, tmp_path: Path, runtimes: Runtimes, request: pytest.FixtureRequest
) -> None:
    quotas = StoreQuotas(max_per_mailbox=6)
    store = await make_mailboxes(kind, (tmp_path, runtimes), request, quotas)
    try:
        sent = [envelope(n) for n in range(5)]
        put = await store.put(sent, now_ms=0)
        assert put.new_mailboxes == 1
        await store.put(sent[:1], now_ms=1)  # a retry after a lost answer: stored once
        assert await store.count(MAILBOX) == 5
        first = await store.fetch(MAILBOX, cursor=0, limit=100, max_bytes=2500)
        assert [e.id for e in first.envelopes] == [e.id for e in sent[:2]]
        rest = await store.fetch(MAILBOX, cursor=first.cursor, limit=100, max_bytes=1 << 20)
        assert [e.id for e in rest.envelopes] == [e.id for e in sent[2:]]

        with pytest.raises(MailboxFullError):
            await store.put([envelope(5), envelope(6)], now_ms=2)
        assert await store.count(MAILBOX) == 5  # nothing of the refused batch was kept

        assert await store.ack(MAILBOX, [sent[0].id, os.urandom(16)]) == 1
        assert await store.ack(MAILBOX, [sent[0].id]) == 0
        # Expired envelopes never come out and are purged.
        await store.put([envelope(9, OTHER)], now_ms=10)
        assert (await store.purge_expired(not_before_ms=5, telling=Telling(10, SALT))).expired == 4
        assert await store.count(MAILBOX) == 0 and await store.count(OTHER) == 1
    finally:
        await store.close()


async def test_pg_schema_is_migrated_by_command_only_and_newer_is_refused(
    pg_dsn: str, runtimes: Runtimes
) -> None:
    with pytest.raises(SchemaTooOldError, match="relay migrate"):
        await open_pg(pg_dsn, runtimes)
    conn = await connect_pg(pg_dsn)
    try:
        assert await migrate_pg(conn) == (0, SCHEMA_VERSION)
        assert await migrate_pg(conn) == (SCHEMA_VERSION, SCHEMA_VERSION)  # idempotent
        await conn.execute("UPDATE qpc_schema SET version = $1", SCHEMA_VERSION + 1)
        with pytest.raises(SchemaTooNewError, match="newer"):
            await open_pg(pg_dsn, runtimes)
        with pytest.raises(SchemaTooNewError):
            await migrate_pg(conn)
    finally:
        await conn.close()


@pytest.mark.parametrize("start", range(SCHEMA_VERSION))
async def test_pg_migrates_from_every_earlier_version(start: int, pg_dsn: str) -> None:
    conn = await connect_pg(pg_dsn)
    try:
        # Build the store as version ``start`` left it, with an envelope in it where it can hold one.
        for step in MIGRATIONS[:start]:
            async with conn.transaction():
                if step.version == 1:
                    await conn.execute("CREATE TABLE qpc_schema (version INTEGER NOT NULL)")
                    await conn.execute("INSERT INTO qpc_schema VALUES (0)")
                await conn.execute(step.postgresql)
                await conn.execute("UPDATE qpc_schema SET version = $1", step.version)
        if start >= 1:
            await conn.execute(
                "INSERT INTO envelopes (mailbox, id, body, stored_at_ms) VALUES ($1, $2, $3, 0)",
                MAILBOX,
                b"i" * 16,
                wire.encode_envelope(envelope(1)),
            )
        assert await pg_version(conn) == start
        assert await migrate_pg(conn) == (start, SCHEMA_VERSION)
        expect = 1 if start >= 1 else 0
        assert await conn.fetchval("SELECT COUNT(*) FROM envelopes") == expect
        # An envelope from before step 4 names no sender: it expires and nobody is told.
        assert await conn.fetchval("SELECT COUNT(*) FROM envelopes WHERE sender IS NULL") == expect
        assert await conn.fetchval("SELECT COUNT(*) FROM undelivered") == 0
        # The directory's tables came with step 3, its byte total starting at nothing.
        assert await conn.fetchval("SELECT bytes FROM directory_usage") == 0
        assert await conn.fetchval("SELECT COUNT(*) FROM key_packages") == 0
    finally:
        await conn.close()


def _write_version(path: Path, schema: str, version: int) -> None:
    db = sqlite3.connect(path)
    db.executescript(schema)
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


@pytest.mark.parametrize("start", range(SCHEMA_VERSION))
def test_sqlite_migrates_from_every_earlier_version_todays_plain_file_included(
    start: int, tmp_path: Path
) -> None:
    path = tmp_path / "mailboxes.sqlite3"
    if start == 0:
        schema = TODAYS_PLAIN_SCHEMA  # what relays wrote before versions existed
    else:
        schema = "".join(step.sqlite.get("mailboxes", "") for step in MIGRATIONS[:start])
    _write_version(path, schema, start)
    old = envelope(1)
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO envelopes (mailbox, id, body, stored_at_ms) VALUES (?, ?, ?, 0)",
        (MAILBOX, old.id, wire.encode_envelope(old)),
    )
    db.commit()
    db.close()

    store = MailboxStore(path)
    assert store.count(MAILBOX) == 1
    assert [e.id for e in store.fetch(MAILBOX, 0, 10, 1 << 20).envelopes] == [old.id]
    # Stored before step 4, it names no sender: it expires and nobody is told.
    purged = store.purge_expired(not_before_ms=1, telling=Telling(2, SALT))
    assert (purged.expired, purged.notices, purged.untold) == (1, 0, 0)
    store.close()
    (version,) = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()
    assert version == SCHEMA_VERSION


# The directory file as relays wrote it before step 3: a version list of its own, at 1.
LEGACY_DIRECTORY_SCHEMA = """
CREATE TABLE key_packages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, identity BLOB NOT NULL, suite INTEGER NOT NULL,
    digest BLOB NOT NULL, body BLOB NOT NULL, stored_at_ms INTEGER NOT NULL,
    UNIQUE (identity, digest));
CREATE INDEX key_packages_by_owner ON key_packages (identity, suite, seq);
CREATE INDEX key_packages_by_age ON key_packages (stored_at_ms);
CREATE TABLE last_resort (
    identity BLOB NOT NULL, suite INTEGER NOT NULL, rank INTEGER NOT NULL, body BLOB NOT NULL,
    stored_at_ms INTEGER NOT NULL, PRIMARY KEY (identity, suite));
CREATE INDEX last_resort_by_age ON last_resort (stored_at_ms);
CREATE TABLE usernames (
    username TEXT PRIMARY KEY, identity BLOB NOT NULL UNIQUE, bound_at_ms INTEGER NOT NULL);
"""


@pytest.mark.parametrize("start", ["legacy", *range(SCHEMA_VERSION)])
@pytest.mark.parametrize("keyed", [False, True])
def test_the_directory_file_migrates_from_every_earlier_version(
    start: int | str, keyed: bool, tmp_path: Path
) -> None:
    path = tmp_path / "directory.sqlite3"
    if start == "legacy":
        _write_version(path, LEGACY_DIRECTORY_SCHEMA, 1)
        db = sqlite3.connect(path)
        db.execute(
            "INSERT INTO key_packages (identity, suite, digest, body, stored_at_ms)"
            " VALUES (?, 1, ?, ?, 0)",
            (MAILBOX, b"d" * 32, b"a KeyPackage"),
        )
        db.execute("INSERT INTO usernames VALUES ('bob', ?, 0)", (MAILBOX,))
        db.commit()
        db.close()
    else:
        assert isinstance(start, int)
        schema = "".join(step.sqlite.get("directory", "") for step in MIGRATIONS[:start])
        _write_version(path, schema, start)
    key = os.urandom(32) if keyed else None

    store = DirectoryStore(path, key=key)
    try:
        assert store.schema_version == SCHEMA_VERSION
        if start == "legacy":
            assert store.counts(MAILBOX) == [SuiteCount(1, 1, False)]
            assert store.identity_of("bob") == MAILBOX
            assert store.take(MAILBOX, 0) == [b"a KeyPackage"]
        store.bind("carol", OTHER, 1)
    finally:
        store.close()
    if keyed:
        assert path.read_bytes()[:16] != b"SQLite format 3\x00"  # encrypted in place
        assert b"carol" not in path.read_bytes()
        with pytest.raises(WrongDbKeyError):
            DirectoryStore(path, key=os.urandom(32))
    again = DirectoryStore(path, key=key)
    assert again.identity_of("carol") == OTHER
    again.close()


def test_a_newer_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mailboxes.sqlite3"
    MailboxStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaTooNewError, match="newer"):
        MailboxStore(path)


def test_db_key_encrypts_todays_plain_file_and_a_wrong_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mailboxes.sqlite3"
    plain = MailboxStore(path)
    kept = envelope(3)
    plain.put([kept], now_ms=0)
    plain.close()
    key = os.urandom(32)

    keyed = MailboxStore(path, key=key)
    assert keyed.count(MAILBOX) == 1
    keyed.close()
    assert path.read_bytes()[:16] != b"SQLite format 3\x00"  # encrypted now
    assert kept.payload not in path.read_bytes()
    with pytest.raises(WrongDbKeyError, match="db_key"):
        MailboxStore(path, key=os.urandom(32))
    with pytest.raises(WrongDbKeyError, match=r"encrypted .*no db_key is configured"):
        MailboxStore(path)  # no key: it is not a plain file any more, and says so
    again = MailboxStore(path, key=key)
    assert [e.id for e in again.fetch(MAILBOX, 0, 10, 1 << 20).envelopes] == [kept.id]
    again.close()

    accounts = AccountStore(tmp_path / "accounts.sqlite3", key=key)
    accounts.register("alice", b"r" * 64, 1)
    accounts.close()
    assert AccountStore(tmp_path / "accounts.sqlite3", key=key).exists("alice")


async def test_two_processes_on_one_database_share_mailboxes_sessions_and_wakeups(
    pg_dsn: str, runtimes: Runtimes
) -> None:
    await migrated(pg_dsn)
    one, two = await open_pg(pg_dsn, runtimes), await open_pg(pg_dsn, runtimes)
    try:
        woken: asyncio.Queue[bytes | None] = asyncio.Queue()
        two.mailboxes.on_arrival(woken.put_nowait)
        sent = [envelope(n) for n in range(20)]
        # Delivered through both at once: one order per mailbox, the order of commits.
        await asyncio.gather(
            *((one if n % 2 else two).mailboxes.put([env], now_ms=n) for n, env in enumerate(sent))
        )
        async with asyncio.timeout(10):
            assert await woken.get() == MAILBOX  # NOTIFY reached the other process
        got = await two.mailboxes.fetch(MAILBOX, 0, 100, 1 << 20)
        assert sorted(e.id for e in got.envelopes) == sorted(e.id for e in sent)
        # Both processes ack the same ids at once: each envelope is removed exactly once.
        ids = [e.id for e in got.envelopes]
        removed = await asyncio.gather(
            one.mailboxes.ack(MAILBOX, ids), two.mailboxes.ack(MAILBOX, ids)
        )
        assert sum(removed) == 20 and await one.mailboxes.count(MAILBOX) == 0

        # A login through one process is a live session in the other; a revocation in one
        # is seen by the other.
        await one.accounts.register("alice", b"r" * 64, 1)
        await one.accounts.open_session(b"h" * 32, Session("alice", b"k" * 32, 10_000), 1, 8)
        assert await two.accounts.has_live_session(b"k" * 32, now_ms=5)
        assert await one.accounts.revoke(b"h" * 32)
        assert not await two.accounts.has_live_session(b"k" * 32, now_ms=5)
    finally:
        await one.close()
        await two.close()


async def test_quotas_hold_across_processes(pg_dsn: str, runtimes: Runtimes) -> None:
    await migrated(pg_dsn)
    quotas = StoreQuotas(max_per_mailbox=10)
    one, two = await open_pg(pg_dsn, runtimes, quotas), await open_pg(pg_dsn, runtimes, quotas)
    try:
        results = await asyncio.gather(
            *((one if n % 2 else two).mailboxes.put([envelope(n)], now_ms=0) for n in range(30)),
            return_exceptions=True,
        )
        accepted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, MailboxFullError)]
        assert len(accepted) == 10 and len(refused) == 20
        assert await one.mailboxes.count(MAILBOX) == 10
    finally:
        await one.close()
        await two.close()


def test_migrate_from_sqlite_moves_everything_and_keeps_cursors(
    pg_dsn: str, tmp_path: Path, runtimes: Runtimes
) -> None:
    data = tmp_path / "relay-data"
    data.mkdir()
    mailboxes = MailboxStore(data / "mailboxes.sqlite3")
    sent = [envelope(n) for n in range(30)] + [envelope(n, OTHER) for n in range(5)]
    mailboxes.put(sent[:30], now_ms=0)
    # The sender of these asked to be told if they expire.
    mailboxes.put(sent[30:], now_ms=0, sender=SENDER)
    half = mailboxes.fetch(MAILBOX, 0, 10, 1 << 20)  # a node read part of its mail already
    mailboxes.close()
    # And one of its envelopes was pushed out of a full mailbox: owed, not yet told.
    mailboxes = MailboxStore(data / "mailboxes.sqlite3", quotas=StoreQuotas(max_per_mailbox=1))
    pushed = envelope(0, THIRD)
    mailboxes.put([pushed], now_ms=0, sender=SENDER)
    mailboxes.put([envelope(1, THIRD)], now_ms=5, not_before_ms=1)
    mailboxes.close()
    accounts = AccountStore(data / "accounts.sqlite3")
    accounts.register("alice", b"r" * 64, 1)
    accounts.open_session(b"h" * 32, Session("alice", b"k" * 32, 10_000), 1, keep=8)
    accounts.close()
    directory = DirectoryStore(data / "directory.sqlite3")
    owner = b"\x0a" * 32
    directory.publish(owner, [(1, b"kp first"), (1, b"kp second")], [(1, b"kp last")], 1)
    directory.bind("alice", owner, 1)
    directory.close()

    env = dict(os.environ, QUICNPROTOCHAT_RELAY_DSN=pg_dsn)
    command = [sys.executable, "-m", "relay", "migrate", "--from-sqlite", str(data)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "moved 36 envelopes in 3 mailboxes, 1 accounts and 1 sessions" in done.stdout
    assert "3 KeyPackages and 1 usernames" in done.stdout
    # A second move would merge two stores: refused with one line, nothing changed.
    again = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert again.returncode == 1 and again.stderr.startswith("ERROR: ")
    assert "Traceback" not in again.stderr

    async def check() -> None:
        store = await open_pg(pg_dsn, runtimes)
        try:
            rest = await store.mailboxes.fetch(MAILBOX, half.cursor, 100, 1 << 20)
            assert [e.id for e in rest.envelopes] == [e.id for e in sent[10:30]]
            assert await store.mailboxes.count(OTHER) == 5
            assert store.mailboxes.mailboxes == 3
            assert await store.accounts.record("alice") == b"r" * 64
            assert await store.accounts.has_live_session(b"k" * 32, now_ms=5)
            # New envelopes continue after the moved ones.
            await store.mailboxes.put([envelope(99)], now_ms=1)
            tail = await store.mailboxes.fetch(MAILBOX, rest.cursor, 100, 1 << 20)
            assert len(tail.envelopes) == 1
            # The directory came along: the single-use KeyPackages in order, then the
            # last-resort one, and the username.
            moved = PgDirectory(store)
            assert await moved.identity_of("alice") == owner
            taken = [await moved.take(owner, 0) for _ in range(3)]
            assert taken == [[b"kp first"], [b"kp second"], [b"kp last"]]
            # Who asked to be told of expiry came along too.
            purged = await store.mailboxes.purge_expired(not_before_ms=1, telling=Telling(2, SALT))
            assert (purged.expired, purged.notices) == (35, 1)
            [notice] = (await store.mailboxes.fetch(SENDER, 0, 10, 1 << 20)).envelopes
            told = wire.decode_delivery_failure(notice.payload).envelopes
            assert [(u.id, u.recipient) for u in told] == [
                (pushed.id, THIRD),
                *((e.id, OTHER) for e in sent[30:]),
            ]
        finally:
            await store.close()

    asyncio.run(check())


def test_relay_run_and_migrate_refuse_with_one_line(pg_dsn: str, tmp_path: Path) -> None:
    """A database newer than this code, a server that is not there and a dsn that is not one:
    `relay run` and `relay migrate` each say so in one `ERROR:` line and exit 1."""
    config = tmp_path / "relay.toml"
    config.write_text('store = "postgresql"\n')

    def relay(dsn: str, *args: str) -> str:
        env = dict(
            os.environ, QUICNPROTOCHAT_RELAY_DSN=dsn, QUICNPROTOCHAT_RELAY_PASSPHRASE="test pass"
        )
        done = subprocess.run(
            [sys.executable, "-m", "relay", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 1, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ERROR: "), done.stderr
        return lines[0]

    data_dir = str(tmp_path / "relay")
    run = ("run", "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--config", str(config))

    async def newer() -> None:
        await migrated(pg_dsn)
        conn = await connect_pg(pg_dsn)
        try:
            await conn.execute("UPDATE qpc_schema SET version = $1", SCHEMA_VERSION + 1)
        finally:
            await conn.close()

    asyncio.run(newer())
    for args in (run, ("migrate",)):
        assert f"schema version {SCHEMA_VERSION + 1}, newer than" in relay(pg_dsn, *args)

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: nothing can answer there
        nobody = f"postgresql://postgres@127.0.0.1:{unused.getsockname()[1]}/x"
        for args in (run, ("migrate",)):
            assert "cannot reach the PostgreSQL store" in relay(nobody, *args)
    for args in (run, ("migrate",)):
        assert "dsn is not usable" in relay("mysql://somewhere/x", *args)


async def test_pg_dump_while_relays_run_restores_into_a_store_that_carries_on(
    pg_dsn: str, postgres: PostgresServer, runtimes: Runtimes
) -> None:
    """The backup the docs give: ``pg_dump --format=custom`` while the store is in use, then
    ``pg_restore`` into an empty database and ``relay migrate``. The restored store holds the
    envelopes, accounts and directory of the dump's moment, and new envelopes come after them."""
    await migrated(pg_dsn)
    live = await open_pg(pg_dsn, runtimes)
    dump = postgres.root / f"relay-{os.getpid()}.dump"
    try:
        sent = [envelope(n) for n in range(5)]
        await live.mailboxes.put(sent, now_ms=1)
        await live.accounts.register("alice", b"r" * 64, 1)
        await PgDirectory(live).publish(b"\x0a" * 32, [(1, b"kp")], [], 1)
        postgres.tool("pg_dump", "--format=custom", "-f", str(dump), pg_dsn)
        await live.mailboxes.put([envelope(9)], now_ms=2)  # after the dump: not in it
    finally:
        await live.close()

    restored_dsn = postgres.create_database(f"qpc_restored_{os.getpid()}")
    postgres.tool("pg_restore", "--dbname", restored_dsn, str(dump))
    dump.unlink()
    await migrated(restored_dsn)  # the docs' next step: a no-op at the same version
    restored = await open_pg(restored_dsn, runtimes)
    try:
        got = await restored.mailboxes.fetch(MAILBOX, 0, 100, 1 << 20)
        assert [e.id for e in got.envelopes] == [e.id for e in sent]
        assert await restored.accounts.record("alice") == b"r" * 64
        assert await PgDirectory(restored).take(b"\x0a" * 32, 0) == [b"kp"]
        await restored.mailboxes.put([envelope(10)], now_ms=3)
        tail = await restored.mailboxes.fetch(MAILBOX, got.cursor, 100, 1 << 20)
        assert len(tail.envelopes) == 1  # numbered after the restored ones
    finally:
        await restored.close()
