"""One relay process per embedded store.

``relay run`` with the SQLite store holds an exclusive lock on ``relay.lock`` in its data
directory for as long as it runs: a second relay on the same directory is refused, and so is
``relay migrate --from-sqlite`` (whatever the running relay accepted after the copy would be
lost). The lock is the kernel's (``flock``): it goes with the process, even a SIGKILLed one, so
a stale lock file never blocks anything.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from node.core.errors import StorageError

__all__ = ["LOCK_FILE", "DataDirInUseError", "hold", "must_be_free"]

LOCK_FILE = "relay.lock"


class DataDirInUseError(StorageError):
    """A relay process runs on that data directory."""


def hold(data_dir: Path) -> IO[bytes]:
    """Take the data directory's lock for this process; keep the returned file open for as
    long as the relay runs (closing it releases the lock)."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    file = os.fdopen(fd, "r+b")
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        raise DataDirInUseError(
            f"another relay process runs on {data_dir} (it holds {LOCK_FILE})"
        ) from None
    return file


def must_be_free(data_dir: Path, why: str) -> None:
    """Refuse with :class:`DataDirInUseError` when a relay runs on ``data_dir``."""
    path = data_dir / LOCK_FILE
    if not path.exists():
        return
    with path.open("rb") as file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataDirInUseError(
                f"a relay is running on {data_dir}: stop it first ({why})"
            ) from None
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
