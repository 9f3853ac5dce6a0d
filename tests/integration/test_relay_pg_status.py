"""``relay status`` beside running relays whose store is not a plain SQLite file: a keyed one
(SQLCipher, ``$QUICNPROTOCHAT_RELAY_DB_KEY``) and a PostgreSQL one shared by two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from node.core import wire
from node.core.identity import Identity
from tests.conftest import RelayProcess
from tests.integration.test_relay_directory import connected, register_and_log_in
from tests.integration.test_relay_pg_failover import (
    pg_relays,  # noqa: F401 - the fixture, used by name
)

KEY = "ab" * 32


def relay_status(data: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", "status", "--data-dir", str(data), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ) | env,
        check=False,
    )


def envelope(recipient: Identity) -> wire.Envelope:
    return wire.Envelope(
        os.urandom(16), recipient.mailbox, wire.EnvelopeKind.APPLICATION, b"sealed", b"g", 1
    )


async def test_status_reads_a_keyed_store_with_its_key_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUICNPROTOCHAT_RELAY_DB_KEY", KEY)
    bob, carol = Identity.generate(), Identity.generate()
    relay = RelayProcess(tmp_path / "relay", "status test")
    relay.start()
    try:
        async with connected(relay) as alice:
            batch = (envelope(bob), envelope(bob), envelope(carol))
            assert isinstance(await alice.call(wire.Deliver(batch)), wire.DeliverResult)
            await register_and_log_in(alice, relay, "alice")
        assert (tmp_path / "relay" / "mailboxes.sqlite3").read_bytes()[:6] != b"SQLite"
        shown = relay_status(relay.data_dir)
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        assert status["store"] == "sqlcipher"
        assert (status["mailboxes"]["mailboxes"], status["mailboxes"]["envelopes"]) == (2, 3)
        assert status["accounts"] == {"accounts": 1, "live_sessions": 1}
        assert KEY not in shown.stdout  # the key is a setting, never shown
    finally:
        relay.stop()
    monkeypatch.delenv("QUICNPROTOCHAT_RELAY_DB_KEY")
    for env, says in (({}, "needs db_key"), ({"QUICNPROTOCHAT_RELAY_DB_KEY": "cd" * 32}, "db_key")):
        refused = relay_status(relay.data_dir, **env)
        assert refused.returncode == 1
        assert refused.stderr.startswith("ERROR: ") and len(refused.stderr.splitlines()) == 1
        assert says in refused.stderr


async def test_status_reads_the_postgresql_store_of_two_relays(
    pg_relays: list[RelayProcess],  # noqa: F811 - the fixture
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    first, second = pg_relays
    bob, carol = Identity.generate(), Identity.generate()
    async with connected(first) as one, connected(second) as two:
        assert isinstance(await one.call(wire.Deliver((envelope(bob),))), wire.DeliverResult)
        batch = (envelope(bob), envelope(carol))
        assert isinstance(await two.call(wire.Deliver(batch)), wire.DeliverResult)
        await register_and_log_in(two, second, "carol")
    env = {"QUICNPROTOCHAT_RELAY_STORE": "postgresql", "QUICNPROTOCHAT_RELAY_DSN": pg_dsn}
    # The data directory holds no store of its own: the counts come from the database.
    shown = relay_status(tmp_path / "elsewhere", **env)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["store"] == "postgresql"
    assert status["mailboxes"]["mailboxes"] == 2
    assert status["mailboxes"]["envelopes"] == 3
    assert status["mailboxes"]["largest_mailbox"] == 2
    assert status["accounts"] == {"accounts": 1, "live_sessions": 1}
    assert pg_dsn not in shown.stdout

    gone = relay_status(tmp_path, **(env | {"QUICNPROTOCHAT_RELAY_DSN": pg_dsn + "_missing"}))
    assert gone.returncode == 1
    assert gone.stderr.startswith("ERROR: ") and len(gone.stderr.splitlines()) == 1
