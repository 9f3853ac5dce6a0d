"""Where the passphrase of a data directory comes from, for every command that opens one.

In this order:

1. ``--passphrase-file FILE``: its first line (one trailing newline is dropped). The file must be
   readable by its owner only; one open to the group or to others is refused by name, as is an
   empty one.
2. ``$QUICNPROTOCHAT_PASSPHRASE``.
3. A prompt that does not echo, when standard input is a terminal. When the data directory is
   being created the passphrase is asked twice and both must match: a typo there would lock
   the person out of the identity they are making.

An option given on the command line beats the environment, and either beats asking: a script
run from a terminal (under tmux, say) must not stop at a prompt it cannot answer. With none of
the three the command fails with one line saying how to give one.
"""

from __future__ import annotations

import getpass
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from node.core.errors import NodeError

__all__ = [
    "PASSPHRASE_ENV",
    "PassphraseError",
    "get_passphrase",
    "passphrase_file_option",
    "read_passphrase_file",
]

PASSPHRASE_ENV = "QUICNPROTOCHAT_PASSPHRASE"  # noqa: S105 - a variable name
MAX_FILE_BYTES = 4096  # a passphrase file is one line; anything longer is the wrong file

F = TypeVar("F", bound=Callable[..., Any])


class PassphraseError(NodeError):
    """No usable passphrase: none given, a refused passphrase file, or two prompts that differ."""


def passphrase_file_option(func: F) -> F:
    """The ``--passphrase-file`` option, named ``passphrase_file`` in the command."""
    option = click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        metavar="FILE",
        help=f"Read the passphrase from FILE (owner-only) [${PASSPHRASE_ENV}, else a prompt].",
    )
    return option(func)


def read_passphrase_file(path: Path) -> bytes:
    """The passphrase kept in ``path``; refused if others may read it, if empty or too long."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise PassphraseError(f"--passphrase-file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PassphraseError(f"--passphrase-file {path}: not a regular file")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PassphraseError(
                f"--passphrase-file {path} is open to other users (mode "
                f"{stat.S_IMODE(info.st_mode):o}): make it owner-only (chmod 600)"
            )
        data = os.read(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise PassphraseError(f"--passphrase-file {path}: longer than {MAX_FILE_BYTES} bytes")
    passphrase = data.removesuffix(b"\n").removesuffix(b"\r")
    if not passphrase:
        raise PassphraseError(f"--passphrase-file {path} is empty")
    return passphrase


def get_passphrase(
    passphrase_file: Path | None,
    *,
    creating: bool,
    what: str,
) -> bytes:
    """The passphrase for ``what`` (a data directory, named in the prompt).

    :param creating: the directory does not exist yet: a prompt asks twice.
    """
    if passphrase_file is not None:
        return read_passphrase_file(passphrase_file)
    from_env = os.environ.get(PASSPHRASE_ENV, "")
    if from_env:
        # The exact bytes of the environment, even if they are not UTF-8.
        return from_env.encode("utf-8", "surrogateescape")
    if sys.stdin is None or not sys.stdin.isatty():
        raise PassphraseError(
            f"no passphrase for {what}: set {PASSPHRASE_ENV}, give --passphrase-file FILE, "
            "or run at a terminal to be asked"
        )
    if creating:
        first = getpass.getpass(f"New passphrase for {what}: ")
        if not first:
            raise PassphraseError("an empty passphrase protects nothing; nothing was created")
        if getpass.getpass("The same passphrase again: ") != first:
            raise PassphraseError("the two passphrases differ; nothing was created")
        return first.encode("utf-8", "surrogateescape")
    typed = getpass.getpass(f"Passphrase for {what}: ")
    if not typed:
        raise PassphraseError(f"no passphrase typed for {what}")
    return typed.encode("utf-8", "surrogateescape")
