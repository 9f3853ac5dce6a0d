"""Backups of a data directory: one encrypted file, consistent even while the node runs.

A backup holds the four state files as they were at one moment. ``node.db`` is copied with
SQLite's backup API (one read transaction: a consistent snapshot, encrypted under the same
key). That snapshot names the point ``mls.state`` had reached after its last MLS call (ADR
0004); ``mls.state`` is read and cut at exactly that record boundary, so the pair belongs to
one moment even if the running node appended records meanwhile. If the node rewrote the file
as a new base in between, the snapshot is taken again.

File format: the "QPCE" sealing of ``node.core.keyfile`` (Argon2id, ChaCha20-Poly1305) under
the passphrase, around: magic ``QPCB`` | version u8 | made-at ms u64 | file count u8, then per
file: name length u8 | name | data length u64 | data. Every function is blocking.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from node.app.datadir import DATABASE, IDENTITY, MLS_STATE, SALT, STATE_FILES, open_existing
from node.app.store import NodeStore, read_salt, store_keys
from node.core.errors import CryptoError, StorageError
from node.core.keyfile import KdfParams, WrongPassphraseError, open_sealed, seal
from node.core.mls_state_file import Mark, pairing_problem, parse
from node.transport.keystore import read_identity

MAGIC = b"QPCB"
VERSION = 1
SNAPSHOT_ATTEMPTS = 5
RESTORED_FROM = "restored_from_ms"


class BackupError(StorageError):
    """A backup could not be made, read or restored; the message says which file and why."""


@dataclass(frozen=True)
class BackupSummary:
    made_at_ms: int
    mls_records: int
    messages: int


def _snapshot(
    data_dir: Path, db_key: bytes, mls_key: bytes, scratch: Path, *, live: bool
) -> tuple[bytes, bytes]:
    """(node.db, mls.state) of one moment. ``live``: a node runs on the directory and may
    write while this reads."""
    copy = scratch / DATABASE
    for _ in range(SNAPSHOT_ATTEMPTS):
        copy.unlink(missing_ok=True)
        source = NodeStore(data_dir / DATABASE, db_key, create=False)
        try:
            source.backup_to(copy)
        finally:
            source.close()
        snapshot = NodeStore(copy, db_key, create=False)
        try:
            raw, salts = snapshot.mls_mark()
        finally:
            snapshot.close()
        state = (data_dir / MLS_STATE).read_bytes()
        try:
            image = parse(state, mls_key)
        except StorageError as exc:
            raise BackupError(f"{data_dir / MLS_STATE} {exc}") from exc
        mark = Mark.from_bytes(raw) if raw is not None else None
        problem = pairing_problem(image, mark, salts, live=live)
        if problem is not None:
            # A stopped node's files are what they are: a backup does not paper over them.
            raise BackupError(f"{data_dir}: {problem}")
        if mark is None:
            return copy.read_bytes(), state[: image.ends[-1]]
        if image.records_after(mark) is not None:
            # Cut where the database's snapshot says the MLS state stood.
            return copy.read_bytes(), state[: mark.length]
        if not live:
            return copy.read_bytes(), state[: image.ends[-1]]  # one call ahead, rewritten
        # The running node rewrote mls.state after the snapshot: take both again.
    raise BackupError(f"{data_dir / MLS_STATE} kept changing; try the backup again")


def make_backup(
    data_dir: Path,
    passphrase: bytes,
    kdf: KdfParams,
    made_at_ms: int,
    fresh: bytes,
    scratch: Path,
    *,
    live: bool,
) -> tuple[bytes, BackupSummary]:
    """The sealed backup of ``data_dir`` (``fresh``: the sealing's random bytes; ``scratch``:
    an empty private directory for the database copy; ``live``: a node runs on it)."""
    identity_blob = (data_dir / IDENTITY).read_bytes()
    read_identity(data_dir / IDENTITY, passphrase)  # the passphrase is this node's
    salt = read_salt(data_dir / SALT)
    db_key, mls_key = store_keys(passphrase, salt, kdf)
    db, state = _snapshot(data_dir, db_key, mls_key, scratch, live=live)
    files = {IDENTITY: identity_blob, SALT: salt, DATABASE: db, MLS_STATE: state}
    body = [MAGIC, struct.pack(">BQB", VERSION, made_at_ms, len(files))]
    for name, data in files.items():
        body += [struct.pack(">B", len(name)), name.encode(), struct.pack(">Q", len(data)), data]
    check = NodeStore(scratch / DATABASE, db_key, create=False)
    try:
        messages = len(check.messages())
    finally:
        check.close()
    summary = BackupSummary(made_at_ms, parse(state, mls_key).records, messages)
    return seal(b"".join(body), passphrase, kdf, fresh), summary


def _unpack(plain: bytes) -> tuple[int, dict[str, bytes]]:
    if plain[:4] != MAGIC or len(plain) < 14:
        raise BackupError("not a quicnprotochat backup")
    version, made_at, count = struct.unpack_from(">BQB", plain, 4)
    if version != VERSION:
        raise BackupError(f"backup version {version} is not supported")
    files: dict[str, bytes] = {}
    at = 14
    try:
        for _ in range(count):
            (name_len,) = struct.unpack_from(">B", plain, at)
            name = plain[at + 1 : at + 1 + name_len].decode()
            at += 1 + name_len
            (size,) = struct.unpack_from(">Q", plain, at)
            files[name] = plain[at + 8 : at + 8 + size]
            if len(files[name]) != size:
                raise BackupError("the backup is truncated")
            at += 8 + size
    except (struct.error, UnicodeDecodeError) as exc:
        raise BackupError("the backup is damaged") from exc
    if set(files) != set(STATE_FILES):
        raise BackupError("the backup does not hold a whole data directory")
    return made_at, files


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def restore_backup(blob: bytes, passphrase: bytes, data_dir: Path, kdf: KdfParams) -> BackupSummary:
    """Write the backup's files into ``data_dir``, which must be empty or absent, check the
    result as a node would open it, and record that it was restored."""
    try:
        plain = open_sealed(blob, passphrase)
    except WrongPassphraseError:
        raise BackupError("wrong passphrase, or the backup file was altered") from None
    except CryptoError as exc:
        raise BackupError(f"not a quicnprotochat backup: {exc}") from None
    made_at, files = _unpack(plain)
    if data_dir.exists():
        if not data_dir.is_dir():
            raise BackupError(f"{data_dir} is not a directory")
        if any(data_dir.iterdir()):
            raise BackupError(
                f"{data_dir} is not empty: a backup is restored only into an empty one"
            )
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    written: list[Path] = []
    try:
        # node.db last: a restore cut short leaves a directory that refuses to open.
        for name in (IDENTITY, SALT, MLS_STATE, DATABASE):
            written.append(data_dir / name)
            _write_new(data_dir / name, files[name])
        dir_fd = os.open(data_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        opened = open_existing(data_dir, passphrase, kdf)
    except BaseException:
        # The directory was empty: leave it so, not half restored.
        for path in written:
            path.unlink(missing_ok=True)
        for leftover in data_dir.iterdir():
            leftover.unlink()  # SQLite's -wal/-shm, the binding's lock file
        raise
    try:
        opened.store.set_int(RESTORED_FROM, made_at)
        messages = len(opened.store.messages())
    finally:
        opened.store.close()
    records = opened.image.records if opened.image is not None else 0
    return BackupSummary(made_at, records, messages)


def take_restore_notice(store: NodeStore) -> int | None:
    """When the node was restored from a backup and has not said so yet: the backup's time
    (ms), once; afterwards None."""
    made_at = store.get_int(RESTORED_FROM, 0)
    if not made_at:
        return None
    store.set_int(RESTORED_FROM, 0)
    return made_at
