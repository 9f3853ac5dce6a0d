"""A data directory that tells the truth: created whole, or opened whole, or refused by name.

``identity.key``  the Ed25519 identity, sealed with the passphrase ("QPCE" format)
``store.salt``    the Argon2id salt of the keys below (mode 0600)
``node.db``       SQLCipher: contacts, inbox, seen ids, messages, outbox, the MLS mark
``mls.state``     the MLS engine's keys and groups, encrypted by the binding

A directory that holds none of the four is new and is created. One that holds some is an
existing node: each file must be there and intact, and ``node.db`` and ``mls.state`` must be
of one moment (ADR 0004). Nothing is ever created, rewritten or rolled back in an existing
directory to make it open; a problem is one line that names the file. Every function here is
blocking: callers run them through the runtime's executor.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from node.app.store import NodeStore, WrongStoreKeyError, read_salt, store_keys, write_salt
from node.core.errors import StorageError
from node.core.identity import Identity
from node.core.keyfile import KdfParams, WrongPassphraseError
from node.core.mls_state_file import (
    Mark,
    StateFileError,
    StateImage,
    WrongStateKeyError,
    pairing_problem,
    parse,
)
from node.transport.keystore import create_identity, read_identity

IDENTITY, SALT, DATABASE, MLS_STATE = "identity.key", "store.salt", "node.db", "mls.state"
STATE_FILES = (IDENTITY, SALT, DATABASE, MLS_STATE)
# Files that only a node that ran leaves behind.
TRACES = ("node.db-wal", "node.db-shm", "mls.state.lock", "mls.state.tmp", "identity.key.tmp")


class DataDirError(StorageError):
    """The data directory cannot be used as it is; the message names the file and why."""


def problems_of_layout(data_dir: Path) -> tuple[bool, list[str]]:
    """(is new, problems): a directory without any state file is new; otherwise every state
    file must be a regular file."""
    if not data_dir.exists():
        return True, []
    if not data_dir.is_dir():
        return False, [f"{data_dir} is not a directory"]
    present = [
        name for name in STATE_FILES if (data_dir / name).is_symlink() or (data_dir / name).exists()
    ]
    if not present:
        traces = [name for name in TRACES if (data_dir / name).exists()]
        if traces:
            return False, [
                f"{data_dir} holds traces of a node ({', '.join(traces)}) but none of its "
                f"state files ({', '.join(STATE_FILES)}): removed, or never finished being "
                "created; a new node is not made over them"
            ]
        return True, []
    problems = []
    for name in STATE_FILES:
        path = data_dir / name
        if name not in present:
            problems.append(
                f"{path} is missing (the directory holds {', '.join(present)}): it is never "
                "recreated next to the others"
            )
        elif not path.is_file():
            problems.append(f"{path} is not a regular file")
        elif path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            problems.append(f"{path} is open to other users (mode {path.stat().st_mode & 0o777:o})")
    return False, problems


@dataclass
class Examined:
    """What checking an existing data directory found."""

    problems: list[str] = field(default_factory=list)
    identity: Identity | None = None
    mls_key: bytes | None = None
    store: NodeStore | None = None
    image: StateImage | None = None
    # mls.state is one MLS call ahead of node.db (a crash between the two writes).
    ahead: bool = False
    # node.db does not record where mls.state stands now (one call ahead, or a database
    # from before marks existed): the node records it before its next MLS call.
    unrecorded: bool = False


@dataclass(frozen=True)
class Opened:
    """A data directory ready for a node: its identity, its database, the MLS state key and
    what the MLS state file held when it was checked (None for a new directory)."""

    identity: Identity
    store: NodeStore
    mls_key: bytes
    image: StateImage | None
    ahead: bool = False
    unrecorded: bool = False


StoreOpener = Callable[[Path, bytes], NodeStore]


def examine(
    data_dir: Path,
    passphrase: bytes,
    kdf: KdfParams,
    open_store: StoreOpener,
    *,
    live: bool = False,
) -> Examined:
    """Check every state file of an existing data directory, as far as the damage allows,
    writing nothing (``open_store`` decides how ``node.db`` is opened). ``live``: a node runs on
    the directory, and ``open_store`` gives a snapshot taken before ``mls.state`` is read.
    Whoever gets the result closes its ``store``."""
    found = Examined()
    _, found.problems = problems_of_layout(data_dir)
    if any(p.endswith("is not a directory") for p in found.problems):
        return found
    try:
        found.identity = read_identity(data_dir / IDENTITY, passphrase)
    except WrongPassphraseError as exc:
        found.problems.append(str(exc))
        return found  # nothing else can be told apart from a wrong passphrase
    except StorageError as exc:
        if (data_dir / IDENTITY).exists():
            found.problems.append(str(exc))
    try:
        salt = read_salt(data_dir / SALT)
    except StorageError as exc:
        if (data_dir / SALT).exists():
            found.problems.append(str(exc))
        return found
    db_key, mls_key = store_keys(passphrase, salt, kdf)
    found.mls_key = mls_key
    wrong_keys = []
    mls_path, db_path = data_dir / MLS_STATE, data_dir / DATABASE
    # node.db first: on a running node its snapshot must not be newer than the mls.state read
    # after it (mls.state may then be ahead, which a live check accepts, never behind).
    db_problems: list[str] = []
    if db_path.exists():
        try:
            found.store = open_store(db_path, db_key)
        except WrongStoreKeyError:
            wrong_keys.append(db_path)
        except StorageError as exc:
            db_problems.append(str(exc))
    if mls_path.exists():
        try:
            found.image = parse(mls_path.read_bytes(), mls_key)
        except WrongStateKeyError:
            wrong_keys.insert(0, mls_path)
        except StateFileError as exc:
            found.problems.append(f"{mls_path} {exc}")
        except OSError as exc:
            found.problems.append(f"{mls_path} cannot be read: {exc.strerror}")
    found.problems += db_problems
    if len(wrong_keys) == 2 and found.identity is not None:
        found.problems.append(
            f"{data_dir / SALT} is damaged or replaced: the passphrase opens {IDENTITY}, "
            f"but neither {DATABASE} nor {MLS_STATE} opens with the key it gives"
        )
    else:
        found.problems += [
            f"{path} is damaged: it does not open with the key of this passphrase"
            for path in wrong_keys
        ]
    if found.store is not None and found.image is not None:
        raw, salts = found.store.mls_mark()
        try:
            recorded = Mark.from_bytes(raw) if raw is not None else None
        except StorageError as exc:
            found.problems.append(f"{db_path}: {exc}")
            return found
        problem = pairing_problem(found.image, recorded, salts, live=live)
        if problem is not None:
            found.problems.append(f"{data_dir}: {problem}")
        else:
            found.ahead = recorded is not None and found.image.mark != recorded
            found.unrecorded = found.image.mark != recorded
    return found


def open_existing(data_dir: Path, passphrase: bytes, kdf: KdfParams) -> Opened:
    """Open an existing data directory for a node, or raise :class:`DataDirError` with its
    first problem."""

    def open_store(path: Path, key: bytes) -> NodeStore:
        return NodeStore(path, key, create=False)

    found = examine(data_dir, passphrase, kdf, open_store)
    if found.problems:
        if found.store is not None:
            found.store.close()
        more = len(found.problems) - 1
        suffix = f" (and {more} more: see 'quicnprotochat doctor')" if more else ""
        raise DataDirError(found.problems[0] + suffix)
    if found.identity is None or found.store is None or found.mls_key is None:
        raise DataDirError(f"{data_dir} could not be checked")  # every gap is a problem above
    return Opened(
        found.identity, found.store, found.mls_key, found.image, found.ahead, found.unrecorded
    )


@dataclass(frozen=True)
class Fresh:
    """The random bytes a new data directory takes from the runtime."""

    seed: bytes  # the identity (32)
    seal: bytes  # the identity file's salt and nonce
    salt: bytes  # store.salt


def create(data_dir: Path, passphrase: bytes, kdf: KdfParams, fresh: Fresh) -> Opened:
    """Create a new data directory's identity, salt and database (the MLS client creates
    ``mls.state`` next). Refuses to write over any state file."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity = create_identity(data_dir / IDENTITY, passphrase, fresh.seed, fresh.seal, kdf)
    write_salt(data_dir / SALT, fresh.salt)
    db_key, mls_key = store_keys(passphrase, fresh.salt, kdf)
    if (data_dir / MLS_STATE).exists():
        raise DataDirError(f"{data_dir / MLS_STATE} exists in a new data directory")
    store = NodeStore(data_dir / DATABASE, db_key, create=True)
    return Opened(identity, store, mls_key, None)
