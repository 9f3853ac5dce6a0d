"""``quicnprotochat doctor``, ``backup`` and ``restore``: the data directory from outside.

``doctor`` changes nothing: it reads the state files, and checks ``node.db`` through a copy in
a private temporary directory (SQLite would otherwise create its ``-wal`` and ``-shm`` files
next to the original).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

import click

from node.app.backup import make_backup, restore_backup
from node.app.datadir import DATABASE, IDENTITY, MLS_STATE, examine, problems_of_layout
from node.app.passphrase import get_passphrase, passphrase_file_option
from node.app.store import NodeStore
from node.core.cli_errors import fail
from node.core.errors import NodeError
from node.core.identity import fingerprint
from node.core.keyfile import DEFAULT_KDF, SEAL_RANDOM_SIZE, KdfParams
from node.transport.runtime import RealRuntime

# Tests set cheaper Argon2 parameters for the directories they make.
KDF: KdfParams = DEFAULT_KDF

DATA_DIR = click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    required=True,
    help="The node's data directory.",
)


def _passphrase(data_dir: Path, passphrase_file: Path | None) -> bytes:
    return get_passphrase(passphrase_file, creating=False, what=str(data_dir))


def _fail(message: str) -> NoReturn:
    fail(message)


def node_running(data_dir: Path) -> bool:
    """True if a process holds the MLS state file's lock (a node runs on this directory)."""
    try:
        fd = os.open(data_dir / f"{MLS_STATE}.lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def diagnose(data_dir: Path, passphrase: bytes, kdf: KdfParams) -> dict[str, Any]:
    """What ``doctor`` reports, without changing anything in ``data_dir``."""
    report: dict[str, Any] = {"data_dir": str(data_dir), "running": False, "problems": []}
    is_new, _ = problems_of_layout(data_dir)
    if is_new:
        report["problems"] = [f"{data_dir} holds no node (none of its state files is there)"]
        return report
    report["running"] = data_dir.is_dir() and node_running(data_dir)
    with tempfile.TemporaryDirectory(prefix="qpc-doctor-") as scratch:
        copy = Path(scratch) / DATABASE

        def open_copy(path: Path, key: bytes) -> NodeStore:
            # The database and its write-ahead log, copied: opening the original would add
            # files next to it.
            shutil.copyfile(path, copy)
            wal = path.with_name(path.name + "-wal")
            if wal.exists():
                shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
            return NodeStore(copy, key, create=False)

        def open_snapshot(path: Path, key: bytes) -> NodeStore:
            # A running node has its -wal and -shm files open: a second connection adds
            # nothing, and SQLite's backup API gives a consistent copy while it writes.
            live = NodeStore(path, key, create=False)
            try:
                live.backup_to(copy)
            finally:
                live.close()
            return NodeStore(copy, key, create=False)

        running = bool(report["running"])
        opener = open_snapshot if running else open_copy
        found = examine(data_dir, passphrase, kdf, opener, live=running)
        if found.store is not None:
            try:
                report["messages"] = len(found.store.messages())
                report["inbox"] = len(found.store.pending_incoming())
                report["outbox"] = len(found.store.outbox())
                report["seen"] = found.store.seen_count()
                report["invitations"] = len(found.store.invitations())
                # Refusals the node saved (every 30 s and at stop), by kind (NodeLimits).
                report["refused"] = found.store.counts()
            except NodeError as exc:
                found.problems.append(f"{data_dir / DATABASE}: {exc}")
            finally:
                found.store.close()
    report["problems"] = found.problems
    if found.identity is not None:
        report["identity"] = fingerprint(found.identity.public_key)
    if found.image is not None:
        report["mls_records"] = found.image.records
        report["mls_ahead"] = found.ahead
    return report


@click.command("doctor")
@DATA_DIR
@passphrase_file_option
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor_command(data_dir: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """Check a data directory without changing it; exit 1 if anything is wrong."""
    is_new, _ = problems_of_layout(data_dir)
    # A directory that holds no node is reported as such: there is nothing to open.
    passphrase = b"" if is_new else _passphrase(data_dir, passphrase_file)
    report = diagnose(data_dir, passphrase, KDF)
    problems: list[str] = report["problems"]
    if as_json:
        click.echo(json.dumps({"ok": not problems, **report}))
    else:
        if report["running"]:
            click.echo("note: a node is running on this directory; this is a snapshot")
        for problem in problems:
            click.echo(f"ERROR: {problem}", err=True)
        if not problems:
            click.echo(
                f"ok: {data_dir}: identity {report['identity']}; {IDENTITY}, store.salt, "
                f"{DATABASE} ({report['messages']} messages, {report['inbox']} waiting in "
                f"the inbox, {report['outbox']} in the outbox) and {MLS_STATE} "
                f"({report['mls_records']} changes since its last base) are whole and of "
                "one moment"
            )
            refused = ", ".join(f"{k} {n}" for k, n in sorted(report["refused"].items()) if n)
            click.echo(
                f"bounds: {report['seen']} envelope ids kept, {report['invitations']} "
                f"invitations waiting; refused: {refused or 'nothing'}"
            )
    sys.exit(1 if problems else 0)


@click.command("backup")
@DATA_DIR
@passphrase_file_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The backup file to write (encrypted with the passphrase; must not exist).",
)
def backup_command(data_dir: Path, passphrase_file: Path | None, out: Path) -> None:
    """Write an encrypted, consistent backup of a data directory (the node may be running)."""
    if out.exists():
        _fail(f"{out} exists; a backup never overwrites a file")
    is_new, problems = problems_of_layout(data_dir)
    if is_new or problems:
        _fail(problems[0] if problems else f"{data_dir} holds no node")
    passphrase = _passphrase(data_dir, passphrase_file)
    runtime = RealRuntime("qpc-backup")
    try:
        with tempfile.TemporaryDirectory(prefix="qpc-backup-") as scratch:
            blob, summary = make_backup(
                data_dir,
                passphrase,
                KDF,
                runtime.wall_ms(),
                runtime.random_bytes(SEAL_RANDOM_SIZE),
                Path(scratch),
                live=node_running(data_dir),
            )
        tmp = out.with_name(out.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
    except NodeError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.filename or out}: {exc.strerror}")
    finally:
        runtime.close()
    click.echo(
        f"backup of {data_dir} written to {out}: {summary.messages} messages, "
        f"{MLS_STATE} at {summary.mls_records} changes since its last base"
    )


@click.command("restore")
@click.option(
    "--from",
    "source",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="A backup file written by 'quicnprotochat backup'.",
)
@DATA_DIR
@passphrase_file_option
def restore_command(source: Path, data_dir: Path, passphrase_file: Path | None) -> None:
    """Restore a backup into an empty (or new) data directory."""
    try:
        blob = source.read_bytes()
    except OSError as exc:
        _fail(f"{source}: {exc.strerror}")
    # The backup's own passphrase: it decrypts the backup, so one prompt is enough.
    passphrase = _passphrase(source, passphrase_file)
    try:
        summary = restore_backup(blob, passphrase, data_dir, KDF)
    except NodeError as exc:
        # Name the backup file unless the trouble is the directory (which the text names).
        _fail(str(exc) if str(data_dir) in str(exc) else f"{source}: {exc}")
    except OSError as exc:
        _fail(f"{exc.filename or data_dir}: {exc.strerror}")
    made = datetime.datetime.fromtimestamp(summary.made_at_ms / 1000, tz=datetime.UTC)
    click.echo(
        f"restored {data_dir} from the backup of {made:%Y-%m-%d %H:%M:%S} UTC "
        f"({summary.messages} messages). Its groups are at the epochs they had then: what "
        "the groups did since is lost to this node (see docs/operations.md, Restoring)."
    )
