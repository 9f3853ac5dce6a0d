"""Cost of one commit (and of one message) with the encrypted state file, by group size.

Run by hand: ``python openmls-bindings/bench/commit_cost.py [sizes...]`` (default 10 100
1000). For each ciphersuite and size it prints the median time of: the committer's
``self_update()`` (commit + merge + the state file's write: one appended, fsynced record of the
changed entries, or now and then a whole new base), a member's
``process()`` of that commit, one ``encrypt()`` and one ``process()`` of an application
message — once with state files and once in memory — and the committer's file size.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from openmls_bindings import CIPHERSUITE_X25519_AES128GCM, CIPHERSUITE_XWING, Client, Group

SUITES = ((CIPHERSUITE_X25519_AES128GCM, "0x0001"), (CIPHERSUITE_XWING, "0x004D"))


def new_client(path: Path | None = None, key: bytes | None = None) -> Client:
    """A client on the system clock with the system's randomness."""
    return Client(
        os.urandom(32),
        clock_ms=lambda: time.time_ns() // 1_000_000,
        rng_seed=None,
        storage_path=path,
        storage_key=key,
    )


def build(size: int, suite: int, directory: Path | None) -> tuple[Group, Group]:
    """A group of ``size`` members: the committer's group and one member's."""
    key = os.urandom(32)

    def client(name: str) -> Client:
        if directory is None:
            return new_client()
        return new_client(directory / name, key)

    committer, member = client("committer.mls"), client("member.mls")
    group = committer.create_group(b"bench", suite)
    others = [new_client() for _ in range(size - 2)]
    key_packages = [c.key_package(suite) for c in others] + [member.key_package(suite)]
    _commit, welcome = group.add_members(key_packages)
    return group, member.join(welcome)


def measure(group: Group, member: Group, rounds: int) -> list[float]:
    """Median milliseconds: commit, process commit, encrypt, process message."""
    samples: list[list[float]] = [[], [], [], []]
    for _ in range(rounds):
        t0 = time.perf_counter()
        commit = group.self_update()
        t1 = time.perf_counter()
        member.process(commit)
        t2 = time.perf_counter()
        message = group.encrypt(b"x" * 100)
        t3 = time.perf_counter()
        member.process(message)
        t4 = time.perf_counter()
        for column, seconds in zip(samples, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            column.append(seconds * 1000)
    return [statistics.median(column) for column in samples]


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10, 100, 1000]
    print(
        f"{'suite':>6} {'members':>8} {'state':>7} {'commit':>8} {'process':>8}"
        f" {'encrypt':>8} {'decrypt':>8} {'file KiB':>9}   (ms, medians)"
    )
    for suite, name in SUITES:
        for size in sizes:
            for mode in ("file", "memory"):
                with tempfile.TemporaryDirectory() as tmp:
                    directory = Path(tmp) if mode == "file" else None
                    group, member = build(size, suite, directory)
                    rounds = 5 if size >= 1000 else 20
                    commit, process, encrypt, decrypt = measure(group, member, rounds)
                    kib = (directory / "committer.mls").stat().st_size / 1024 if directory else 0
                    print(
                        f"{name:>6} {size:>8} {mode:>7} {commit:>8.1f} {process:>8.1f}"
                        f" {encrypt:>8.1f} {decrypt:>8.1f} {kib:>9.0f}"
                    )
                    del group, member


if __name__ == "__main__":
    main()
