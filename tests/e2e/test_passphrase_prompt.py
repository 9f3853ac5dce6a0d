"""The passphrase prompt, on a real terminal: a pseudo-terminal that is the command's
controlling terminal (as in a person's shell), so ``getpass`` talks to it through /dev/tty."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("quicnprotochat")
DEADLINE = 60.0  # seconds; opening a data directory runs Argon2


class Terminal:
    """A command running on a pseudo-terminal of its own, read and typed into like a person."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the pty is its controlling terminal and stdio
            os.execve(str(SCRIPT), [str(SCRIPT), *args], env)
        self.pid, self.fd = pid, fd
        self.screen = ""
        self.status: int | None = None

    def expect(self, text: str) -> None:
        """Read until ``text`` has appeared, within the deadline."""
        deadline = time.monotonic() + DEADLINE
        while text not in self.screen:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never appeared; the terminal shows {self.screen!r}"
            if not self._read(left):
                raise AssertionError(f"exited before {text!r}; the terminal shows {self.screen!r}")

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO: the other side closed
            return False
        self.screen += chunk.decode(errors="replace")
        return bool(chunk)

    def wait(self) -> int:
        """The exit status, after reading everything the command wrote."""
        deadline = time.monotonic() + DEADLINE
        while self._read(max(0.0, deadline - time.monotonic())) and time.monotonic() < deadline:
            pass
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)

    def stop(self) -> int:
        os.kill(self.pid, signal.SIGTERM)
        return self.wait()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "QUICNPROTOCHAT_PASSPHRASE"}
    env["TERM"] = "dumb"
    return env


def _node_run(data_dir: Path) -> Terminal:
    return Terminal(
        "node", "run", "--name", "ann", "--data-dir", str(data_dir), "--no-mdns", "--no-dht",
        env=_env(),
    )  # fmt: skip


def test_a_new_data_directory_asks_twice_and_refuses_two_different_passphrases(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "ann"
    term = _node_run(data_dir)
    term.expect(f"New passphrase for {data_dir}: ")
    term.type("first try")
    term.expect("The same passphrase again: ")
    term.type("second try")
    assert term.wait() == 1
    assert "ERROR: the two passphrases differ; nothing was created" in term.screen
    assert "first try" not in term.screen and "second try" not in term.screen
    assert "Traceback" not in term.screen
    assert not data_dir.exists()


def test_the_prompt_does_not_echo_and_opens_what_it_created(tmp_path: Path) -> None:
    data_dir = tmp_path / "ann"
    term = _node_run(data_dir)
    term.expect(f"New passphrase for {data_dir}: ")
    term.type("correct horse")
    term.expect("The same passphrase again: ")
    term.type("correct horse")
    term.expect("listening on ")
    assert "new identity: " in term.screen
    assert term.stop() == 0
    assert "correct horse" not in term.screen
    assert (data_dir / "identity.key").exists()

    # Opening it again asks once; the right passphrase opens it, without echo.
    term = Terminal("whoami", "--data-dir", str(data_dir), "--name", "ann", "--no-qr", env=_env())
    term.expect(f"Passphrase for {data_dir}: ")
    term.type("correct horse")
    assert term.wait() == 0
    assert "fingerprint: " in term.screen and "link: qpc://" in term.screen
    assert "New passphrase" not in term.screen and "correct horse" not in term.screen

    term = Terminal("whoami", "--data-dir", str(data_dir), "--name", "ann", "--no-qr", env=_env())
    term.expect(f"Passphrase for {data_dir}: ")
    term.type("wrong horse")
    assert term.wait() == 1
    assert f"ERROR: {data_dir / 'identity.key'}: wrong passphrase" in term.screen
    assert "wrong horse" not in term.screen


@pytest.mark.parametrize("source", ["environment", "file"])
def test_a_given_passphrase_is_used_without_asking_even_at_a_terminal(
    tmp_path: Path, source: str
) -> None:
    data_dir = tmp_path / "ann"
    env = _env()
    args: list[str] = []
    if source == "environment":
        env["QUICNPROTOCHAT_PASSPHRASE"] = "given"
    else:
        secret = tmp_path / "secret"
        secret.write_text("given\n")
        secret.chmod(0o600)
        args = ["--passphrase-file", str(secret)]
    term = Terminal(
        "node", "run", "--name", "ann", "--data-dir", str(data_dir), "--no-mdns", "--no-dht",
        *args, env=env,
    )  # fmt: skip
    term.expect("listening on ")
    assert term.stop() == 0
    assert "passphrase" not in term.screen.lower()
    # And it is the passphrase the directory was made with.
    env = _env() | {"QUICNPROTOCHAT_PASSPHRASE": "given"}
    term = Terminal("whoami", "--data-dir", str(data_dir), "--name", "ann", "--no-qr", env=env)
    assert term.wait() == 0
    assert "fingerprint: " in term.screen
