"""A link from ``whoami`` is all ``node run --invite`` needs to start a chat; a tampered one is
refused before anything starts."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

from node.core.identity import Identity
from node.core.invite_link import InviteLink, encode_invite_link
from tests.e2e.test_node_chat import LINE_DEADLINE, SCRIPT, node_process


async def cli(tmp: Path, node: str, *args: str) -> tuple[int, str, str]:
    env = dict(os.environ, QUICNPROTOCHAT_PASSPHRASE=f"{node} passphrase")
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(LINE_DEADLINE):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_bob_invites_alice_by_her_link_and_they_chat(tmp_path: Path) -> None:
    async with node_process(tmp_path, "alice") as alice:
        key = (await alice.expect(r"identity: ([0-9a-f]{64})")).group(1)
        address = (await alice.expect(r"listening on (\S+)")).group(1)
        code, out, err = await cli(
            tmp_path,
            "alice",
            "whoami",
            "--data-dir",
            str(tmp_path / "alice"),
            "--name",
            "alice",
            "--address",
            address,
            "--json",
        )
        assert code == 0, err
        me = json.loads(out)
        assert me["identity"] == key
        async with node_process(tmp_path, "bob", "--no-mdns", "--invite", me["link"]) as bob:
            await bob.expect(r"group created with alice \(ciphersuite X-Wing\)$")
            await bob.type_line("hello by link")
            # bob is a stranger to alice: his invitation waits for her consent, and his
            # message waits with it.
            invitation = (await alice.expect(r"^invitation (\d+) from ")).group(1)
            await alice.type_line(f"/accept {invitation}")
            await alice.expect(r"\] hello by link$")
            await alice.type_line("hi bob")
            await bob.expect(r"^\[alice\] hi bob$")


async def test_a_tampered_link_stops_node_run_with_one_error_line(tmp_path: Path) -> None:
    alice = Identity.from_seed(bytes(range(32)))
    good = encode_invite_link(InviteLink(alice.public_key, "alice", (("127.0.0.1", 9),)), alice)
    raw = bytearray(base64.urlsafe_b64decode(good[len("qpc://v2/") :] + "=="))
    raw[-1] ^= 1  # the last byte of the signature
    tampered = "qpc://v2/" + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    for option in ("--invite", "--peer"):
        code, _, err = await cli(
            tmp_path,
            "mallory",
            "node",
            "run",
            "--name",
            "x",
            "--data-dir",
            str(tmp_path / "never"),
            option,
            tampered,
        )
        assert code == 1
        assert err.splitlines() == [
            f"ERROR: {option}: the invite link was altered: its signature does not match its "
            "identity key"
        ]
    assert not (tmp_path / "never").exists()  # refused before anything was created
