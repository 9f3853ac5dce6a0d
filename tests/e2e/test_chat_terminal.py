"""``quicnprotochat chat`` on a real pseudo-terminal: the prompt_toolkit front end.

A line that arrives while someone is typing prints above the prompt and the half-typed line
survives it; Tab completes commands and names; Ctrl-D leaves cleanly.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import struct
import termios
from pathlib import Path

from tests.conftest import RelayProcess
from tests.e2e.test_chat import SCRIPT, chat

DEADLINE = 30.0
# Terminal control the prompt writes (cursor moves, colors, mode switches), to read past it.
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[=>NOP()]\S?")


class Terminal:
    def __init__(self, proc: asyncio.subprocess.Process, master: int) -> None:
        self.proc = proc
        self.master = master
        self.screen = ""
        self._looked = 0
        self._data = asyncio.Event()
        asyncio.get_running_loop().add_reader(master, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.master, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            asyncio.get_running_loop().remove_reader(self.master)
            return
        self.screen += ANSI.sub("", chunk.decode("utf-8", errors="replace"))
        self._data.set()

    async def expect(self, pattern: str) -> re.Match[str]:
        try:
            async with asyncio.timeout(DEADLINE):
                while True:
                    match = re.compile(pattern).search(self.screen, self._looked)
                    if match:
                        self._looked = match.end()
                        return match
                    self._data.clear()
                    await self._data.wait()
        except TimeoutError:
            raise AssertionError(f"no {pattern!r} on screen:\n{self.screen[-3000:]}") from None

    def type(self, keys: str) -> None:
        """Type ``keys``; what is expected next must appear after this point."""
        self._looked = len(self.screen)
        os.write(self.master, keys.encode())

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)


async def start_terminal(tmp: Path, name: str, relay: RelayProcess) -> Terminal:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    assert relay.address is not None and relay.identity is not None
    env = dict(
        os.environ,
        QUICNPROTOCHAT_PASSPHRASE=f"{name} passphrase",
        TERM="xterm-256color",
        PROMPT_TOOLKIT_NO_CPR="1",
    )
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        "chat",
        "--name",
        name,
        "--data-dir",
        str(tmp / name),
        "--listen",
        "127.0.0.1:0",
        "--no-dht",
        "--relay",
        f"{relay.address[0]}:{relay.address[1]}",
        "--relay-key",
        relay.identity.hex(),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    return Terminal(proc, master)


async def test_the_prompt_keeps_a_half_typed_line_completes_and_leaves_on_ctrl_d(
    tmp_path: Path, relay_process: RelayProcess
) -> None:
    alice = await start_terminal(tmp_path, "alice", relay_process)
    try:
        await alice.expect(r"type /help for commands")
        await alice.expect(r"\[notepad\]>")
        alice.type("/whoami\r")
        link = (await alice.expect(r"link: (qpc://[A-Za-z0-9_/:.-]+)")).group(1)

        async with chat(tmp_path, "bob", relay_process) as bob:
            await bob.type_line(f"/dm {link}")
            number = (await alice.expect(r"invitation (\d+) from")).group(1)
            alice.type(f"/join {number}\r")
            await alice.expect(r"\* bob invited you to a direct conversation")

            # Tab completes a command: "/memb" alone is no command at all.
            alice.type("/memb")
            await alice.expect(r"/memb")
            alice.type("\t")
            await alice.expect(r"ers")
            alice.type("\r")
            await alice.expect(r"you\s+\S+")  # the notepad's one member
            # And a conversation's name.
            alice.type("/switch bo")
            await alice.expect(r"bo")
            alice.type("\t\r")
            await alice.expect(r"now in bob")
            await alice.expect(r"\[bob\]>")

            # Half a line typed, then a message arrives: it prints above, the line survives.
            alice.type("hel")
            await alice.expect(r"hel")
            await bob.type_line("interrupting you")
            await alice.expect(r"bob: interrupting you")
            await alice.expect(r"\[bob\]>\s*hel")
            alice.type("lo there\r")
            await bob.expect(r"alice: hello there$")
            await alice.expect(r"hello there")
            # Ctrl-D at the next prompt (between prompts the terminal is in cooked mode, and
            # its line discipline would take the key for itself).
            await alice.expect(r"\[bob\]>")

            alice.type("\x04")  # Ctrl-D
            async with asyncio.timeout(DEADLINE):
                assert await alice.proc.wait() == 0
    finally:
        if alice.proc.returncode is None:
            alice.proc.terminate()
            await alice.proc.wait()
        alice.close()
