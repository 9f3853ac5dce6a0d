"""An identity key file on disk, sealed with a passphrase (format: ``node.core.keyfile``)."""

from __future__ import annotations

import os
from pathlib import Path

from node.core.errors import CryptoError, StorageError
from node.core.identity import Identity
from node.core.keyfile import (
    DEFAULT_KDF,
    SEAL_RANDOM_SIZE,
    KdfParams,
    WrongPassphraseError,
    open_sealed,
    seal,
)
from node.core.runtime import Runtime


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the first byte (never readable by others)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


async def load_or_create_identity(
    path: Path, passphrase: bytes, runtime: Runtime, params: KdfParams = DEFAULT_KDF
) -> tuple[Identity, bool]:
    """The identity sealed at ``path``, or a new one sealed there. Returns (identity, created)."""
    if not passphrase:
        raise StorageError("a passphrase is required to protect the identity key")
    run = runtime.run_blocking
    try:
        if await run(path.exists):
            blob = await run(lambda: _read(path))
            seed = await run(lambda: _open(path, blob, passphrase))
            return Identity.from_seed(seed), False
        await run(lambda: path.parent.mkdir(parents=True, exist_ok=True, mode=0o700))
        identity = Identity.from_seed(runtime.random_bytes(32))
        fresh = runtime.random_bytes(SEAL_RANDOM_SIZE)
        blob = await run(lambda: seal(identity.seed(), passphrase, params, fresh))
        await run(lambda: _write_private(path, blob))
        return identity, True
    except OSError as exc:
        raise StorageError(f"cannot use the key file {path}: {exc.strerror}") from exc


def _open(path: Path, blob: bytes, passphrase: bytes) -> bytes:
    """The sealed seed; a refusal names the file (a person may have several)."""
    try:
        return open_sealed(blob, passphrase)
    except WrongPassphraseError:
        raise WrongPassphraseError(f"{path}: wrong passphrase, or the file was altered") from None


def read_identity(path: Path, passphrase: bytes) -> Identity:
    """The identity sealed at ``path``; never creates one. Blocking (Argon2)."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise StorageError(f"{path} is missing") from None
    except OSError as exc:
        raise StorageError(f"{path} cannot be read: {exc.strerror}") from exc
    try:
        return Identity.from_seed(open_sealed(blob, passphrase))
    except WrongPassphraseError:
        raise WrongPassphraseError(f"{path}: wrong passphrase, or the file was altered") from None
    except CryptoError as exc:
        raise StorageError(f"{path} is damaged: {exc}") from None


def create_identity(
    path: Path, passphrase: bytes, seed: bytes, fresh: bytes, params: KdfParams
) -> Identity:
    """Seal a new identity at ``path`` (which must not exist yet). Blocking (Argon2)."""
    if not passphrase:
        raise StorageError("a passphrase is required to protect the identity key")
    if path.exists():
        raise StorageError(f"{path} already exists; an identity key is never replaced")
    identity = Identity.from_seed(seed)
    _write_private(path, seal(identity.seed(), passphrase, params, fresh))
    return identity


async def load_identity(path: Path, passphrase: bytes, runtime: Runtime) -> Identity:
    """The identity sealed at ``path``; never creates anything (a missing file is an error)."""
    if not passphrase:
        raise StorageError("a passphrase is required to open the identity key")
    run = runtime.run_blocking
    try:
        if not await run(path.is_file):
            raise StorageError(
                f"no identity key at {path} (a node makes one: quicnprotochat node run)"
            )
        blob = await run(lambda: _read(path))
    except OSError as exc:
        raise StorageError(f"cannot read the key file {path}: {exc.strerror}") from exc
    seed = await run(lambda: _open(path, blob, passphrase))
    return Identity.from_seed(seed)
