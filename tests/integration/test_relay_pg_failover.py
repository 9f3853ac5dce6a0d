"""Several real relay processes on one real PostgreSQL server: one service, one identity key.

SIGKILL one under load and the nodes' routers carry on through the other; a database that goes
away refuses calls with BUSY, stores nothing half, and the relay recovers by itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Collection, Iterator
from pathlib import Path

import asyncpg
import pytest

from node.app.contacts import Contacts
from node.app.router import RelayInfo, Router
from node.core import wire
from node.core.errors import ErrorCode, RelayError
from node.core.identity import Identity
from node.transport.connection import PeerConnection as Connection
from node.transport.endpoint import Endpoint
from relay.accounts import SETUP_FILE
from relay.store_pg import MAIL_CHANNEL
from tests.conftest import LOOPBACK, RelayProcess, running_endpoint
from tests.pg_support import PostgresServer, SeveringProxy
from tests.runtime_support import Runtimes

PASSPHRASE = "test relay passphrase"
# Limits high enough that the load below is never rate-limited: this is about failover.
CONFIG = """
store = "postgresql"
calls_per_second = 10000.0
call_burst = 10000
envelopes_per_mailbox_per_second = 10000.0
envelope_burst_per_mailbox = 10000
"""
POLL_S = 20.0  # one long poll's timeout


def run_migrate(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, QUICNPROTOCHAT_RELAY_DSN=dsn)
    return subprocess.run(
        [sys.executable, "-m", "relay", "migrate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@contextlib.contextmanager
def one_service(
    dsns: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[RelayProcess]]:
    """Two relay processes of one service, each reaching the database by its own DSN: the
    second is deployed the first's sealed identity key and OPAQUE setup."""
    done = run_migrate(dsns[0])
    assert done.returncode == 0, done.stderr
    assert "schema version 0 ->" in done.stdout
    config = tmp_path / "relay.toml"
    config.write_text(CONFIG)
    relays: list[RelayProcess] = []
    try:
        for n, dsn in enumerate(dsns):
            data_dir = tmp_path / "ab"[n]
            if relays:
                data_dir.mkdir(mode=0o700)
                for name in ("relay.key", SETUP_FILE):
                    shutil.copy2(relays[0].data_dir / name, data_dir / name)
            monkeypatch.setenv("QUICNPROTOCHAT_RELAY_DSN", dsn)
            relays.append(RelayProcess(data_dir, PASSPHRASE, extra_args=("--config", str(config))))
            relays[-1].start()
        yield relays
    finally:
        for relay in relays:
            relay.stop()


@pytest.fixture
def pg_relays(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[RelayProcess]]:
    with one_service((pg_dsn, pg_dsn), tmp_path, monkeypatch) as relays:
        yield relays


@contextlib.asynccontextmanager
async def router_for(
    identity: Identity, relays: list[RelayProcess], runtimes: Runtimes
) -> AsyncIterator[Router]:
    runtime = runtimes()
    endpoint = Endpoint(identity, None, runtime)
    await endpoint.start(LOOPBACK, 0)
    addresses = [r.address for r in relays if r.address is not None]
    assert relays[0].identity is not None
    info = RelayInfo(addresses[0], relays[0].identity, tuple(addresses[1:]))
    try:
        yield Router(endpoint, Contacts(), info, runtime, relay_deadline=2.0)
    finally:
        await endpoint.close()


def envelope(recipient: Identity, sender: int, n: int) -> wire.Envelope:
    return wire.Envelope(
        os.urandom(16),
        recipient.mailbox,
        wire.EnvelopeKind.APPLICATION,
        f"from {sender}: {n}".encode(),
        b"g",
        n,
    )


async def listening(
    dsn: str, n: int, replacing: Collection[int] = (), name: str | None = None
) -> list[int]:
    """Wait until ``n`` relay processes (those whose DSN names ``application_name=name``, if
    given) LISTEN on the database, none through a backend in ``replacing``; return those
    backends' pids."""
    conn = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(30):
            while True:
                rows = await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state = 'idle' AND query = $1"
                    " AND ($2::text IS NULL OR application_name = $2)",
                    f'LISTEN "{MAIL_CHANNEL}"',
                    name,
                )
                pids = [int(r[0]) for r in rows]
                if len(pids) == n and not set(pids) & set(replacing):
                    return pids
                await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def poll_like_a_node(conn: Connection, mailbox: bytes, cursor: int) -> list[bytes]:
    """Long-poll as a node does, polling again whenever a poll ends with nothing. A poll may
    end early with nothing (the relay wakes every poll once when its LISTEN connection comes
    back, since notifications in between were lost), so only the first mail counts, and it
    must come before one poll's timeout: a wake-up that never came would show as a poll
    that ran to its end."""
    async with asyncio.timeout(POLL_S * 0.75):
        while True:
            got = await conn.call(
                wire.Wait(mailbox, cursor, 10, int(POLL_S * 1000)), deadline=POLL_S + 10
            )
            if isinstance(got, wire.ErrorResult):
                assert got.code == ErrorCode.BUSY  # its pool meets a dead connection: retry
                await asyncio.sleep(0.1)
                continue
            assert isinstance(got, wire.FetchResult)
            if got.envelopes:
                return [e.id for e in got.envelopes]
            cursor = got.cursor


async def deliver_until_accepted(conn: Connection, env: wire.Envelope) -> None:
    """Deliver as a node's outbox does: the same envelope again while the relay is busy."""
    async with asyncio.timeout(30):
        while True:
            answer = await conn.call(wire.Deliver((env,)), deadline=20.0)
            if isinstance(answer, wire.DeliverResult):
                assert answer.accepted == (env.id,)
                return
            assert isinstance(answer, wire.ErrorResult) and answer.code == ErrorCode.BUSY
            await asyncio.sleep(0.1)


async def test_sigkill_one_relay_under_load_loses_nothing_acknowledged_and_repeats_nothing(
    pg_relays: list[RelayProcess], runtimes: Runtimes
) -> None:
    first, second = pg_relays
    assert first.identity == second.identity  # one service, one key
    bob = Identity.generate()
    senders = [Identity.generate() for _ in range(3)]
    per_sender = 40
    acknowledged: set[bytes] = set()
    killed = asyncio.Event()

    async def send_all(n: int, router: Router) -> None:
        for k in range(per_sender):
            env = envelope(bob, n, k)
            for _attempt in range(20):  # the node's outbox retries the same envelope
                try:
                    answer = await router.call_relay(wire.Deliver((env,)))
                except RelayError:
                    continue
                assert isinstance(answer, wire.DeliverResult) and env.id in answer.accepted
                acknowledged.add(env.id)
                break
            else:
                pytest.fail("an envelope was never accepted by either relay")
            if len(acknowledged) == per_sender and not killed.is_set():
                first.kill()  # SIGKILL mid-load: no chance to flush or close anything
                killed.set()

    shown: list[bytes] = []
    acked: set[bytes] = set()
    served_after_ack: list[bytes] = []

    async def receive(router: Router) -> None:
        cursor = 0
        async with asyncio.timeout(90):
            while not (killed.is_set() and acknowledged and acknowledged <= acked):
                try:
                    got = await router.call_relay(
                        wire.Wait(bob.mailbox, cursor, 64, 500), deadline=3.0
                    )
                except RelayError:
                    continue
                assert isinstance(got, wire.FetchResult)
                fresh = []
                for env in got.envelopes:
                    if env.id in acked:
                        served_after_ack.append(env.id)
                    elif env.id not in shown:  # the node's inbox drops a repeat by id
                        shown.append(env.id)
                        fresh.append(env.id)
                cursor = got.cursor
                if got.envelopes:
                    ids = tuple(e.id for e in got.envelopes)
                    for _attempt in range(20):
                        try:
                            await router.call_relay(wire.Ack(bob.mailbox, ids), deadline=3.0)
                        except RelayError:
                            continue
                        break
                    acked.update(ids)

    async with contextlib.AsyncExitStack() as stack:
        routers = [
            await stack.enter_async_context(router_for(s, pg_relays, runtimes)) for s in senders
        ]
        reader = await stack.enter_async_context(router_for(bob, pg_relays, runtimes))
        receiving = asyncio.create_task(receive(reader))
        await asyncio.gather(*(send_all(n, r) for n, r in enumerate(routers)))
        await receiving

    assert killed.is_set() and first.proc is not None and first.proc.returncode is not None
    assert len(acknowledged) == len(senders) * per_sender
    assert acknowledged <= set(shown), "an acknowledged envelope was lost"
    assert len(shown) == len(set(shown))
    assert served_after_ack == [], "an envelope came back after its ack"
    # The survivor serves every mailbox: nothing is left in bob's.
    async with running_endpoint(bob, None) as endpoint:
        assert second.address is not None and second.identity is not None
        conn = await endpoint.dial(second.address, second.identity)
        final = await conn.call(wire.Fetch(bob.mailbox, 0, 10))
        assert isinstance(final, wire.FetchResult) and final.envelopes == ()


async def test_database_unreachable_refuses_with_busy_stores_nothing_and_recovers(
    pg_relays: list[RelayProcess], postgres: PostgresServer, pg_dsn: str
) -> None:
    relay = pg_relays[0]
    assert relay.address is not None and relay.identity is not None
    alice, bob = Identity.generate(), Identity.generate()
    before = envelope(bob, 0, 0)
    during = [envelope(bob, 0, n) for n in range(1, 4)]
    after = envelope(bob, 0, 9)
    async with running_endpoint(alice, None) as ea, running_endpoint(bob, None) as eb:
        to_relay = await ea.dial(relay.address, relay.identity)
        bobs = await eb.dial(relay.address, relay.identity)
        assert await to_relay.call(wire.Deliver((before,))) == wire.DeliverResult((before.id,))

        postgres.stop()
        try:
            refused = await to_relay.call(wire.Deliver(tuple(during)), deadline=20.0)
            assert isinstance(refused, wire.ErrorResult)
            assert refused.code == ErrorCode.BUSY and "database" in refused.message
            fetch = await bobs.call(wire.Fetch(bob.mailbox, 0, 10), deadline=20.0)
            assert isinstance(fetch, wire.ErrorResult) and fetch.code == ErrorCode.BUSY
        finally:
            postgres.start()

        # Back by itself: no restart of the relay. A refused batch left nothing behind.
        async with asyncio.timeout(30):
            while True:
                got = await bobs.call(wire.Fetch(bob.mailbox, 0, 10), deadline=20.0)
                if isinstance(got, wire.FetchResult):
                    break
                assert isinstance(got, wire.ErrorResult) and got.code == ErrorCode.BUSY
                await asyncio.sleep(0.1)
        assert [e.id for e in got.envelopes] == [before.id]

        # A long poll open while the LISTEN connections come back (each by itself) is woken by a
        # delivery through the other process.
        polling = asyncio.create_task(poll_like_a_node(bobs, bob.mailbox, got.cursor))
        await listening(pg_dsn, 2)
        other = pg_relays[1]
        assert other.address is not None
        via_other = await ea.dial(other.address, relay.identity)
        await deliver_until_accepted(via_other, after)
        assert await polling == [after.id]


async def test_a_lost_listen_connection_is_replaced_and_long_polls_still_wake(
    pg_relays: list[RelayProcess], pg_dsn: str
) -> None:
    """The LISTEN connection alone can go (``idle_session_timeout``, an administrator, a proxy
    that drops idle connections) while the pool stays up: the relay replaces it, and a long
    poll open across the replacement is still woken by a delivery through the other process."""
    relay, other = pg_relays
    assert relay.address is not None and relay.identity is not None
    assert other.address is not None
    alice, bob = Identity.generate(), Identity.generate()
    after = envelope(bob, 0, 1)
    async with running_endpoint(alice, None) as ea, running_endpoint(bob, None) as eb:
        bobs = await eb.dial(relay.address, relay.identity)
        via_other = await ea.dial(other.address, relay.identity)
        listeners = await listening(pg_dsn, 2)
        polling = asyncio.create_task(poll_like_a_node(bobs, bob.mailbox, 0))
        # Answered after the poll was sent, so the poll is normally open at the relay when its
        # LISTEN connection goes (the node-like loop must get the mail either way).
        empty = await bobs.call(wire.Fetch(bob.mailbox, 0, 10))
        assert isinstance(empty, wire.FetchResult) and empty.envelopes == ()
        conn = await asyncpg.connect(pg_dsn)
        try:
            killed = await conn.fetchval(
                "SELECT bool_and(pg_terminate_backend(p)) FROM unnest($1::int[]) AS p", listeners
            )
            assert killed
        finally:
            await conn.close()
        await listening(pg_dsn, 2, replacing=listeners)
        await deliver_until_accepted(via_other, after)
        assert await polling == [after.id]


async def test_a_database_machine_that_restarted_silently_gets_listened_to_again(
    postgres: PostgresServer, pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database machine that restarts (or a standby taking over its address) ends its
    connections without a FIN: a connection that only LISTENs never hears of it. The relay finds
    out by itself, listens again, and long polls wake across processes again."""
    proxy = SeveringProxy(postgres.port)
    database = pg_dsn.rpartition("/")[2]
    try:
        severed = f"{proxy.dsn(database)}?application_name=severed"
        with one_service((severed, pg_dsn), tmp_path, monkeypatch) as (relay, other):
            assert relay.address is not None and relay.identity is not None
            assert other.address is not None
            alice, bob = Identity.generate(), Identity.generate()
            after = envelope(bob, 0, 1)
            async with running_endpoint(alice, None) as ea, running_endpoint(bob, None) as eb:
                bobs = await eb.dial(relay.address, relay.identity)
                via_other = await ea.dial(other.address, relay.identity)
                before = await listening(pg_dsn, 1, name="severed")
                proxy.sever()
                await listening(pg_dsn, 1, replacing=before, name="severed")
                polling = asyncio.create_task(poll_like_a_node(bobs, bob.mailbox, 0))
                await deliver_until_accepted(via_other, after)
                assert await polling == [after.id]
    finally:
        proxy.close()
