"""The envelope key: a hybrid KEM of X25519 and ML-KEM-768, combined the X-Wing way.

Sealed-sender envelopes are encrypted to a key that stays safe if *either* X25519
or ML-KEM-768 holds. The construction follows X-Wing (draft-connolly-cfrg-xwing-kem-10):

* the private key is a 32-byte seed; SHAKE-256 stretches it to 96 bytes, of which the first 64
  are the ML-KEM-768 key-generation seed ``d || z`` (FIPS 203) and the last 32 the X25519 secret;
* the public key is ``pk_M || pk_X`` (1184 + 32 = 1216 bytes);
* the ciphertext is ``ct_M || ct_X`` (1088 + 32 = 1120 bytes), where ``ct_X`` is an ephemeral
  X25519 public key;
* the shared secret is ``SHA3-256(ss_M || ss_X || ct_X || pk_X || label)`` with X-Wing's
  six-byte label.

Because every step matches the draft, the draft's known-answer vectors check this module
(tests/unit/test_hybrid_kem.py). ML-KEM has implicit rejection: a tampered ciphertext yields a
different shared secret, not an error, so callers must confirm the key with an AEAD.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from node.core.errors import CryptoError

SEED_SIZE = 32
MLKEM_PUBLIC_KEY_SIZE = 1184
MLKEM_CIPHERTEXT_SIZE = 1088
X25519_KEY_SIZE = 32
PUBLIC_KEY_SIZE = MLKEM_PUBLIC_KEY_SIZE + X25519_KEY_SIZE  # 1216
CIPHERTEXT_SIZE = MLKEM_CIPHERTEXT_SIZE + X25519_KEY_SIZE  # 1120
SHARED_SECRET_SIZE = 32

# X-Wing's label, the ASCII art "\./" over "/^\" (draft-connolly-cfrg-xwing-kem §5.3).
XWING_LABEL = b"\\.//^\\"

_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw


@dataclass(frozen=True, repr=False)
class HybridPrivateKey:
    """An envelope private key. Holds secret material: never log or print it.

    Only :attr:`seed` needs storing; everything else is derived from it again on load.
    """

    seed: bytes
    _mlkem: mlkem.MLKEM768PrivateKey = field(init=False, compare=False)
    _x25519: x25519.X25519PrivateKey = field(init=False, compare=False)
    public_key: bytes = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_SIZE:
            raise CryptoError(f"an envelope private key is a {SEED_SIZE}-byte seed")
        expanded = hashlib.shake_256(self.seed).digest(96)
        mlkem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        x_key = x25519.X25519PrivateKey.from_private_bytes(expanded[64:96])
        public = mlkem_key.public_key().public_bytes_raw() + x_key.public_key().public_bytes(
            _RAW, _RAW_PUBLIC
        )
        # Frozen dataclass: the derived keys are cached once, at construction.
        object.__setattr__(self, "_mlkem", mlkem_key)
        object.__setattr__(self, "_x25519", x_key)
        object.__setattr__(self, "public_key", public)

    @classmethod
    def generate(cls) -> HybridPrivateKey:
        """A fresh key from the operating system's random source."""
        return cls(os.urandom(SEED_SIZE))

    def __repr__(self) -> str:
        return f"HybridPrivateKey(public={self.public_key[-X25519_KEY_SIZE:].hex()[:16]}…)"


def generate_keypair(seed: bytes | None = None) -> tuple[HybridPrivateKey, bytes]:
    """A new envelope key pair: ``(private key, 1216-byte public key)``.

    :param seed: 32 bytes to derive the key from (tests, seeded simulations); random if omitted.
    """
    private = HybridPrivateKey(seed) if seed is not None else HybridPrivateKey.generate()
    return private, private.public_key


def _split_public_key(public_key: bytes) -> tuple[mlkem.MLKEM768PublicKey, bytes]:
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise CryptoError(
            f"an envelope public key is {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}"
        )
    try:
        # from_public_bytes performs FIPS 203's encapsulation-key (modulus) check.
        pk_m = mlkem.MLKEM768PublicKey.from_public_bytes(public_key[:MLKEM_PUBLIC_KEY_SIZE])
    except ValueError as exc:
        raise CryptoError("the envelope public key's ML-KEM part is invalid") from exc
    return pk_m, public_key[MLKEM_PUBLIC_KEY_SIZE:]


def check_public_key(public_key: bytes) -> None:
    """Raise :class:`CryptoError` unless ``public_key`` is a usable envelope public key."""
    _split_public_key(public_key)


def _combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()


def encapsulate(public_key: bytes) -> tuple[bytes, bytes]:
    """A fresh shared secret for the holder of ``public_key``: ``(shared 32 B, ciphertext 1120 B)``.

    Raises :class:`CryptoError` if the public key is malformed.
    """
    pk_m, pk_x = _split_public_key(public_key)
    try:
        peer_x = x25519.X25519PublicKey.from_public_bytes(pk_x)
        ephemeral = x25519.X25519PrivateKey.generate()
        ss_x = ephemeral.exchange(peer_x)
    except ValueError as exc:  # a low-order X25519 point gives an all-zero secret
        raise CryptoError("the envelope public key's X25519 part is invalid") from exc
    ct_x = ephemeral.public_key().public_bytes(_RAW, _RAW_PUBLIC)
    # cryptography returns (shared secret, ciphertext); pqcrypto the other way round.
    ss_m, ct_m = pk_m.encapsulate()
    return _combine(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x


def decapsulate(private_key: HybridPrivateKey, ciphertext: bytes) -> bytes:
    """The shared secret inside ``ciphertext``.

    A tampered ciphertext gives a different secret rather than an error (ML-KEM's implicit
    rejection); only a ciphertext of the wrong size or a degenerate X25519 share raises
    :class:`CryptoError`.
    """
    if len(ciphertext) != CIPHERTEXT_SIZE:
        raise CryptoError(f"an envelope ciphertext is {CIPHERTEXT_SIZE} bytes")
    ct_m = ciphertext[:MLKEM_CIPHERTEXT_SIZE]
    ct_x = ciphertext[MLKEM_CIPHERTEXT_SIZE:]
    try:
        ss_m = private_key._mlkem.decapsulate(ct_m)
        ss_x = private_key._x25519.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    except ValueError as exc:
        raise CryptoError("the envelope ciphertext cannot be opened") from exc
    pk_x = private_key.public_key[MLKEM_PUBLIC_KEY_SIZE:]
    return _combine(ss_m, ss_x, ct_x, pk_x)
