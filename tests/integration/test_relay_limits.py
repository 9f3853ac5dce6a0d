"""An in-process relay on loopback, real QUIC: the limits a stranger meets, each refusal with
its code and its counter (``Relay.metrics``), and the measured faults that must not return."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from node.core import wire
from node.core.errors import ErrorCode
from node.core.identity import Identity
from node.core.runtime import Runtime
from node.transport.connection import PeerConnection
from relay.server import Relay, RelayConfig
from tests.conftest import LOOPBACK, running_endpoint
from tests.runtime_support import Runtimes

# Generous allowances, so that a test meets only the limit it is about.
OPEN = {
    "calls_per_second": 10_000.0,
    "call_burst": 10_000,
    "envelopes_per_mailbox_per_second": 10_000.0,
    "envelope_burst_per_mailbox": 100_000,
    "new_mailboxes_per_second": 10_000.0,
    "new_mailbox_burst": 100_000,
}


@contextlib.asynccontextmanager
async def running_relay(data: Path, runtime: Runtime, **limits: Any) -> AsyncIterator[Relay]:
    config = RelayConfig(
        host=LOOPBACK, port=0, data_dir=data, passphrase=b"relay test", **(OPEN | limits)
    )
    relay = Relay(config, runtime)
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


@contextlib.asynccontextmanager
async def client(relay: Relay, identity: Identity | None = None) -> AsyncIterator[PeerConnection]:
    """A connection from a new (or the given) identity to the relay."""
    assert relay._endpoint is not None
    me = identity or Identity.generate()
    async with running_endpoint(me, None) as endpoint:
        yield await endpoint.dial(relay._endpoint.local_address, relay_key(relay))


def relay_key(relay: Relay) -> bytes:
    assert relay._endpoint is not None
    return relay._endpoint._identity.public_key


def envelope(recipient: bytes, payload: bytes = b"ciphertext") -> wire.Envelope:
    return wire.Envelope(os.urandom(16), recipient, wire.EnvelopeKind.APPLICATION, payload, b"g", 1)


def code_of(answer: wire.Response) -> ErrorCode | None:
    return answer.code if isinstance(answer, wire.ErrorResult) else None


async def test_an_envelope_no_fetch_could_carry_is_refused_and_the_mailbox_stays_readable(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    bob = Identity.generate()
    async with running_relay(tmp_path, runtimes()) as relay:
        largest = relay.service.max_envelope_bytes
        fits = envelope(bob.mailbox, b"x" * (largest - 200))  # within 200 bytes of the limit
        assert len(wire.encode_envelope(fits)) <= largest
        async with client(relay) as stranger:
            # The measured fault: a 1 MiB deliver was accepted, then every fetch failed.
            huge = envelope(bob.mailbox, b"x" * ((1 << 20) - 200))
            answer = await stranger.call(wire.Deliver((huge,)))
            assert code_of(answer) is ErrorCode.TOO_LARGE
            assert await stranger.call(wire.Deliver((fits,))) == wire.DeliverResult((fits.id,))
            small = envelope(bob.mailbox)
            assert await stranger.call(wire.Deliver((small,))) == wire.DeliverResult((small.id,))
        async with client(relay, bob) as owner:
            first = await owner.call(wire.Fetch(bob.mailbox, 0, 10))
            assert isinstance(first, wire.FetchResult)
            assert [e.id for e in first.envelopes] == [fits.id]
            rest = await owner.call(wire.Fetch(bob.mailbox, first.cursor, 10))
            assert isinstance(rest, wire.FetchResult)
            assert [e.id for e in rest.envelopes] == [small.id]
        assert relay.metrics()["refused_envelope_size"] == 1


async def test_a_cursor_past_the_signed_range_is_malformed_not_internal(
    tmp_path: Path, runtimes: Runtimes, caplog: pytest.LogCaptureFixture
) -> None:
    bob = Identity.generate()
    async with running_relay(tmp_path, runtimes()) as relay, client(relay, bob) as owner:
        with caplog.at_level(logging.INFO):
            for cursor in (1 << 63, (1 << 64) - 1):
                fetch = await owner.call(wire.Fetch(bob.mailbox, cursor, 10))
                wait = await owner.call(wire.Wait(bob.mailbox, cursor, 10, 100))
                assert (
                    fetch
                    == wait
                    == wire.ErrorResult(ErrorCode.MALFORMED_REQUEST, "cursor out of range")
                )
            assert await owner.call(wire.Fetch(bob.mailbox, (1 << 63) - 1, 10)) == (
                wire.FetchResult((), (1 << 63) - 1)
            )
        assert not [r for r in caplog.records if r.exc_info]  # no traceback in the log
        assert relay.metrics()["refused_out_of_range"] == 4


async def test_every_call_is_charged_to_its_callers_bucket(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    bob = Identity.generate()
    async with running_relay(tmp_path, runtimes(), calls_per_second=0.01, call_burst=5) as relay:
        async with client(relay, bob) as owner:
            answers = [await owner.call(wire.Fetch(bob.mailbox, 0, 1)) for _ in range(7)]
            assert [code_of(a) for a in answers] == [None] * 5 + [ErrorCode.RATE_LIMITED] * 2
            # Every method, not only fetch.
            assert code_of(await owner.call(wire.Deliver(()))) is ErrorCode.RATE_LIMITED
        async with client(relay) as other:  # another caller has its own allowance
            assert await other.call(wire.Deliver(())) == wire.DeliverResult(())
        assert relay.metrics()["refused_call_rate"] == 3


async def test_a_stranger_cannot_fill_someone_elses_mailbox_in_a_burst(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    """The measured fault: one stranger filled a 10,000-envelope mailbox in under a second.
    With the default allowances it gets 100 envelopes in, then 5 a second."""
    bob = Identity.generate()
    defaults = {key: getattr(RelayConfig, key) for key in OPEN}
    runtime = runtimes()
    async with running_relay(tmp_path, runtime, **defaults) as relay:
        async with client(relay) as stranger:
            accepted = 0
            started = runtime.monotonic()
            for _ in range(40):  # 10,240 envelopes offered
                batch = tuple(envelope(bob.mailbox) for _ in range(256))
                answer = await stranger.call(wire.Deliver(batch))
                if isinstance(answer, wire.DeliverResult):
                    accepted += len(answer.accepted)
                else:
                    assert answer.code is ErrorCode.RATE_LIMITED
                small = tuple(envelope(bob.mailbox) for _ in range(4))
                answer = await stranger.call(wire.Deliver(small))
                if isinstance(answer, wire.DeliverResult):
                    accepted += len(answer.accepted)
            elapsed = runtime.monotonic() - started
            assert accepted <= 100 + 5 * elapsed + 4
        async with client(relay) as friend:  # another sender still gets through
            env = envelope(bob.mailbox)
            assert await friend.call(wire.Deliver((env,))) == wire.DeliverResult((env.id,))
        assert relay.metrics()["refused_mailbox_rate"] >= 40


async def test_mailbox_quotas_in_envelopes_and_bytes(tmp_path: Path, runtimes: Runtimes) -> None:
    bob, carol = Identity.generate(), Identity.generate()
    async with running_relay(
        tmp_path, runtimes(), max_per_mailbox=3, max_mailbox_bytes=3000
    ) as relay:
        async with client(relay) as sender:
            three = tuple(envelope(bob.mailbox) for _ in range(3))
            assert isinstance(await sender.call(wire.Deliver(three)), wire.DeliverResult)
            answer = await sender.call(wire.Deliver((envelope(bob.mailbox),)))
            assert code_of(answer) is ErrorCode.QUOTA_EXCEEDED
            big = envelope(carol.mailbox, b"x" * 2000)
            assert isinstance(await sender.call(wire.Deliver((big,))), wire.DeliverResult)
            answer = await sender.call(wire.Deliver((envelope(carol.mailbox, b"y" * 1500),)))
            assert code_of(answer) is ErrorCode.QUOTA_EXCEEDED
        async with client(relay, bob) as owner:
            await owner.call(wire.Ack(bob.mailbox, (three[0].id,)))
        async with client(relay) as sender:  # acknowledged room is room again
            assert isinstance(
                await sender.call(wire.Deliver((envelope(bob.mailbox),))), wire.DeliverResult
            )
        metrics = relay.metrics()
        assert metrics["refused_mailbox_envelopes"] == 1
        assert metrics["refused_mailbox_bytes"] == 1


async def test_new_mailboxes_per_caller_and_the_store_budget(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    """The measured fault: one client wrote 238 MB into 48,896 new mailboxes in 10 s."""
    async with running_relay(
        tmp_path / "a", runtimes(), new_mailboxes_per_second=0.01, new_mailbox_burst=20
    ) as relay:
        async with client(relay) as writer:
            accepted = 0
            for _ in range(10):
                batch = tuple(envelope(os.urandom(32), b"x" * 4000) for _ in range(16))
                answer = await writer.call(wire.Deliver(batch))
                if isinstance(answer, wire.DeliverResult):
                    accepted += len(answer.accepted)
                else:
                    assert answer.code is ErrorCode.RATE_LIMITED
            assert accepted == 16  # the second batch would open 32 of 20: refused whole
        metrics = relay.metrics()
        assert metrics["mailboxes"] == 16
        assert metrics["refused_new_mailboxes"] == 9
    async with running_relay(
        tmp_path / "b", runtimes(), max_store_bytes=20_000, max_mailboxes=3
    ) as relay:
        async with client(relay) as writer:
            four = [envelope(os.urandom(32)) for _ in range(4)]
            for env in four[:3]:
                assert isinstance(await writer.call(wire.Deliver((env,))), wire.DeliverResult)
            assert code_of(await writer.call(wire.Deliver(four[3:]))) is ErrorCode.STORE_FULL
            bulky = [envelope(four[0].recipient, b"x" * 9000) for _ in range(3)]
            answers = [await writer.call(wire.Deliver((env,))) for env in bulky]
            assert [code_of(a) for a in answers] == [None, None, ErrorCode.STORE_FULL]
        metrics = relay.metrics()
        assert metrics["store_bytes"] <= 20_000
        assert metrics["refused_store_mailboxes"] == 1
        assert metrics["refused_store_bytes"] == 1


async def test_expired_envelopes_are_never_served_and_are_purged(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    now = [1_000_000]
    bob = Identity.generate()
    async with running_relay(
        tmp_path, runtimes.clocked(lambda: now[0]), envelope_ttl_s=60.0, max_per_mailbox=2
    ) as relay:
        async with client(relay) as sender:
            old = (envelope(bob.mailbox), envelope(bob.mailbox))
            assert isinstance(await sender.call(wire.Deliver(old)), wire.DeliverResult)
            now[0] += 61_000
            # The full mailbox is purged of what expired before it is judged full.
            fresh = envelope(bob.mailbox)
            assert await sender.call(wire.Deliver((fresh,))) == wire.DeliverResult((fresh.id,))
            later = envelope(os.urandom(32))
            assert isinstance(await sender.call(wire.Deliver((later,))), wire.DeliverResult)
        async with client(relay, bob) as owner:
            fetched = await owner.call(wire.Fetch(bob.mailbox, 0, 10))
            assert isinstance(fetched, wire.FetchResult)
            assert [e.id for e in fetched.envelopes] == [fresh.id]
        now[0] += 61_000
        async with client(relay, bob) as owner:
            assert await owner.call(wire.Fetch(bob.mailbox, 0, 10)) == wire.FetchResult((), 0)
        assert relay.metrics()["mailboxes"] == 2
        assert (await relay.service.purge_expired()).expired == 2  # fresh and the one for carol
        metrics = relay.metrics()
        assert metrics["mailboxes"] == 0
        assert metrics["store_bytes"] == 0
        assert metrics["envelopes_expired"] == 4


async def test_the_relay_validates_addresses_by_default(tmp_path: Path, runtimes: Runtimes) -> None:
    async with running_relay(tmp_path, runtimes()) as relay, client(relay) as conn:
        assert await conn.call(wire.Deliver(())) == wire.DeliverResult(())
        metrics = relay.metrics()
        assert metrics["retry_sent"] == 1
        assert metrics["connections_accepted"] == 1
        assert metrics["connections_inbound"] == 1


def test_relay_toml_sets_every_limit_and_refuses_unknown_keys_and_wrong_types(
    tmp_path: Path,
) -> None:
    from relay.config import LIMIT_KEYS, ConfigError, limit_settings

    source = tmp_path / "relay.toml"
    settings = {"listen": "127.0.0.1:0", "max_per_mailbox": 5, "envelope_ttl_s": 3600}
    settings |= {"address_validation": False, "calls_per_second": 2.5}
    assert limit_settings(settings, source) == {
        "max_per_mailbox": 5,
        "envelope_ttl_s": 3600.0,
        "address_validation": False,
        "calls_per_second": 2.5,
    }
    assert "max_buffered" in LIMIT_KEYS
    assert "passphrase" not in LIMIT_KEYS
    with pytest.raises(
        ConfigError, match="unknown key 'max_per_mailboxes' \\(did you mean 'max_per_mailbox'\\?\\)"
    ):
        limit_settings({"max_per_mailboxes": 5}, source)
    with pytest.raises(ConfigError, match="max_per_mailbox must be a positive int"):
        limit_settings({"max_per_mailbox": "lots"}, source)
    with pytest.raises(ConfigError, match="address_validation must be"):
        limit_settings({"address_validation": 1}, source)
    with pytest.raises(ConfigError, match="call_burst must be"):
        limit_settings({"call_burst": -1}, source)
    with pytest.raises(ConfigError, match="max_frame must be a positive int"):
        limit_settings({"max_frame": 0}, source)
    assert limit_settings({"max_envelope_bytes": 0}, source) == {"max_envelope_bytes": 0}


async def test_a_relay_process_takes_its_limits_from_relay_toml(tmp_path: Path) -> None:
    from tests.conftest import RelayProcess

    config = tmp_path / "relay.toml"
    config.write_text("call_burst = 2\ncalls_per_second = 0.01\nenvelope_ttl_s = 60.0\n")
    relay = RelayProcess(tmp_path / "relay", "pass", extra_args=("--config", str(config)))
    relay.start()
    try:
        assert relay.address is not None
        assert relay.identity is not None
        bob = Identity.generate()
        async with running_endpoint(bob, None) as endpoint:
            conn = await endpoint.dial(relay.address, relay.identity)  # through a Retry
            answers = [await conn.call(wire.Fetch(bob.mailbox, 0, 1)) for _ in range(3)]
            assert [code_of(a) for a in answers] == [None, None, ErrorCode.RATE_LIMITED]
    finally:
        relay.stop()


def test_a_relay_toml_with_an_unknown_key_is_refused_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "relay.toml"
    config.write_text("max_per_mailboxes = 5\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay",
            "run",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, QUICNPROTOCHAT_RELAY_PASSPHRASE="pass"),
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "unknown key 'max_per_mailboxes'" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
