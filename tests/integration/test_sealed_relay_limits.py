"""What bounds sealed deliveries at the relay (ADR 0008, decision 5), in-process on real QUIC.

A sealed envelope comes from a key made for it alone, so per-key buckets would never fill: the
relay charges such a call to its source address instead. These tests deliver from a fresh key
each time, as a sender (or an abuser) does, and check that the address's allowances, the
recipient's quota and the accounts rule still hold.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from node.core import hybrid_kem, sealed, wire
from node.core.errors import ErrorCode
from node.core.identity import Identity
from node.transport.connection import PeerConnection
from node.transport.endpoint import Endpoint
from relay.server import Relay
from tests.conftest import LOOPBACK
from tests.integration.test_relay_limits import code_of, envelope, relay_key, running_relay
from tests.runtime_support import Runtimes

BOB = Identity.generate()
_, BOB_ENVELOPE_PUBLIC = hybrid_kem.generate_keypair()
ALICE = Identity.generate()
SLOW = 0.001  # a refill rate that adds nothing while a test runs


def sealed_for_bob(text: bytes = b"hello") -> wire.Envelope:
    inner = wire.Envelope(os.urandom(16), BOB.mailbox, wire.EnvelopeKind.APPLICATION, text, b"g", 1)
    return sealed.seal_envelope(ALICE, BOB_ENVELOPE_PUBLIC, inner, os.urandom(16))


@contextlib.asynccontextmanager
async def one_time(
    relay: Relay, runtimes: Runtimes, host: str = LOOPBACK
) -> AsyncIterator[PeerConnection]:
    """A connection from a fresh key, on a socket of its own at ``host`` (127.0.0.0/8)."""
    assert relay._endpoint is not None
    endpoint = Endpoint(Identity.generate(), None, runtimes())
    await endpoint.start(host, 0)
    try:
        yield await endpoint.dial(relay._endpoint.local_address, relay_key(relay))
    finally:
        await endpoint.close()


async def deliver_once(
    relay: Relay, runtimes: Runtimes, env: wire.Envelope, host: str = LOOPBACK
) -> ErrorCode | None:
    async with one_time(relay, runtimes, host) as conn:
        return code_of(await conn.call(wire.Deliver((env,))))


async def held_for_bob(relay: Relay, runtimes: Runtimes) -> list[wire.Envelope]:
    assert relay._endpoint is not None
    endpoint = Endpoint(BOB, None, runtimes())
    await endpoint.start(LOOPBACK, 0)
    try:
        conn = await endpoint.dial(relay._endpoint.local_address, relay_key(relay))
        answer = await conn.call(wire.Fetch(BOB.mailbox, 0, 100))
        assert isinstance(answer, wire.FetchResult)
        return list(answer.envelopes)
    finally:
        await endpoint.close()


async def test_fresh_keys_from_one_address_share_its_allowance_per_mailbox(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    async with running_relay(
        tmp_path,
        runtimes(),
        envelope_burst_per_mailbox=3,
        envelopes_per_mailbox_per_second=SLOW,
    ) as relay:
        codes = [await deliver_once(relay, runtimes, sealed_for_bob()) for _ in range(5)]
        assert codes == [None, None, None, ErrorCode.RATE_LIMITED, ErrorCode.RATE_LIMITED]
        # Another address has an allowance of its own; a sender under its own key too.
        assert await deliver_once(relay, runtimes, sealed_for_bob(), "127.0.0.2") is None
        async with one_time(relay, runtimes) as plain:
            answer = await plain.call(wire.Deliver((envelope(BOB.mailbox),)))
            assert isinstance(answer, wire.DeliverResult)
        metrics = relay.metrics()
        assert metrics["refused_mailbox_rate"] == 2
        assert metrics["sealed_envelopes_in"] == 4
        assert len(await held_for_bob(relay, runtimes)) == 5


async def test_fresh_keys_from_one_address_share_its_call_rate(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    async with running_relay(
        tmp_path,
        runtimes(),
        call_burst=3,
        calls_per_second=SLOW,
    ) as relay:
        codes = [await deliver_once(relay, runtimes, sealed_for_bob()) for _ in range(4)]
        assert codes == [None, None, None, ErrorCode.RATE_LIMITED]
        assert relay.metrics()["refused_call_rate"] == 1
        assert await deliver_once(relay, runtimes, sealed_for_bob(), "127.0.0.3") is None


async def test_the_recipients_quota_bounds_sealed_mail_from_every_address(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    async with running_relay(tmp_path, runtimes(), max_per_mailbox=2) as relay:
        codes = [
            await deliver_once(relay, runtimes, sealed_for_bob(), host)
            for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3")
        ]
        assert codes == [None, None, ErrorCode.QUOTA_EXCEEDED]
        assert relay.metrics()["refused_mailbox_envelopes"] == 1


async def test_an_exact_replay_of_a_sealed_envelope_is_held_once(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    async with running_relay(tmp_path, runtimes()) as relay:
        box = sealed_for_bob()
        assert await deliver_once(relay, runtimes, box) is None
        assert await deliver_once(relay, runtimes, box, "127.0.0.2") is None
        (held,) = await held_for_bob(relay, runtimes)
        assert held == box
        # A copy under a new outer id is a new envelope to the relay (it cannot open the box);
        # the recipient drops it by the inner id (test_sealed_sender.py), and it costs the
        # replayer the address allowance and the quota like any other.


async def test_with_accounts_required_sealed_needs_no_session_and_carries_nothing_plain(
    tmp_path: Path, runtimes: Runtimes
) -> None:
    async with running_relay(tmp_path, runtimes(), accounts="required") as relay:
        assert await deliver_once(relay, runtimes, sealed_for_bob()) is None
        assert await deliver_once(relay, runtimes, envelope(BOB.mailbox)) is (
            ErrorCode.UNAUTHENTICATED
        )
        async with one_time(relay, runtimes) as conn:
            mixed = wire.Deliver((sealed_for_bob(), envelope(BOB.mailbox)))
            assert code_of(await conn.call(mixed)) is ErrorCode.MALFORMED_REQUEST
        metrics = relay.metrics()
        assert metrics["refused_sealed_mixed"] == 1
        assert metrics["envelopes_in"] == 1
