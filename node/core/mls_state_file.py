"""Reading the MLS binding's state file (``mls.state``) from outside the binding.

The binding writes the file (``openmls-bindings/src/store_file.rs``, format version 3): a
78-byte header, a base image sealed with ChaCha20-Poly1305, then one sealed record per call
since that base. The node reads it only to check it, never to write it: every tag is verified
with the storage key, so a truncated, corrupted or foreign file is told apart from a good one
before the binding opens it, and the node can name the exact point (base salt, length, last
tag) that its own database says the file had reached. Pure: bytes in, a :class:`StateImage`
out.

Layout (big-endian): magic ``QPC-MLS\\0`` | version u8 = 3 | suite u8 = 1 | salt (32) |
nonce (12) | key check (16) | base length u64 | base | tag (16), then per record: length u32 |
nonce (12) | body | tag (16), sealed with additional data header ‖ u64 index ‖ length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from node.core.errors import StorageError

MAGIC = b"QPC-MLS\x00"
VERSION = 3
SUITE = 1
SALT_AT, NONCE_AT, CHECK_AT, BASE_LEN_AT = 10, 42, 54, 70
HEADER_LEN = 78
TAG_LEN = 16
RECORD_PREFIX_LEN = 16
_AEAD_INFO = b"quicnprotochat mls state v1 aead key"
_CHECK_INFO = b"quicnprotochat mls state v1 key check"


class StateFileError(StorageError):
    """The MLS state file is not a good state file for this key. The message says why, without
    the file's name (the caller adds it)."""


class WrongStateKeyError(StateFileError):
    """The key check in the header fails: a wrong key, or a damaged header."""


@dataclass(frozen=True)
class Mark:
    """A point in the file's history: the base it was on, how long the file was, and the tag
    that ended there. Recorded by the node after each MLS call."""

    salt: bytes
    length: int
    tag: bytes

    def to_bytes(self) -> bytes:
        return self.salt + struct.pack(">Q", self.length) + self.tag

    @classmethod
    def from_bytes(cls, data: bytes) -> Mark:
        if len(data) != 32 + 8 + TAG_LEN:
            raise StorageError("the recorded MLS state mark is damaged")
        return cls(data[:32], struct.unpack(">Q", data[32:40])[0], data[40:])


@dataclass(frozen=True)
class StateImage:
    """What a state file holds, as far as checking it needs: where each good record ends."""

    header: bytes
    aead_key: bytes
    # The end of the base, then the end of each good record, in order; with the tag ending
    # there.
    ends: tuple[int, ...]
    tags: tuple[bytes, ...]
    # Bytes after the last good record: a write that never completed (the binding drops it).
    torn: bool

    @property
    def salt(self) -> bytes:
        return self.header[SALT_AT:NONCE_AT]

    @property
    def records(self) -> int:
        return len(self.ends) - 1

    @property
    def mark(self) -> Mark:
        return Mark(self.salt, self.ends[-1], self.tags[-1])

    def mark_at(self, length: int) -> Mark | None:
        """The mark of the point ``length`` if a base or record ends there."""
        for end, tag in zip(self.ends, self.tags, strict=True):
            if end == length:
                return Mark(self.salt, end, tag)
        return None

    def records_after(self, mark: Mark) -> int | None:
        """How many records follow ``mark`` (None if ``mark`` is not a point of this file)."""
        if mark.salt != self.salt:
            return None
        for index, (end, tag) in enumerate(zip(self.ends, self.tags, strict=True)):
            if end == mark.length:
                return len(self.ends) - 1 - index if tag == mark.tag else None
        return None


def _derive(storage_key: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(storage_key)


def read_header(data: bytes) -> bytes:
    """The header, after checking magic, version and cipher (no key needed)."""
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise StateFileError("is not an MLS state file")
    if len(data) < HEADER_LEN + TAG_LEN:
        raise StateFileError("is truncated")
    if data[len(MAGIC)] != VERSION:
        raise StateFileError(f"has unsupported version {data[len(MAGIC)]}")
    if data[len(MAGIC) + 1] != SUITE:
        raise StateFileError("uses an unsupported cipher")
    return data[:HEADER_LEN]


def parse(data: bytes, storage_key: bytes) -> StateImage:
    """Check every tag of a whole state file. Raises :class:`StateFileError`."""
    header = read_header(data)
    salt = header[SALT_AT:NONCE_AT]
    if _derive(storage_key, salt, _CHECK_INFO, 16) != header[CHECK_AT:BASE_LEN_AT]:
        raise WrongStateKeyError("does not open with this key (wrong key, or damaged header)")
    aead_key = _derive(storage_key, salt, _AEAD_INFO, 32)
    (base_len,) = struct.unpack(">Q", header[BASE_LEN_AT:HEADER_LEN])
    base_end = HEADER_LEN + base_len + TAG_LEN
    if base_end > len(data):
        raise StateFileError("is truncated")
    try:
        ChaCha20Poly1305(aead_key).decrypt(
            header[NONCE_AT:CHECK_AT], data[HEADER_LEN:base_end], header
        )
    except InvalidTag:
        raise StateFileError("is corrupted") from None
    image = StateImage(header, aead_key, (base_end,), (data[base_end - TAG_LEN : base_end],), False)
    return extend(image, data[base_end:], base_end)


def extend(image: StateImage, tail: bytes, offset: int) -> StateImage:
    """``image`` with the records found in ``tail`` (the file's bytes from ``offset``, which
    must be the end of the last good record)."""
    if offset != image.ends[-1]:
        raise ValueError("a tail starts where the last good record ends")
    ends, tags = list(image.ends), list(image.tags)
    aead = ChaCha20Poly1305(image.aead_key)
    at = 0
    while at < len(tail):
        if at + 4 > len(tail):
            return StateImage(image.header, image.aead_key, tuple(ends), tuple(tags), True)
        (length,) = struct.unpack(">I", tail[at : at + 4])
        end = at + RECORD_PREFIX_LEN + length + TAG_LEN
        if end > len(tail):
            return StateImage(image.header, image.aead_key, tuple(ends), tuple(tags), True)
        aad = image.header + struct.pack(">Q", len(ends) - 1) + tail[at : at + 4]
        try:
            aead.decrypt(
                tail[at + 4 : at + RECORD_PREFIX_LEN], tail[at + RECORD_PREFIX_LEN : end], aad
            )
        except InvalidTag:
            if end == len(tail):
                # A torn last append: the binding leaves it out too.
                return StateImage(image.header, image.aead_key, tuple(ends), tuple(tags), True)
            raise StateFileError("is corrupted") from None
        ends.append(offset + end)
        tags.append(tail[end - TAG_LEN : end])
        at = end
    return StateImage(image.header, image.aead_key, tuple(ends), tuple(tags), False)


def pairing_problem(
    image: StateImage, recorded: Mark | None, known_salts: set[bytes], *, live: bool = False
) -> str | None:
    """Why ``mls.state`` (as ``image``) and ``node.db`` (which recorded ``recorded`` after its
    last MLS call, and every base it has seen in ``known_salts``) are not of one moment, or
    None if they are (ADR 0004).

    The node records the mark after every MLS call, and makes no call while a mark is
    unrecorded, so the file may be one call ahead of the database (a crash between the two
    writes), never more, and never behind. ``live``: ``node.db`` is a snapshot of a running
    node's database taken before ``mls.state`` was read, so the file may be any number of calls
    ahead, or rewritten as a new base since."""
    if recorded is None:
        return None  # a database from before marks existed: it adopts the file as it is
    ahead = image.records_after(recorded)
    if ahead is not None:
        if ahead <= 1 or live:
            return None
        return f"node.db is older than mls.state ({ahead} MLS changes behind it)"
    if image.salt == recorded.salt:
        if image.ends[-1] < recorded.length:
            return "mls.state is older than node.db, or was cut short"
        return "mls.state does not continue the state node.db last recorded"
    if image.salt in known_salts:
        return "mls.state is older than node.db (an earlier copy of the file)"
    if image.records == 0 or live:
        return None  # one call ahead: that call rewrote the file as a new base
    return "node.db is older than mls.state, or mls.state belongs to another node.db"
