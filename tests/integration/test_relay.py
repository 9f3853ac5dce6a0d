"""A real relay process: deliver, fetch, ack; only the owner reads a mailbox; restarts lose nothing."""

from __future__ import annotations

import os
import subprocess
import sys

from node.core import wire
from node.core.errors import ErrorCode
from node.core.identity import Identity
from tests.conftest import RelayProcess, running_endpoint


def envelope_for(recipient: Identity, n: int) -> wire.Envelope:
    return wire.Envelope(
        id=os.urandom(16),
        recipient=recipient.mailbox,
        kind=wire.EnvelopeKind.APPLICATION,
        payload=f"ciphertext {n}".encode(),
        group_id=b"g",
        created_at_ms=n,
    )


async def test_owner_fetches_in_order_and_ack_removes(relay_process: RelayProcess) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    assert relay_process.address is not None and relay_process.identity is not None
    sent = [envelope_for(bob, n) for n in range(3)]
    async with running_endpoint(alice, None) as ea, running_endpoint(bob, None) as eb:
        relay_for_alice = await ea.dial(relay_process.address, relay_process.identity)
        accepted = await relay_for_alice.call(wire.Deliver(tuple(sent)))
        assert accepted == wire.DeliverResult(tuple(e.id for e in sent))
        # Delivering the same envelope again is accepted and stored once.
        assert await relay_for_alice.call(wire.Deliver((sent[0],))) == wire.DeliverResult(
            (sent[0].id,)
        )

        relay_for_bob = await eb.dial(relay_process.address, relay_process.identity)
        first = await relay_for_bob.call(wire.Fetch(bob.mailbox, 0, 2))
        assert isinstance(first, wire.FetchResult)
        assert [e.payload for e in first.envelopes] == [b"ciphertext 0", b"ciphertext 1"]
        rest = await relay_for_bob.call(wire.Fetch(bob.mailbox, first.cursor, 10))
        assert isinstance(rest, wire.FetchResult)
        assert [e.id for e in rest.envelopes] == [sent[2].id]

        removed = await relay_for_bob.call(wire.Ack(bob.mailbox, tuple(e.id for e in sent)))
        assert removed == wire.AckResult(3)
        again = await relay_for_bob.call(wire.Fetch(bob.mailbox, 0, 10))
        assert again == wire.FetchResult((), 0)


async def test_fetch_or_ack_of_someone_elses_mailbox_is_refused(
    relay_process: RelayProcess,
) -> None:
    alice, bob, mallory = Identity.generate(), Identity.generate(), Identity.generate()
    assert relay_process.address is not None and relay_process.identity is not None
    env = envelope_for(bob, 1)
    async with running_endpoint(alice, None) as ea, running_endpoint(mallory, None) as em:
        await (await ea.dial(relay_process.address, relay_process.identity)).call(
            wire.Deliver((env,))
        )
        relay = await em.dial(relay_process.address, relay_process.identity)
        for request in (wire.Fetch(bob.mailbox, 0, 10), wire.Ack(bob.mailbox, (env.id,))):
            answer = await relay.call(request)
            assert isinstance(answer, wire.ErrorResult)
            assert answer.code is ErrorCode.UNAUTHORIZED
    # The refused ack removed nothing: bob still finds it.
    async with running_endpoint(bob, None) as eb:
        relay = await eb.dial(relay_process.address, relay_process.identity)
        fetched = await relay.call(wire.Fetch(bob.mailbox, 0, 10))
        assert isinstance(fetched, wire.FetchResult)
        assert [e.id for e in fetched.envelopes] == [env.id]


async def test_a_killed_relay_restarts_with_every_accepted_envelope(
    relay_process: RelayProcess,
) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    assert relay_process.address is not None
    relay_key = relay_process.identity
    assert relay_key is not None
    sent = [envelope_for(bob, n) for n in range(5)]
    async with running_endpoint(alice, None) as ea:
        relay = await ea.dial(relay_process.address, relay_key)
        for env in sent:
            assert await relay.call(wire.Deliver((env,))) == wire.DeliverResult((env.id,))
    relay_process.kill()  # SIGKILL right after the last acceptance
    relay_process.stop()
    relay_process.start()
    assert relay_process.identity == relay_key  # same sealed identity key after restart
    assert relay_process.address is not None
    async with running_endpoint(bob, None) as eb:
        relay = await eb.dial(relay_process.address, relay_key)
        fetched = await relay.call(wire.Fetch(bob.mailbox, 0, 100))
        assert isinstance(fetched, wire.FetchResult)
        assert [e.id for e in fetched.envelopes] == [e.id for e in sent]


def test_relay_refuses_to_start_without_a_passphrase(tmp_path: object) -> None:
    env = {k: v for k, v in os.environ.items() if k != "QUICNPROTOCHAT_RELAY_PASSPHRASE"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay",
            "run",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "QUICNPROTOCHAT_RELAY_PASSPHRASE" in out.stderr
    assert "Traceback" not in out.stderr


def test_relay_refuses_a_wrong_passphrase_for_its_key(tmp_path: object) -> None:
    from pathlib import Path

    data = Path(str(tmp_path)) / "relay"
    first = RelayProcess(data, passphrase="right")
    first.start()
    first.stop()
    env = dict(os.environ, QUICNPROTOCHAT_RELAY_PASSPHRASE="wrong")
    out = subprocess.run(
        [sys.executable, "-m", "relay", "run", "--listen", "127.0.0.1:0", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "wrong passphrase" in out.stderr
    assert "Traceback" not in out.stderr


async def test_a_long_poll_returns_as_soon_as_something_arrives(
    relay_process: RelayProcess,
) -> None:
    import asyncio

    alice, bob = Identity.generate(), Identity.generate()
    assert relay_process.address is not None
    assert relay_process.identity is not None
    env = envelope_for(bob, 1)
    async with running_endpoint(alice, None) as ea, running_endpoint(bob, None) as eb:
        bob_relay = await eb.dial(relay_process.address, relay_process.identity)
        loop = asyncio.get_running_loop()
        started = loop.time()
        poll = asyncio.ensure_future(bob_relay.call(wire.Wait(bob.mailbox, 0, 10, 20_000), 30))
        alice_relay = await ea.dial(relay_process.address, relay_process.identity)
        await alice_relay.call(wire.Deliver((env,)))
        answer = await poll
        assert isinstance(answer, wire.FetchResult)
        assert [e.id for e in answer.envelopes] == [env.id]
        assert loop.time() - started < 15  # woken by the arrival, not by the 20 s timeout
        # Someone else cannot long-poll bob's mailbox either.
        refused = await alice_relay.call(wire.Wait(bob.mailbox, 0, 10, 1000))
        assert isinstance(refused, wire.ErrorResult)
        assert refused.code is ErrorCode.UNAUTHORIZED


async def test_an_empty_long_poll_ends_quietly_at_its_timeout(relay_process: RelayProcess) -> None:
    bob = Identity.generate()
    assert relay_process.address is not None
    assert relay_process.identity is not None
    async with running_endpoint(bob, None) as eb:
        relay = await eb.dial(relay_process.address, relay_process.identity)
        answer = await relay.call(wire.Wait(bob.mailbox, 0, 10, 300), 10)
        assert answer == wire.FetchResult((), 0)
