"""``quicnprotochat chat`` as people use it: separate processes, a real relay, typed lines.

These drive the plain-line mode (stdin is a pipe); ``test_chat_terminal.py`` drives the
prompt on a real pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from tests.conftest import RelayProcess

SCRIPT = Path(sys.executable).with_name("quicnprotochat")
LINE_DEADLINE = 30.0


class ChatProcess:
    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.lines: list[str] = []
        self._seen = 0

    async def expect(self, pattern: str) -> re.Match[str]:
        """Read stdout lines until one matches, within the deadline (lines read before and not
        matched are kept, and a later expect does not look at them again)."""
        assert self.proc.stdout is not None
        for n in range(self._seen, len(self.lines)):
            if match := re.search(pattern, self.lines[n]):
                self._seen = n + 1
                return match
        self._seen = len(self.lines)
        try:
            async with asyncio.timeout(LINE_DEADLINE):
                while True:
                    raw = await self.proc.stdout.readline()
                    if not raw:
                        raise AssertionError(f"{self.name} exited before {pattern!r}")
                    line = raw.decode().rstrip("\n")
                    self.lines.append(line)
                    self._seen = len(self.lines)
                    if match := re.search(pattern, line):
                        return match
        except TimeoutError:
            shown = "\n".join(self.lines[-30:])
            raise AssertionError(f"{self.name}: no {pattern!r} in:\n{shown}") from None

    async def type_line(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()

    async def link(self) -> str:
        await self.type_line("/whoami")
        return (await self.expect(r"^link: (qpc://\S+)$")).group(1)


@contextlib.asynccontextmanager
async def chat(
    tmp: Path, name: str, relay: RelayProcess | None = None
) -> AsyncIterator[ChatProcess]:
    env = dict(os.environ, QUICNPROTOCHAT_PASSPHRASE=f"{name} passphrase")
    args = ["--no-dht"]
    if relay is not None:
        assert relay.address is not None and relay.identity is not None
        args += ["--relay", f"{relay.address[0]}:{relay.address[1]}"]
        args += ["--relay-key", relay.identity.hex()]
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        "chat",
        "--name",
        name,
        "--data-dir",
        str(tmp / name),
        "--listen",
        "127.0.0.1:0",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    process = ChatProcess(proc, name)
    try:
        await process.expect(r"^type /help")
        yield process
    finally:
        if proc.returncode is None:
            proc.terminate()
            async with asyncio.timeout(15):
                await proc.wait()


async def accept(process: ChatProcess) -> None:
    """Accept the stranger's invitation that is (or will be) announced."""
    number = (await process.expect(r"invitation (\d+) from .*: /join \d+ to accept")).group(1)
    await process.type_line(f"/join {number}")


async def quit_chat(process: ChatProcess) -> None:
    await process.type_line("/quit")
    async with asyncio.timeout(LINE_DEADLINE):
        assert await process.proc.wait() == 0


async def test_dm_both_ways_then_a_group_and_history_after_a_return(
    tmp_path: Path, relay_process: RelayProcess
) -> None:
    async with (
        chat(tmp_path, "alice", relay_process) as alice,
        chat(tmp_path, "bob", relay_process) as bob,
    ):
        alice_link = await alice.link()
        await bob.type_line(f"/dm {alice_link}")
        await bob.expect(r"now in alice \(dm\)")
        # Bob is a stranger to alice: his invitation waits for her consent.
        await accept(alice)
        await alice.expect(r"\* bob invited you to a direct conversation")
        await bob.type_line("hello alice")
        await alice.expect(r"\d\d:\d\d bob: hello alice$")  # /join switched to it
        await alice.type_line("/switch bob")
        await alice.expect(r"now in bob")
        await alice.type_line("hi bob")
        await bob.expect(r"\d\d:\d\d alice: hi bob$")

        # A third person joins a named group.
        async with chat(tmp_path, "carol", relay_process) as carol:
            carol_link = await carol.link()
            bob_link = await bob.link()
            await alice.type_line("/group trio")
            await alice.expect(r"now in trio \(group\)")
            await alice.type_line(f"/invite {bob_link}")
            await alice.expect(r"invited bob")
            await alice.type_line(f"/invite {carol_link}")
            await alice.expect(r"invited carol")
            await accept(carol)
            await carol.expect(r"\* alice invited you to ")
            await carol.type_line("/switch trio")
            await carol.expect(r"now in trio")
            await carol.type_line("hi all")
            await alice.expect(r"\d\d:\d\d carol: hi all$")
            await bob.expect(r"\[trio\] carol: hi all$")
            await quit_chat(carol)

        # Carol is away: what is said waits for her at the relay.
        await alice.type_line("while carol is away")
        async with chat(tmp_path, "carol", relay_process) as carol:
            await carol.type_line("/switch trio")
            await carol.type_line("/history")
            await carol.expect(r"alice: while carol is away$")
            mark = len(carol.lines)
            await carol.type_line("/members")
            await carol.expect(r"^alice  .*\[committer\]$")
            await carol.type_line("/help")  # its last line marks the end of the member list
            await carol.expect(r"^a line starting with //")
            listed = {line.split("  ")[0] for line in carol.lines[mark:]}
            assert {"you", "alice", "bob"} <= listed
            await quit_chat(carol)
        await quit_chat(alice)
        await quit_chat(bob)

    # At rest, nothing said, no name and nothing typed is readable in any data directory.
    secrets = [b"hello alice", b"hi bob", b"while carol is away", b"trio", b"/switch", b"carol"]
    for who in ("alice", "bob", "carol"):
        for path in (tmp_path / who).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for secret in secrets:
                    for form in (secret, secret.decode().encode("utf-16-le")):
                        assert form not in data, f"{secret!r} readable in {path}"


async def test_commands_are_never_sent_and_escapes_arrive_inert(
    tmp_path: Path, relay_process: RelayProcess
) -> None:
    async with (
        chat(tmp_path, "alice", relay_process) as alice,
        chat(tmp_path, "bob", relay_process) as bob,
    ):
        await bob.type_line(f"/dm {await alice.link()}")
        await accept(alice)
        await alice.expect(r"invited you")
        await alice.type_line("/switch bob")
        await alice.expect(r"now in bob")

        await alice.type_line("/frobnicate the peer")
        await alice.expect(r"ERROR: unknown command /frobnicate \(nothing was sent")
        await alice.type_line("//literal slash")
        await bob.expect(r"alice: /literal slash$")

        # ESC, CSI colors, an OSC 52 clipboard write, BEL, CR and a right-to-left override.
        hostile = "\x1b[31mred\x1b[0m \x1b]52;c;ZXZpbA==\x07 bell\x07 cr\rX \u202eevil"
        await alice.type_line(hostile)
        match = await bob.expect(r"alice: .*red.*evil")
        shown = match.string
        for raw in ("\x1b", "\x07", "\r", "\u202e"):
            assert raw not in shown
        assert "52;c;ZXZpbA==" in shown  # shown as text, never run

        # A petname is bob's name here, whatever bob calls himself.
        await alice.type_line("/petname bob Robert")
        await alice.expect(r"is now Robert here")
        await bob.type_line("still me")
        await alice.expect(r"\d\d:\d\d Robert: still me$")


async def test_a_second_invite_of_the_same_person_is_the_same_dm(
    tmp_path: Path, relay_process: RelayProcess
) -> None:
    async with (
        chat(tmp_path, "alice", relay_process) as alice,
        chat(tmp_path, "bob", relay_process) as bob,
    ):
        link = await alice.link()
        await bob.type_line(f"/dm {link}")
        first = (await bob.expect(r"now in alice")).string
        await bob.type_line(f"/dm {link}")
        await bob.expect(r"now in alice")
        await bob.type_line("/list")
        await bob.expect(r"dm\s+alice")
        await bob.type_line("/help")
        await bob.expect(r"^/quit")
        listed = [line for line in bob.lines if re.search(r"\bdm\s+alice\b", line)]
        assert len(listed) == 1, (first, listed)
