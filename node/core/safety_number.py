"""Safety numbers: one number per pair of identities, for two people to compare out of band.

Derivation (after Signal's "numeric fingerprint", with our own version prefix):

1. For each identity key ``K`` (32 bytes, Ed25519): ``h = SHA-512(b"\\x00\\x00" || K || b"qpc")``,
   then 5,199 more times ``h = SHA-512(h || K)`` (5,200 hashes in all, which makes a search for
   a key with a chosen half of a number cost 5,200 times more).
2. The first 30 bytes of ``h``, read as six big-endian 5-byte integers, each taken modulo
   100,000 and written as 5 digits: 30 digits per key.
3. The two 30-digit halves in ascending order, joined: 60 digits, the same whichever of the two
   computes it. Shown as twelve groups of five, three lines of four.

Both people compare the whole number (read aloud, or one scans the other's QR code of the 60
digits). Equal numbers mean each holds the key the other holds as their own: no one in
between substituted a key. It says nothing about names.
"""

from __future__ import annotations

import hashlib

from node.core.identity import IDENTITY_KEY_SIZE

VERSION_PREFIX = b"\x00\x00"
DOMAIN = b"qpc"
ITERATIONS = 5200
DIGITS = 60
GROUP = 5

__all__ = ["format_safety_number", "half_for", "safety_number"]


def half_for(identity_key: bytes) -> str:
    """The 30 digits one identity contributes (steps 1 and 2 above)."""
    if len(identity_key) != IDENTITY_KEY_SIZE:
        raise ValueError(f"an identity key is {IDENTITY_KEY_SIZE} bytes, got {len(identity_key)}")
    digest = hashlib.sha512(VERSION_PREFIX + identity_key + DOMAIN).digest()
    for _ in range(ITERATIONS - 1):
        digest = hashlib.sha512(digest + identity_key).digest()
    chunks = (int.from_bytes(digest[i : i + 5], "big") % 100_000 for i in range(0, 30, 5))
    return "".join(f"{chunk:05d}" for chunk in chunks)


def safety_number(key_a: bytes, key_b: bytes) -> str:
    """The 60 digits for the pair: symmetric, ``safety_number(a, b) == safety_number(b, a)``."""
    return "".join(sorted((half_for(key_a), half_for(key_b))))


def format_safety_number(digits: str, *, per_line: int = 4) -> str:
    """Groups of five digits, ``per_line`` groups to a line (``12345 67890 ...``)."""
    if len(digits) != DIGITS or not digits.isdigit():
        raise ValueError(f"a safety number is {DIGITS} digits")
    groups = [digits[i : i + GROUP] for i in range(0, DIGITS, GROUP)]
    return "\n".join(" ".join(groups[i : i + per_line]) for i in range(0, len(groups), per_line))
