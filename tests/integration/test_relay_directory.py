"""The relay's directory over real QUIC on loopback (KeyPackages, usernames), nodes that invite
an offline peer through it, and the new-mailbox allowance a reader who keeps up no longer
costs its senders."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from node.core import wire
from node.core.errors import ErrorCode
from node.core.identity import Identity
from node.transport.connection import PeerConnection
from tests.conftest import RelayProcess, running_endpoint

GENEROUS = """
calls_per_second = 10000.0
call_burst = 10000
envelopes_per_mailbox_per_second = 10000.0
envelope_burst_per_mailbox = 100000
"""


@contextlib.contextmanager
def relay_process(tmp_path: Path, settings: str) -> Iterator[RelayProcess]:
    config = tmp_path / "relay.toml"
    config.write_text(GENEROUS + settings)
    relay = RelayProcess(
        tmp_path / "relay", passphrase="directory test", extra_args=("--config", str(config))
    )
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


@contextlib.asynccontextmanager
async def connected(
    relay: RelayProcess, identity: Identity | None = None
) -> AsyncIterator[PeerConnection]:
    assert relay.address is not None and relay.identity is not None
    async with running_endpoint(identity or Identity.generate(), None) as endpoint:
        yield await endpoint.dial(relay.address, relay.identity)


def envelope(recipient: bytes) -> wire.Envelope:
    return wire.Envelope(
        os.urandom(16), recipient, wire.EnvelopeKind.APPLICATION, b"ciphertext", b"g", 1
    )


def code_of(answer: wire.Response) -> ErrorCode | None:
    return answer.code if isinstance(answer, wire.ErrorResult) else None


# --- the new-mailbox allowance ----------------------------------------------------------------


async def test_a_mailbox_its_owner_reads_is_not_new_when_acks_emptied_it(tmp_path: Path) -> None:
    """The fault: every message to a reader who keeps up (fetch, ack, mailbox empty) cost the
    sender a new-mailbox token, so relay chat stalled at 1 message a second after 60."""
    reader = Identity.generate()
    settings = "new_mailboxes_per_second = 0.001\nnew_mailbox_burst = 3\n"
    with relay_process(tmp_path, settings) as relay:
        async with connected(relay) as sender, connected(relay, reader) as owner:
            # The allowance is live: three never-read mailboxes spend it, a fourth is refused.
            for _ in range(3):
                stranger = Identity.generate().mailbox
                assert isinstance(
                    await sender.call(wire.Deliver((envelope(stranger),))), wire.DeliverResult
                )
            fourth = await sender.call(wire.Deliver((envelope(Identity.generate().mailbox),)))
            assert code_of(fourth) is ErrorCode.RATE_LIMITED
            # The reader's mailbox: read, emptied by acks, and written to again, 10 times over.
            cursor = 0
            for i in range(10):
                fetched = await owner.call(wire.Fetch(reader.mailbox, cursor, 10))
                assert isinstance(fetched, wire.FetchResult)
                if fetched.envelopes:
                    ids = tuple(e.id for e in fetched.envelopes)
                    assert await owner.call(wire.Ack(reader.mailbox, ids)) == wire.AckResult(1)
                cursor = fetched.cursor
                sent = envelope(reader.mailbox)
                answer = await sender.call(wire.Deliver((sent,)))
                assert answer == wire.DeliverResult((sent.id,)), f"message {i}: {answer}"
