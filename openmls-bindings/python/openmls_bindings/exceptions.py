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
    "NotCommitterError",
    "NotMemberError",
    "StorageError",
    "WrongCiphersuiteError",
    "WrongEpochError",
]


class MlsError(Exception):
    """Base class of every error raised by the MLS binding.

    Raised directly for local state problems that fit no subclass, such as
    committing while add proposals are pending with a call that cannot
    return a Welcome.
    """


class InvalidInputError(MlsError):
    """Bytes could not be decoded, or a value has the wrong length or kind."""


class InvalidMessageError(MlsError):
    """A well-formed message failed validation, authentication or decryption.

    Also raised for a message that belongs to another group, and for a
    message this member sent itself (it cannot decrypt its own messages).
    """


class MissingProposalError(InvalidMessageError):
    """A commit covers a proposal this member has not received yet.

    Not a bad commit: the proposal may still be on its way (RFC 9420 lets a
    commit refer to proposals by reference). Process the commit again once
    the proposal has been processed.
    """


class WrongEpochError(MlsError):
    """A message is from an epoch the group can no longer (or cannot yet) process."""


class WrongCiphersuiteError(MlsError):
    """A ciphersuite is unsupported, or does not match the group's."""


class StorageError(MlsError):
    """The encrypted state file cannot be opened, read or written.

    Raised for a wrong storage key, a damaged or truncated file, a file that
    belongs to another identity or is open in another process, and failed
    writes (the call is then undone) — including every write of a client whose
    file a newer client of the same process has opened.
    """


class NotMemberError(MlsError):
    """This client is not a member of the group: it was removed, or the group is unknown."""


class NotCommitterError(MlsError):
    """A commit by, or attempted by, someone other than the group's committer.

    Members who are not the committer send proposals to it instead; a group
    created without ``external_joins`` also refuses external commits with this.
    """
