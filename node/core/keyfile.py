"""Secrets at rest in the "QPCE" format: Argon2id-derived key, ChaCha20-Poly1305.

Layout (big-endian): magic ``QPCE`` | version u8 | time_cost u32 | memory_kib u32 | lanes u8 |
salt (16) | nonce (12) | ciphertext+tag. The header is the AEAD's associated data, so a tampered
parameter fails authentication like a wrong passphrase does. Pure bytes in, bytes out: the caller
reads and writes files and runs Argon2 off the event loop.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from node.core.errors import CryptoError

MAGIC = b"QPCE"
VERSION = 1
_HEADER = struct.Struct(">4sBIIB16s12s")


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost. The default follows RFC 9106's second recommendation (64 MiB, t=3, p=4)."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    lanes: int = 4


DEFAULT_KDF = KdfParams()
# Cheap parameters for tests and throwaway demo state only.
FAST_KDF = KdfParams(time_cost=1, memory_kib=8 * 1024, lanes=1)


class WrongPassphraseError(CryptoError):
    """The passphrase does not open this file (or the file was altered)."""


def derive_key(passphrase: bytes, salt: bytes, params: KdfParams) -> bytes:
    return hash_secret_raw(
        secret=passphrase,
        salt=salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.lanes,
        hash_len=32,
        type=Type.ID,
    )


SEAL_RANDOM_SIZE = 28  # a 16-byte salt, then a 12-byte nonce


def seal(secret: bytes, passphrase: bytes, params: KdfParams, fresh: bytes) -> bytes:
    """Seal ``secret`` under ``passphrase``; ``fresh`` is :data:`SEAL_RANDOM_SIZE` random
    bytes, never used before (the runtime's randomness: salt and nonce)."""
    if len(fresh) != SEAL_RANDOM_SIZE:
        raise ValueError(f"sealing takes {SEAL_RANDOM_SIZE} fresh random bytes")
    salt, nonce = fresh[:16], fresh[16:]
    header = _HEADER.pack(
        MAGIC, VERSION, params.time_cost, params.memory_kib, params.lanes, salt, nonce
    )
    key = derive_key(passphrase, salt, params)
    return header + ChaCha20Poly1305(key).encrypt(nonce, secret, header)


def open_sealed(blob: bytes, passphrase: bytes) -> bytes:
    if len(blob) < _HEADER.size + 16:
        raise CryptoError("not a quicnprotochat key file (too short)")
    magic, version, time_cost, memory_kib, lanes, salt, nonce = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise CryptoError("not a quicnprotochat key file")
    if version != VERSION:
        raise CryptoError(f"key file version {version} is not supported")
    if not (1 <= time_cost <= 64 and 8 * lanes <= memory_kib <= 4 * 1024 * 1024 and lanes >= 1):
        raise CryptoError("key file has implausible Argon2 parameters")
    key = derive_key(passphrase, salt, KdfParams(time_cost, memory_kib, lanes))
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, blob[_HEADER.size :], blob[: _HEADER.size])
    except InvalidTag as exc:
        raise WrongPassphraseError("wrong passphrase, or the key file was altered") from exc


def derive_subkey(master: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose (``"sqlcipher"``, ``"mls-state"``) from a master key, so
    one Argon2 run serves every store and a leak of one key reveals no other."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"quicnprotochat/" + purpose.encode()
    ).derive(master)
