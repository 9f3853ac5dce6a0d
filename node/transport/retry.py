"""Stateless QUIC address validation (RFC 9000 §8.1.2): Retry tokens bound to the client's
address, the connection IDs of the attempt and the time they were issued.

A server that answers an Initial without a token with a Retry keeps nothing; only an Initial
that carries a token this endpoint issued, to this address, within ``lifetime`` seconds, may
create connection state. aioquic's own ``QuicRetryTokenHandler`` draws its key and nonces from
the operating system; this one takes its secret from the endpoint's runtime, so a simulation
repeats exactly, and authenticates the token with HMAC-SHA256 (the token carries nothing secret:
the addresses and connection IDs in it are on the wire anyway).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct

from node.core.addresses import Address

TOKEN_VERSION = 1
_MAC_SIZE = 16
_HEAD = struct.Struct(">BQ")  # version, issued at (ms on the endpoint's monotonic clock)


def _encode_address(address: Address) -> bytes:
    return ipaddress.ip_address(address[0]).packed + address[1].to_bytes(2, "big")


class RetryTokens:
    """Issues and checks Retry tokens under one secret (32 random bytes from the runtime)."""

    def __init__(self, secret: bytes, lifetime: float = 10.0) -> None:
        if len(secret) < 16:
            raise ValueError("the retry secret must be at least 16 bytes")
        self._secret = secret
        self._lifetime_ms = int(lifetime * 1000)

    def _mac(self, address: Address, body: bytes) -> bytes:
        return hmac.new(self._secret, _encode_address(address) + body, hashlib.sha256).digest()[
            :_MAC_SIZE
        ]

    def issue(self, address: Address, original_dcid: bytes, retry_scid: bytes, now: float) -> bytes:
        """A token for a client at ``address`` whose first Initial went to ``original_dcid``
        and who must now send to ``retry_scid``."""
        body = (
            _HEAD.pack(TOKEN_VERSION, int(now * 1000))
            + bytes([len(original_dcid)])
            + original_dcid
            + bytes([len(retry_scid)])
            + retry_scid
        )
        return body + self._mac(address, body)

    def check(self, address: Address, dcid: bytes, token: bytes, now: float) -> bytes | None:
        """The original destination connection ID if ``token`` is valid for this Initial
        (sent from ``address`` to ``dcid``), else None."""
        if len(token) < _HEAD.size + 2 + _MAC_SIZE:
            return None
        body, mac = token[:-_MAC_SIZE], token[-_MAC_SIZE:]
        if not hmac.compare_digest(mac, self._mac(address, body)):
            return None
        version, issued_ms = _HEAD.unpack_from(body)
        if version != TOKEN_VERSION:
            return None
        at = _HEAD.size
        odcid_len = body[at]
        original_dcid = body[at + 1 : at + 1 + odcid_len]
        at += 1 + odcid_len
        if at >= len(body):
            return None
        retry_scid = body[at + 1 : at + 1 + body[at]]
        # The client must send to the Retry's source connection ID (RFC 9000 §17.2.5.2).
        if not hmac.compare_digest(retry_scid, dcid):
            return None
        age = int(now * 1000) - issued_ms
        if age < 0 or age > self._lifetime_ms:
            return None
        return bytes(original_dcid)
