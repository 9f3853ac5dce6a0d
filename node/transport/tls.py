"""Both ends of every QUIC connection prove their Ed25519 identity key inside the TLS handshake.

aioquic 1.7.2's public API can neither require nor verify a client certificate. We
hook the TLS context at the one place where the peer has just proved possession of its
certificate key — the CertificateVerify check — and there:

* refuse a key that is not Ed25519, or that differs from the key the dialer expected;
* record the proven key, which the connection then exposes as the peer's identity.

The server additionally requests a client certificate and refuses an empty one (alert 116,
``certificate_required``, QUIC error 0x174). Session resumption is never enabled: a resumed
handshake carries no certificate, so it could not authenticate the peer.

The same connection class also gives aioquic the backpressure it lacks (LIBRARY-FACTS: "the
receive window doubles whenever half is used, whether or not the app read it"). Data that
arrives out of order waits inside aioquic, unseen by the connection's own budgets, so:

* a stream's receive window is never raised: one stream carries one frame, which the initial
  window (the frame cap plus 64 bytes) already holds;
* the connection's window is raised only by what was handed to the application in order: it
  stays at most ``max_data`` ahead of it, so data held out of order never exceeds ``max_data``.

These are private aioquic internals; ``pyproject.toml`` pins aioquic exactly and
:func:`check_hooks` fails loudly at import if an upgrade moved them.
"""

from __future__ import annotations

import datetime
import hmac
import ssl
from typing import Any

from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from node.core.identity import Identity

ALPN = "qpc/1"
_HOOKED = (
    "_check_certificate_verify_signature",
    "_server_handle_certificate",
    "_request_client_certificate",
    "_peer_certificate",
    "_supported_groups",
)


_CONNECTION_HOOKS = (
    "_initialize",
    "_payload_received",
    "_write_connection_limits",
    "_write_stream_limits",
)
# How long an ACK may wait for a packet with data to ride in: an answer usually comes within
# it, so one datagram carries both. Below the 25 ms max_ack_delay aioquic advertises, which the
# peer adds to its loss timer (RFC 9002 §6.2.1); aioquic's own 1 ms sends a lone ACK packet
# ahead of every answer that takes longer than that.
ACK_DELAY = 0.02
STREAM_ACK_DELAY = 0.001  # aioquic's (K_GRANULARITY)
ACK_DUE_EPSILON = 1e-6


class AlertCertificateRequired(tls.Alert):
    description = tls.AlertDescription.certificate_required


def check_hooks() -> None:
    """Fail if the aioquic internals this module relies on are missing."""
    probe = tls.Context(is_client=False)
    missing = [name for name in _HOOKED if not hasattr(probe, name)]
    missing += [name for name in _CONNECTION_HOOKS if not hasattr(QuicConnection, name)]
    if missing:
        raise ImportError(f"aioquic internals changed ({', '.join(missing)}): pin aioquic==1.7.2")


class IdentityTlsContext(tls.Context):
    """A ``tls.Context`` that authenticates the peer by its Ed25519 key. Set up by ``adopt``."""

    expected_peer_key: bytes | None
    verified_peer_key: bytes | None

    @classmethod
    def adopt(cls, context: tls.Context, expected_peer_key: bytes | None) -> IdentityTlsContext:
        if type(context) is not tls.Context:
            raise TypeError("can only adopt a plain aioquic tls.Context")
        context.__class__ = cls
        adopted: IdentityTlsContext = context  # type: ignore[assignment]
        adopted.expected_peer_key = expected_peer_key
        adopted.verified_peer_key = None
        adopted._request_client_certificate = True
        # Our peers are our own nodes: one key share (X25519) instead of aioquic's four
        # (P-256, P-384, X25519, X448), each a key generated for every connection.
        adopted._supported_groups = [tls.Group.X25519]
        return adopted

    def _check_certificate_verify_signature(self, verify: Any) -> None:
        super()._check_certificate_verify_signature(verify)
        # The signature checked above proves the peer holds the certificate's key.
        assert self._peer_certificate is not None
        key = self._peer_certificate.public_key()
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise tls.AlertBadCertificate("peer certificate key is not an Ed25519 identity key")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        expected = self.expected_peer_key
        if expected is not None and not hmac.compare_digest(raw, expected):
            raise tls.AlertBadCertificate("peer presented a different identity key")
        self.verified_peer_key = raw

    def _server_handle_certificate(self, input_buf: Buffer) -> None:
        super()._server_handle_certificate(input_buf)
        if self._peer_certificate is None:
            raise AlertCertificateRequired("a client identity certificate is required")


class IdentityQuicConnection(QuicConnection):
    """A QUIC connection whose TLS context authenticates the peer's identity key."""

    def __init__(self, *, expected_peer_key: bytes | None = None, **kwargs: Any) -> None:
        self._expected_peer_key = expected_peer_key
        super().__init__(**kwargs)
        self._receive_window = self._local_max_data.value
        self._ack_delay = ACK_DELAY

    def held_out_of_order(self) -> int:
        """Bytes received on streams but not yet handed to the application (gaps before them)."""
        held = 0
        for stream in self._streams.values():
            receiver = stream.receiver
            if not receiver.is_finished:
                held += receiver.highest_offset - receiver.starting_offset()
        return held

    def gaps(self) -> frozenset[tuple[int, int]]:
        """(stream id, offset delivered so far) of every stream holding data after a gap."""
        return frozenset(
            (stream_id, stream.receiver.starting_offset())
            for stream_id, stream in self._streams.items()
            if not stream.receiver.is_finished
            and stream.receiver.highest_offset > stream.receiver.starting_offset()
        )

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        limit = self._local_max_data
        if limit.value - limit.used < self._receive_window // 2:  # half the credit is spent
            delivered = limit.used - self.held_out_of_order()
            limit.value = max(limit.value, delivered + self._receive_window)
        # With ``used`` hidden, aioquic's own doubling never fires; the rest (sending
        # MAX_DATA and MAX_STREAMS when they changed) is unchanged.
        used, limit.used = limit.used, 0
        try:
            super()._write_connection_limits(builder=builder, space=space)
        finally:
            limit.used = used

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        # A stream carries one frame: the initial window holds it, and is never raised. A
        # MAX_STREAM_DATA frame that was lost is re-sent with the same value.
        highest = stream.receiver.highest_offset
        stream.receiver.highest_offset = 0
        try:
            super()._write_stream_limits(builder=builder, space=space, stream=stream)
        finally:
            stream.receiver.highest_offset = highest

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        IdentityTlsContext.adopt(self.tls, self._expected_peer_key)

    def _payload_received(
        self, context: Any, plain: bytes, crypto_frame_required: bool = False
    ) -> tuple[bool, bool]:
        space = self._spaces.get(context.epoch)
        waiting = space is not None and space.ack_at is not None
        is_ack_eliciting, is_probing = super()._payload_received(
            context, plain, crypto_frame_required
        )
        if is_ack_eliciting and waiting and space is not None and space.ack_at is not None:
            # A second packet before the ACK left: the peer is streaming (a large frame), not
            # waiting for an answer. Back to aioquic's own delay, so ACKs pace its sending as
            # before (RFC 9000 §13.2.2 asks for one at least every second packet).
            space.ack_at = min(space.ack_at, context.time + STREAM_ACK_DELAY)
        return is_ack_eliciting, is_probing

    def ack_with_next_packet(self, now: float) -> None:
        """Make a pending ACK due now, so that it rides in the packet about to carry data.

        aioquic writes an ACK only once its delay (1 ms) has passed: an answer sent sooner
        leaves without it, and a packet holding nothing but the ACK follows, two datagrams
        each way per call where one does (and each costs both ends its packet processing).
        """
        space = self._spaces.get(tls.Epoch.ONE_RTT)
        if space is not None and space.ack_at is not None and space.ack_at >= now:
            # Strictly before now: at exactly now aioquic would still pace (``ack_at >= now``)
            # and re-arm its timer for now, which on a virtual clock never moves on.
            space.ack_at = now - ACK_DUE_EPSILON

    @property
    def verified_peer_key(self) -> bytes | None:
        """The peer's identity key once its CertificateVerify checked out, else None."""
        context = getattr(self, "tls", None)
        if isinstance(context, IdentityTlsContext):
            return context.verified_peer_key
        return None


def identity_certificate(identity: Identity) -> x509.Certificate:
    """A self-signed certificate of the identity key.

    Deterministic (fixed serial and validity) so that seeded simulations repeat exactly; the
    validity period is never checked — the pinned key is what counts. No name in it identifies
    the user: TLS 1.3 encrypts certificates, but nothing needs one.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qpc")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(identity.private_key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC))
        .sign(identity.private_key, None)
    )


def quic_configuration(
    identity: Identity,
    certificate: x509.Certificate,
    *,
    is_client: bool,
    idle_timeout: float,
    max_frame: int,
) -> QuicConfiguration:
    return QuicConfiguration(
        alpn_protocols=[ALPN],
        is_client=is_client,
        certificate=certificate,
        private_key=identity.private_key,
        # Certificates are self-signed: the identity key is pinned by the hook above instead.
        verify_mode=ssl.CERT_NONE,
        # The server name travels in clear in the Initial packet: say nothing about anyone.
        server_name=None,
        idle_timeout=idle_timeout,
        max_stream_data=max_frame + 64,
        max_data=max(4 * max_frame, 1 << 22),
    )


check_hooks()
