"""The one-shot commands for scripts, against a running chat (its control socket) and
without one (they run the node themselves)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RelayProcess
from tests.e2e.test_chat import SCRIPT, accept, chat, quit_chat

DEADLINE = 60.0


async def oneshot(
    tmp: Path, who: str, *args: str, passphrase: bool = False
) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "QUICNPROTOCHAT_PASSPHRASE"}
    if passphrase:
        env["QUICNPROTOCHAT_PASSPHRASE"] = f"{who} passphrase"
    proc = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        args[0],
        "--data-dir",
        str(tmp / who),
        *args[1:],
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(DEADLINE):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def as_json(tmp: Path, who: str, *args: str, passphrase: bool = False) -> dict[str, Any]:
    code, out, err = await oneshot(tmp, who, *args, "--json", passphrase=passphrase)
    assert code == 0, err
    [line] = out.splitlines()
    answer: dict[str, Any] = json.loads(line)
    assert answer["ok"] is True
    return answer


async def test_scripts_drive_a_running_chat_then_the_node_alone(
    tmp_path: Path, relay_process: RelayProcess
) -> None:
    async with (
        chat(tmp_path, "alice", relay_process) as alice,
        chat(tmp_path, "bob", relay_process) as bob,
    ):
        await bob.type_line(f"/dm {await alice.link()}")
        await accept(alice)
        await alice.expect(r"\* bob invited you")

        # No passphrase: the running chat answers through its control socket.
        sent = await as_json(tmp_path, "alice", "send", "bob", "from a script")
        [delivery] = sent["message"]["deliveries"]
        assert delivery["state"] == "direct" and delivery["recipient_name"] == "bob"
        await bob.expect(r"alice: from a script$")

        await bob.type_line("answer for the script \x1b[31m")
        await alice.expect(r"bob: answer for the script")
        received = await as_json(tmp_path, "alice", "recv")
        assert [m["text"] for m in received["messages"]] == ["answer for the script \x1b[31m"]
        assert (await as_json(tmp_path, "alice", "recv"))["messages"] == []  # read now

        # Text output makes a peer's escape visible; --json kept it exact (above).
        code, out, _ = await oneshot(tmp_path, "alice", "history", "bob", "-n", "5")
        assert code == 0 and "\x1b" not in out and "answer for the script" in out

        convs = (await as_json(tmp_path, "alice", "conversations"))["conversations"]
        assert {c["kind"] for c in convs} == {"notepad", "dm"}
        contacts = (await as_json(tmp_path, "alice", "contacts"))["contacts"]
        assert [c["name"] for c in contacts] == ["bob"]

        made = await as_json(tmp_path, "alice", "create-group", "scripted")
        group = made["conversation"]["id"]
        await as_json(tmp_path, "alice", "invite", group, "bob")
        await bob.expect(r"\* alice invited you to scripted")

        # Failures: one ERROR line, exit 1; usage errors exit 2.
        code, out, err = await oneshot(tmp_path, "alice", "send", "nobody", "hi")
        assert (code, out) == (1, "") and err.startswith("ERROR: ") and len(err.splitlines()) == 1
        code, _, err = await oneshot(tmp_path, "alice", "send", "bob")
        assert code == 2 and "Traceback" not in err

        await quit_chat(alice)

    # Nothing runs on alice's directory now: the command runs her node itself.
    history = await as_json(tmp_path, "alice", "history", "bob", passphrase=True)
    assert [m["text"] for m in history["messages"]] == [
        "from a script",
        "answer for the script \x1b[31m",
    ]
    code, _, err = await oneshot(tmp_path, "alice", "history", "bob")
    assert code == 1 and err.startswith("ERROR: ")  # and without the passphrase, it says so


async def test_the_control_socket_refuses_another_users_process(
    tmp_path: Path, relay_process: RelayProcess
) -> None:
    async with chat(tmp_path, "alice", relay_process):
        path = tmp_path / "alice" / "control.sock"
        assert path.stat().st_mode & 0o777 == 0o600
        # Loosen the modes as a careless admin might: the credentials check still refuses.
        os.chmod(tmp_path / "alice", 0o755)
        os.chmod(path, 0o666)
        # Another user's process (uid 65534) on the system's interpreter, which that user may
        # run. pytest's temporary directories are 0700: the socket is reached through a
        # descriptor of its directory handed to the process. It only listens: the node answers
        # a stranger's connection before reading anything from it, then closes.
        directory = os.open(tmp_path / "alice", os.O_PATH | os.O_DIRECTORY)
        system_python = Path("/usr/bin/python3")
        setpriv = shutil.which("setpriv")
        if not await asyncio.to_thread(system_python.exists) or setpriv is None:
            pytest.skip("needs /usr/bin/python3 and setpriv: apt-get install -y python3 util-linux")
        client = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "s.settimeout(20)\n"
            f"s.connect('/proc/self/fd/{directory}/control.sock')\n"
            "data = b''\n"
            "while not data.endswith(b'\\n'):\n"
            "    chunk = s.recv(4096)\n"
            "    if not chunk: break\n"
            "    data += chunk\n"
            "sys.stdout.buffer.write(data)\n"
        )
        other = await asyncio.create_subprocess_exec(
            setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
            str(system_python), "-I", "-c", client,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            pass_fds=(directory,), cwd="/",
        )  # fmt: skip
        async with asyncio.timeout(DEADLINE):
            answer, err = await other.communicate()
        os.close(directory)
        assert other.returncode == 0, err.decode()
        assert json.loads(answer) == {"ok": False, "error": "refused: another user's process"}
