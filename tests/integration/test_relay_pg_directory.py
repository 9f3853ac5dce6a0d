"""The relay's directory on a real PostgreSQL server: two relay processes on one database serve
one directory (a KeyPackage published through one is fetched through the other, a name bound
through one resolves through the other), its quotas hold across processes, and a relay that
fails to start after opening its pool closes the pool again."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import pytest

from node.core import suites, wire
from node.core.errors import ErrorCode
from node.core.identity import Identity
from node.mls import MlsClient
from relay.directory_pg import PgDirectory
from relay.directory_store import (
    DirectoryFullError,
    DirectoryQuotas,
    KeyPackagePoolFullError,
    SuiteCount,
)
from relay.server import Relay, RelayConfig
from relay.store import StoreQuotas
from relay.store_pg import PgStore, connect_pg
from tests.conftest import LOOPBACK, RelayProcess
from tests.integration.test_relay_directory import code_of, connected, register_and_log_in
from tests.integration.test_relay_pg_failover import (
    PASSPHRASE,
    pg_relays,  # noqa: F401 - the fixture, used by name
)
from tests.integration.test_relay_pg_store import migrated
from tests.runtime_support import Runtimes

OWNER = b"\x07" * 32


async def test_two_relay_processes_serve_one_directory(
    pg_relays: list[RelayProcess],  # noqa: F811 - the fixture
    runtimes: Runtimes,
) -> None:
    first, second = pg_relays
    bob, alice = Identity.generate(), Identity.generate()
    mls = MlsClient(bob, runtimes())
    singles = (mls.key_package(suites.XWING), mls.key_package(suites.XWING))
    last = mls.last_resort_key_package(suites.XWING)
    async with (
        connected(first, bob) as bob_at_first,
        connected(second, bob) as bob_at_second,
        connected(second, alice) as alice_at_second,
        connected(first, alice) as alice_at_first,
    ):
        published = await bob_at_first.call(wire.PublishKeyPackages(singles, (last,)))
        assert published == wire.PublishKeyPackagesResult(
            (wire.KeyPackageCount(suites.XWING, 2, True),), 32
        )
        # Each single-use one is handed out once, whichever process serves the fetch; then the
        # last-resort one, which stays.
        got = []
        for conn in (alice_at_second, alice_at_first, alice_at_second, alice_at_first):
            answer = await conn.call(wire.FetchKeyPackage(bob.public_key))
            assert isinstance(answer, wire.FetchKeyPackageResult)
            got.append(answer.key_package)
        assert got == [singles[0], singles[1], last, last]
        # The other process tells bob his pool there runs low: it is the same pool.
        fetched = await bob_at_second.call(wire.Fetch(bob.mailbox, 0, 1))
        assert isinstance(fetched, wire.FetchResult) and fetched.key_packages_low

        # A name bound by a login through one process resolves, both ways, through the other.
        assert code_of(await alice_at_second.call(wire.ResolveUser("bob"))) is (ErrorCode.NOT_FOUND)
        await register_and_log_in(bob_at_first, first, "bob")
        assert await alice_at_second.call(wire.ResolveUser("bob")) == wire.ResolveUserResult(
            bob.public_key
        )
        assert await alice_at_second.call(wire.ResolveIdentity(bob.public_key)) == (
            wire.ResolveIdentityResult("bob")
        )


async def open_two(
    dsn: str, runtimes: Runtimes, quotas: DirectoryQuotas
) -> tuple[PgStore, PgDirectory, PgStore, PgDirectory]:
    await migrated(dsn)
    one = await PgStore.open(dsn, runtimes(), StoreQuotas(), 1000)
    two = await PgStore.open(dsn, runtimes(), StoreQuotas(), 1000)
    return one, PgDirectory(one, quotas), two, PgDirectory(two, quotas)


async def test_pool_quota_byte_cap_and_single_use_hold_across_processes(
    pg_dsn: str, runtimes: Runtimes
) -> None:
    quotas = DirectoryQuotas(max_per_suite=5, max_bytes=10_000)
    one, a, two, b = await open_two(pg_dsn, runtimes, quotas)
    try:
        # Ten publishes of one KeyPackage each, through both processes at once: five fit.
        results = await asyncio.gather(
            *(
                (a if n % 2 else b).publish(OWNER, [(1, bytes([n]) * 100)], [], now_ms=10)
                for n in range(10)
            ),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, KeyPackagePoolFullError)]
        assert len(refused) == 5
        assert await b.publish(OWNER, [], [], now_ms=10) == [SuiteCount(1, 5, False)]
        assert await a.runs_low(OWNER, 6) and not await a.runs_low(OWNER, 5)
        # Taken through both at once: each single-use one comes out exactly once.
        taken = await asyncio.gather(*((a if n % 2 else b).take(OWNER, 0) for n in range(8)))
        bodies = [t[0] for t in taken if t]
        assert len(bodies) == 5 and len(set(bodies)) == 5
        # The byte cap is the directory's, not one process's.
        await a.publish(OWNER, [(1, b"x" * 6000)], [], now_ms=10)
        with pytest.raises(DirectoryFullError):
            await b.publish(b"\x08" * 32, [(1, b"y" * 6000)], [], now_ms=10)
        # Too old: never handed out, and purged.
        assert await b.take(OWNER, not_before_ms=11) == []
        await a.publish(OWNER, [], [(1, b"l" * 50)], now_ms=5)
        assert await b.purge_expired(not_before_ms=6) == 1
        await a.refresh()
        assert (a.identities, a.total_bytes) == (0, 0)

        await a.bind("bob", OWNER, 1)
        await b.bind("bob", b"\x09" * 32, 2)  # bob logged in from a new device
        assert await a.identity_of("bob") == b"\x09" * 32
        assert await a.username_of(OWNER) is None
    finally:
        await one.close()
        await two.close()


async def test_concurrent_low_checks_each_answer_for_their_own_identity(
    pg_dsn: str, runtimes: Runtimes
) -> None:
    one, a, two, _ = await open_two(pg_dsn, runtimes, DirectoryQuotas())
    try:
        many, few, last_only, none = (bytes([n]) * 32 for n in range(10, 14))
        await a.publish(many, [(1, bytes([n]) * 100) for n in range(5)], [], now_ms=10)
        await a.publish(few, [(1, b"f" * 100)], [(2, b"l" * 100)], now_ms=10)
        await a.publish(last_only, [], [(1, b"k" * 100)], now_ms=10)
        low = await asyncio.gather(
            a.runs_low(many, 5),
            a.runs_low(many, 6),
            a.runs_low(few, 1),  # suite 2 has only its last-resort one: low
            a.runs_low(last_only, 1),
            a.runs_low(none, 5),  # nothing published here: nothing to replenish
        )
        assert low == [False, True, True, True, False]
    finally:
        await one.close()
        await two.close()


async def backends(dsn: str) -> int:
    """Connections to the test's database, other than the one asking."""
    database = dsn.rsplit("/", 1)[1]
    conn = await connect_pg(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1"
                " AND pid <> pg_backend_pid()",
                database,
            )
        )
    finally:
        await conn.close()


async def test_a_relay_that_cannot_bind_closes_its_pool(
    pg_dsn: str, tmp_path: Path, runtimes: Runtimes
) -> None:
    await migrated(pg_dsn)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((LOOPBACK, 0))
        port = taken.getsockname()[1]
        data = tmp_path / "relay"
        data.mkdir(mode=0o700)
        config = RelayConfig(
            LOOPBACK,
            port,
            data,
            PASSPHRASE.encode(),
            store="postgresql",
            dsn=pg_dsn,
            pg_pool_size=4,
        )
        relay = Relay(config, runtimes())
        with pytest.raises(OSError, match="in use"):
            await relay.start()
        # This process is alive: a pool left open would still hold its connections.
        async with asyncio.timeout(10):
            while await backends(pg_dsn):
                await asyncio.sleep(0.05)

        env = dict(
            os.environ, QUICNPROTOCHAT_RELAY_PASSPHRASE=PASSPHRASE, QUICNPROTOCHAT_RELAY_DSN=pg_dsn
        )
        env["QUICNPROTOCHAT_RELAY_STORE"] = "postgresql"
        command = ["-m", "relay", "run", "--listen", f"{LOOPBACK}:{port}", "--data-dir"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *command,
            str(data),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
    stderr = err.decode()
    assert proc.returncode == 1
    assert stderr.startswith("ERROR: ") and len(stderr.splitlines()) == 1, stderr
    assert "in use" in stderr
