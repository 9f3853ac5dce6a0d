"""``whoami``, ``verify`` (and ``peers``, for names) on real data directories, through click's runner."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from node.app.cli import main
from node.app.profile import open_node
from node.app.qr import qr_matrix
from node.core.identity import Identity, fingerprint
from node.core.invite_link import decode_invite_link
from node.core.keyfile import DEFAULT_KDF, FAST_KDF, SEAL_RANDOM_SIZE, KdfParams, seal
from node.core.safety_number import safety_number
from node.transport.runtime import RealRuntime

PASS = "correct horse"
NOW = 1_780_000_000_000
BLOCKS = {"█": (False, False), "▀": (False, True), "▄": (True, False), " ": (True, True)}


def make_identity(data_dir: Path, seed_byte: int, passphrase: str = PASS) -> Identity:
    """A data directory with a sealed identity key, as a node leaves it (fast Argon2)."""
    identity = Identity.from_seed(bytes([seed_byte]) * 32)
    data_dir.mkdir(mode=0o700)
    blob = seal(identity.seed(), passphrase.encode(), FAST_KDF, os.urandom(SEAL_RANDOM_SIZE))
    (data_dir / "identity.key").write_bytes(blob)
    (data_dir / "identity.key").chmod(0o600)
    return identity


def run(*args: str, passphrase: str | None = PASS) -> Result:
    env = {"QUICNPROTOCHAT_PASSPHRASE": passphrase} if passphrase is not None else {}
    return CliRunner(env=env).invoke(main, list(args), catch_exceptions=False)


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in directory.rglob("*")
    }


def qr_from_text(lines: list[str]) -> list[list[bool]]:
    """The module matrix a block drawing shows (True: dark), two rows per line."""
    matrix: list[list[bool]] = []
    for line in lines:
        pairs = [BLOCKS[c] for c in line]
        matrix.append([top for top, _ in pairs])
        matrix.append([bottom for _, bottom in pairs])
    return matrix


def test_whoami_prints_name_fingerprint_qr_and_a_link_that_checks(tmp_path: Path) -> None:
    alice = make_identity(tmp_path / "alice", 1)
    relay = Identity.from_seed(bytes([9]) * 32)
    before = snapshot(tmp_path / "alice")
    result = run(
        "whoami",
        "--data-dir",
        str(tmp_path / "alice"),
        "--name",
        "alice",
        "--address",
        "192.0.2.7:4433",
        "--address",
        "[2001:db8::7]:4433",
        "--relay",
        "relay.example.org:7000",
        "--relay-key",
        relay.public_key.hex(),
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "name: alice"
    assert lines[1] == f"identity: {alice.public_key.hex()}"
    assert lines[2] == f"fingerprint: {fingerprint(alice.public_key)}"
    assert lines[-1].startswith("link: qpc://v2/")
    text = lines[-1].removeprefix("link: ")
    link = decode_invite_link(text, now_ms=NOW)
    assert link.identity_key == alice.public_key
    assert link.display_name == "alice"
    assert link.addresses == (("192.0.2.7", 4433), ("2001:db8::7", 4433))
    assert link.relay is not None and link.relay.identity_key == relay.public_key
    assert link.relay.address == ("relay.example.org", 7000)
    assert link.expires_at_ms is None
    # The drawing between the fingerprint and the link is the QR code of the link itself.
    drawn = qr_from_text(lines[3:-1])
    expected = qr_matrix(text)
    assert drawn[: len(expected)] == expected
    assert snapshot(tmp_path / "alice") == before  # nothing created, nothing touched


def test_whoami_json_keeps_the_exact_name_and_the_text_output_does_not(tmp_path: Path) -> None:
    alice = make_identity(tmp_path / "alice", 1)
    hostile = "\x1b]52;c;aGk=\x07al\u202eice"
    result = run("whoami", "--data-dir", str(tmp_path / "alice"), "--name", hostile, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["name"] == hostile
    assert out["identity"] == alice.public_key.hex()
    assert out["addresses"] == [] and out["relay"] is None and out["expires_at_ms"] is None
    assert decode_invite_link(out["link"], now_ms=NOW).display_name == hostile
    text = run("whoami", "--data-dir", str(tmp_path / "alice"), "--name", hostile, "--no-qr")
    assert text.stdout.splitlines()[0] == "name: ␛]52;c;aGk=␇al<U+202E>ice"
    assert "\x1b" not in text.stdout and "\x07" not in text.stdout


def test_whoami_expiry(tmp_path: Path) -> None:
    make_identity(tmp_path / "alice", 1)
    result = run(
        "whoami",
        "--data-dir",
        str(tmp_path / "alice"),
        "--name",
        "a",
        "--expires-in",
        "7",
        "--json",
    )
    out = json.loads(result.stdout)
    assert out["expires_at_ms"] - out["issued_at_ms"] == 7 * 24 * 3600 * 1000


def test_whoami_without_an_identity_names_the_file_and_creates_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("whoami", "--data-dir", str(empty), "--name", "alice")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"ERROR: no identity key at {empty / 'identity.key'} "
        "(a node makes one: quicnprotochat node run)"
    ]
    assert list(empty.iterdir()) == []
    missing = tmp_path / "missing"
    result = run("whoami", "--data-dir", str(missing), "--name", "alice")
    assert result.exit_code == 1 and result.stderr.startswith("ERROR: no identity key at")
    assert not missing.exists()


def test_whoami_with_a_wrong_or_no_passphrase_is_one_error_line(tmp_path: Path) -> None:
    make_identity(tmp_path / "alice", 1)
    result = run("whoami", "--data-dir", str(tmp_path / "alice"), "--name", "a", passphrase="no")
    assert result.exit_code == 1
    key_file = tmp_path / "alice" / "identity.key"
    assert result.stderr.splitlines() == [
        f"ERROR: {key_file}: wrong passphrase, or the file was altered"
    ]
    result = run("whoami", "--data-dir", str(tmp_path / "alice"), "--name", "a", passphrase=None)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"ERROR: no passphrase for {tmp_path / 'alice'}: set QUICNPROTOCHAT_PASSPHRASE, give "
        "--passphrase-file FILE, or run at a terminal to be asked"
    ]


def test_verify_shows_the_same_number_on_both_sides(tmp_path: Path) -> None:
    alice = make_identity(tmp_path / "alice", 1)
    bob = make_identity(tmp_path / "bob", 2)
    bob_link = json.loads(
        run("whoami", "--data-dir", str(tmp_path / "bob"), "--name", "bob", "--json").stdout
    )["link"]
    by_alice = run("verify", "--data-dir", str(tmp_path / "alice"), bob_link)
    by_bob = run("verify", "--data-dir", str(tmp_path / "bob"), alice.public_key.hex())
    assert by_alice.exit_code == 0 and by_bob.exit_code == 0, by_alice.output + by_bob.output
    digits = safety_number(alice.public_key, bob.public_key)
    grouped = [digits[i : i + 5] for i in range(0, 60, 5)]
    for result in (by_alice, by_bob):
        lines = result.stdout.splitlines()
        assert [line.split() for line in lines[1:4]] == [
            grouped[0:4],
            grouped[4:8],
            grouped[8:12],
        ]
        assert qr_from_text(lines[4:-1])[: len(qr_matrix(digits))] == qr_matrix(digits)
    assert by_alice.stdout.splitlines()[0] == (
        f"safety number of you and bob ({fingerprint(bob.public_key)}):"
    )
    as_json = json.loads(
        run("verify", "--data-dir", str(tmp_path / "alice"), bob_link, "--json").stdout
    )
    assert as_json["safety_number"] == digits
    assert as_json["peer"] == bob.public_key.hex() and as_json["peer_name"] == "bob"


def test_verify_refuses_a_tampered_link_in_one_line(tmp_path: Path) -> None:
    make_identity(tmp_path / "alice", 1)
    make_identity(tmp_path / "bob", 2)
    link = json.loads(
        run("whoami", "--data-dir", str(tmp_path / "bob"), "--name", "bob", "--json").stdout
    )["link"]
    # Change one character of the body (the name's bytes sit after the key): not bob's link now.
    position = len("qpc://v2/") + 60
    tampered = link[:position] + ("A" if link[position] != "A" else "B") + link[position + 1 :]
    result = run("verify", "--data-dir", str(tmp_path / "alice"), tampered)
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: the invite link "), lines
    assert "Traceback" not in result.output


@pytest.mark.parametrize("peer", ["nonsense", "ab" * 31])
def test_verify_with_something_that_is_not_a_peer_is_a_usage_error(
    tmp_path: Path, peer: str
) -> None:
    make_identity(tmp_path / "alice", 1)
    result = run("verify", "--data-dir", str(tmp_path / "alice"), peer)
    assert result.exit_code == 2
    assert "an identity key is 64 hex digits" in result.stderr


def test_verify_with_ones_own_key_is_refused(tmp_path: Path) -> None:
    alice = make_identity(tmp_path / "alice", 1)
    result = run("verify", "--data-dir", str(tmp_path / "alice"), alice.public_key.hex())
    assert result.exit_code == 1
    assert result.stderr.startswith("ERROR: that is your own identity")


def test_peers_shows_an_advertised_name_safe(tmp_path: Path) -> None:
    from node.app.store import NodeStore, SeenPeer, derive_store_keys
    from node.core.keyfile import DEFAULT_KDF

    data_dir = tmp_path / "bob"
    data_dir.mkdir()
    db_key, _ = derive_store_keys(data_dir, PASS.encode(), DEFAULT_KDF, os.urandom(16))
    store = NodeStore(data_dir / "node.db", db_key)
    hostile = "\x1b[2J\x1b]0;pwned\x07mal\u202elory"
    store.save_peer(SeenPeer("a" * 52, hostile, "lan", "127.0.0.1", 9, "claimed", 0))
    store.close()
    result = run("peers", "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    row = result.stdout.splitlines()[1]
    assert row.startswith("␛[2J␛]0;pwned␇ma ")  # shown, then cut to the 16-character column
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout


async def make_node_dir(data_dir: Path, kdf: KdfParams = DEFAULT_KDF) -> bytes:
    """A data directory as ``node run`` leaves it (by default with the real Argon2
    parameters, which whoami assumes); returns the node's envelope public key."""
    runtime = RealRuntime("qpc-whoami-test")
    try:
        node, _ = await open_node(data_dir, PASS.encode(), runtime, name="alice", kdf=kdf)
        try:
            return (await node.envelope_key()).public_key
        finally:
            await node.stop()
    finally:
        runtime.close()


def test_whoami_link_carries_the_nodes_envelope_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "alice"
    envelope_key = asyncio.run(make_node_dir(data_dir))
    before = snapshot(data_dir)
    result = run("whoami", "--data-dir", str(data_dir), "--name", "alice", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["envelope_key"] == envelope_key.hex()
    assert decode_invite_link(out["link"], now_ms=NOW).envelope_key == envelope_key
    text = run("whoami", "--data-dir", str(data_dir), "--name", "alice", "--no-qr")
    assert "no envelope key" not in text.output
    # Read only: nothing it keeps is touched (SQLite may add its -wal/-shm side files).
    after = {k: v for k, v in snapshot(data_dir).items() if not k.endswith(("-wal", "-shm"))}
    assert after == before


def test_whoami_of_a_node_without_an_envelope_key_says_so_and_still_links(
    tmp_path: Path,
) -> None:
    make_identity(tmp_path / "alice", 1)
    result = run("whoami", "--data-dir", str(tmp_path / "alice"), "--name", "alice", "--no-qr")
    assert result.exit_code == 0, result.output
    assert "note: this node has no envelope key yet" in result.stderr
    link = decode_invite_link(result.stdout.splitlines()[-1].removeprefix("link: "), now_ms=NOW)
    assert link.envelope_key is None
    as_json = run("whoami", "--data-dir", str(tmp_path / "alice"), "--name", "alice", "--json")
    assert json.loads(as_json.stdout)["envelope_key"] is None


def test_whoami_still_links_when_the_store_cannot_be_read_and_says_why(tmp_path: Path) -> None:
    # A store keyed otherwise than whoami assumes (here: other Argon2 parameters).
    asyncio.run(make_node_dir(tmp_path / "alice", FAST_KDF))
    result = run("whoami", "--data-dir", str(tmp_path / "alice"), "--name", "alice", "--no-qr")
    assert result.exit_code == 0, result.output
    (note,) = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert "the envelope key could not be read" in note and "Traceback" not in result.output
    link = decode_invite_link(result.stdout.splitlines()[-1].removeprefix("link: "), now_ms=NOW)
    assert link.envelope_key is None
