"""Errors raised by :mod:`openmls_bindings`.

Every error the binding raises is an :class:`MlsError`, so callers can catch
one family. Messages are short, written for users, and never contain key
material, plaintext or whole messages.
"""

from __future__ import annotations

__all__ = [
    "InvalidInputError",
    "InvalidMessageError",
    "MlsError",
    "StorageError",
    "WrongCiphersuiteError",
    "WrongEpochError",
]


class MlsError(Exception):
    """Base class of every error raised by the MLS binding.

    Raised directly for local state problems that fit no subclass, such as
    using a group after this member was removed from it.
    """


class InvalidInputError(MlsError):
    """Bytes could not be decoded, or a value has the wrong length or kind."""


class InvalidMessageError(MlsError):
    """A well-formed message failed validation, authentication or decryption.

    Also raised for a message that belongs to another group, and for a
    message this member sent itself (it cannot decrypt its own messages).
    """


class WrongEpochError(MlsError):
    """A message is from an epoch the group can no longer (or cannot yet) process."""


class WrongCiphersuiteError(MlsError):
    """A ciphersuite is unsupported, or does not match the group's."""


class StorageError(MlsError):
    """The key/state store failed."""
