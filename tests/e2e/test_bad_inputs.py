"""Every command, run as a person would (a subprocess of the console script), with inputs that
are wrong: one ``ERROR: ...`` line naming the option, file or address and status 1, or click's
usage form and status 2. Never a traceback.

Also: ``-h`` and ``--version`` on every command and subcommand."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from node.app.cli import main
from tests.conftest import LOOPBACK, RelayProcess

SCRIPT = Path(sys.executable).with_name("quicnprotochat")
PASS = "bad inputs passphrase"
RUN_DEADLINE = 60.0  # seconds for one command (a few of them run Argon2 first)
NOT_HERE = "192.0.2.1"  # TEST-NET-1 (RFC 5737): on no machine's interface
OTHER_KEY = "ab" * 32
NO_PASSPHRASE = "unset"

pytestmark = pytest.mark.slow


@dataclass
class World:
    """What the bad inputs refer to: a real node directory, a port in use, a relay, files."""

    tmp: Path
    node: Path  # a data directory a node ran in
    busy: int  # a UDP port on 127.0.0.1 that a socket holds
    relay_address: str
    relay_key: str

    def fill(self, text: str) -> str:
        return text.format(
            tmp=self.tmp,
            node=self.node,
            busy=self.busy,
            relay=self.relay_address,
            relay_key=self.relay_key,
            other_key=OTHER_KEY,
            not_here=NOT_HERE,
        )


def _start_node(data_dir: Path) -> None:
    """Run ``node run`` until it listens, then stop it: a real, whole data directory."""
    proc = subprocess.Popen(
        [str(SCRIPT), "node", "run", "--name", "n", "--data-dir", str(data_dir), "--no-mdns",
         "--no-dht"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, QUICNPROTOCHAT_PASSPHRASE=PASS, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + RUN_DEADLINE
    try:
        while b"listening on" not in seen:
            ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
            assert ready, f"node run did not start listening: {seen!r}"
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, f"node run exited: {proc.stderr.read() if proc.stderr else b''!r}"
            seen += chunk
    finally:
        proc.terminate()
        proc.communicate(timeout=RUN_DEADLINE)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("bad-inputs")
    node = tmp / "node"
    _start_node(node)
    broken = tmp / "broken"
    shutil.copytree(node, broken)
    (broken / "node.db").unlink()
    (tmp / "empty").mkdir()
    (tmp / "a-file").write_text("not a directory\n")
    (tmp / "not-a-backup").write_bytes(b"QPCB but not really")
    (tmp / "report.json").write_text("{not json")
    shared = tmp / "shared-pass"
    shared.write_text(PASS + "\n")
    shared.chmod(0o644)
    empty_pass = tmp / "empty-pass"
    empty_pass.write_text("")
    empty_pass.chmod(0o600)
    for name, text in {
        "unknown-key.toml": "max_per_mailboxes = 5\n",
        "wrong-type.toml": 'max_frame = "big"\n',
        "zero.toml": "call_burst = 0\n",
        "listen-type.toml": "listen = 7700\n",
        "not-toml.toml": "max_frame = \n",
        "scenario.toml": "name = 'x'\n",
        "limits-unknown.toml": "[limits]\nmax_seens = 5\n",
        "limits-type.toml": '[limits]\nmax_seen = "many"\n',
    }.items():
        (tmp / name).write_text(text)
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind((LOOPBACK, 0))
    relay = RelayProcess(tmp / "relay", passphrase="relay passphrase")
    relay.start()
    try:
        assert relay.address is not None and relay.identity is not None
        yield World(
            tmp=tmp,
            node=node,
            busy=holder.getsockname()[1],
            relay_address=f"{relay.address[0]}:{relay.address[1]}",
            relay_key=relay.identity.hex(),
        )
    finally:
        relay.stop()
        holder.close()


RUN = "node run --name n --data-dir {tmp}/new --no-mdns --no-dht"
RUN_NODE = "node run --name n --data-dir {node} --no-mdns --no-dht"
# (id, arguments, passphrase to set (None: the right one), exit status, text the error names)
CASES: list[tuple[str, str, str | None, int, str]] = [
    ("unknown-option", "--bogus", None, 2, "No such option '--bogus'"),
    ("unknown-command", "frobnicate", None, 2, "No such command 'frobnicate'"),
    # node run
    ("run-no-name", "node run --data-dir {tmp}/new", None, 2, "'--name'"),
    ("run-listen-text", RUN + " --listen nonsense", None, 2, "--listen"),
    ("run-listen-busy", RUN + " --listen 127.0.0.1:{busy}", None, 1,
     "--listen 127.0.0.1:{busy}: that port is in use"),
    ("run-listen-not-here", RUN + " --listen {not_here}:7000", None, 1,
     "--listen {not_here}:7000: that is not an address of this machine"),
    ("run-dht-port-busy", "node run --name n --data-dir {tmp}/new --no-mdns --dht-port {busy}",
     None, 1, "--dht-port 127.0.0.1:{busy}: that port is in use"),
    ("run-dht-port-range", RUN + " --dht-port 70000", None, 2, "'--dht-port'"),
    # chat and web run their node the same way, with the same errors
    ("chat-listen-busy", "chat --name n --data-dir {tmp}/new --no-mdns --no-dht"
     " --listen 127.0.0.1:{busy}", None, 1, "--listen 127.0.0.1:{busy}: that port is in use"),
    ("chat-dht-port-busy", "chat --name n --data-dir {tmp}/new --no-mdns --dht-port {busy}",
     None, 1, "--dht-port 127.0.0.1:{busy}: that port is in use"),
    ("run-limits-unknown", RUN + " --limits {tmp}/limits-unknown.toml", None, 1,
     "unknown limit 'max_seens' (did you mean 'max_seen'?)"),
    ("run-limits-type", RUN + " --limits {tmp}/limits-type.toml", None, 1,
     "limits.max_seen must be a number"),
    ("run-limits-missing", RUN + " --limits {tmp}/nowhere.toml", None, 1, "nowhere.toml"),
    ("run-mdns-interface-not-here", "node run --name n --data-dir {tmp}/new --no-dht "
     "--mdns-interface {not_here}", None, 1,
     "--mdns-interface {not_here}: that is not an address of this machine"),
    ("run-mdns-interface-text", RUN + " --mdns-interface eth0", None, 2, "--mdns-interface"),
    ("run-wildcard-without-interface", "node run --name n --data-dir {tmp}/new --no-dht "
     "--listen 0.0.0.0:0", None, 2, "--mdns-interface"),
    ("run-bootstrap-text", RUN + " --bootstrap nowhere", None, 2, "--bootstrap"),
    ("run-relay-key-text", RUN + " --relay 127.0.0.1:1 --relay-key xyz", None, 2, "--relay-key"),
    ("run-relay-without-key", RUN + " --relay 127.0.0.1:1", None, 2, "--relay-key"),
    ("run-relay-address-text", RUN + " --relay nowhere --relay-key {other_key}", None, 2,
     "--relay"),
    ("run-relay-wrong-key", RUN_NODE + " --relay {relay} --relay-key {other_key}", None, 1,
     "the relay at {relay} did not present the identity key given"),
    ("run-invite-text", RUN + " --invite garbage", None, 2, "--invite"),
    ("run-invite-link", RUN + " --invite qpc://v1/AAAA", None, 1, "--invite: "),
    ("run-peer-key", RUN + " --peer bob=0123", None, 2, "--peer"),
    ("run-data-dir-file", "node run --name n --data-dir {tmp}/a-file", None, 2, "is a file"),
    ("run-data-dir-broken", "node run --name n --data-dir {tmp}/broken --no-mdns --no-dht",
     None, 1, "{tmp}/broken/node.db is missing"),
    ("run-wrong-passphrase", RUN_NODE, "not it", 1,
     "{node}/identity.key: wrong passphrase, or the file was altered"),
    ("run-no-passphrase", RUN_NODE, NO_PASSPHRASE, 1, "no passphrase for {node}"),
    ("run-passphrase-file-shared", RUN_NODE + " --passphrase-file {tmp}/shared-pass",
     NO_PASSPHRASE, 1, "--passphrase-file {tmp}/shared-pass is open to other users (mode 644)"),
    ("run-passphrase-file-empty", RUN_NODE + " --passphrase-file {tmp}/empty-pass",
     NO_PASSPHRASE, 1, "--passphrase-file {tmp}/empty-pass is empty"),
    ("run-passphrase-file-missing", RUN_NODE + " --passphrase-file {tmp}/nothing-here",
     NO_PASSPHRASE, 1, "--passphrase-file {tmp}/nothing-here: No such file or directory"),
    # peers, whoami, verify
    ("peers-missing-dir", "peers --data-dir {tmp}/nothing-here", None, 2, "'--data-dir'"),
    ("peers-no-node", "peers --data-dir {tmp}/empty", None, 1, "{tmp}/empty holds no node"),
    ("peers-wrong-passphrase", "peers --data-dir {node}", "not it", 1, "wrong passphrase"),
    ("whoami-no-identity", "whoami --data-dir {tmp}/empty --name n", None, 1,
     "no identity key at {tmp}/empty/identity.key"),
    ("whoami-address-text", "whoami --data-dir {node} --name n --address nowhere", None, 2,
     "--address"),
    ("whoami-relay-key-text", "whoami --data-dir {node} --name n --relay 127.0.0.1:1 "
     "--relay-key xyz", None, 2, "--relay"),
    ("whoami-wrong-passphrase", "whoami --data-dir {node} --name n", "not it", 1,
     "{node}/identity.key: wrong passphrase"),
    ("verify-peer-text", "verify --data-dir {node} garbage", None, 2, "PEER"),
    ("verify-data-dir-file", "verify --data-dir {tmp}/a-file {other_key}", None, 2, "is a file"),
    # doctor, backup, restore
    ("doctor-no-node", "doctor --data-dir {tmp}/empty", None, 1, "{tmp}/empty holds no node"),
    ("doctor-data-dir-file", "doctor --data-dir {tmp}/a-file", None, 1,
     "{tmp}/a-file is not a directory"),
    ("doctor-broken", "doctor --data-dir {tmp}/broken", None, 1, "{tmp}/broken/node.db"),
    ("backup-out-exists", "backup --data-dir {node} --out {tmp}/a-file", None, 1,
     "{tmp}/a-file exists"),
    ("backup-no-node", "backup --data-dir {tmp}/empty --out {tmp}/new.bak", None, 1,
     "{tmp}/empty holds no node"),
    ("restore-missing", "restore --from {tmp}/nothing-here --data-dir {tmp}/new", None, 1,
     "{tmp}/nothing-here: No such file or directory"),
    ("restore-not-a-backup", "restore --from {tmp}/not-a-backup --data-dir {tmp}/new", None, 1,
     "{tmp}/not-a-backup: not a quicnprotochat backup"),
    # relay
    ("relay-listen-busy", "relay run --data-dir {tmp}/r --listen 127.0.0.1:{busy}", None, 1,
     "--listen 127.0.0.1:{busy}: that port is in use"),
    ("relay-listen-not-here", "relay run --data-dir {tmp}/r --listen {not_here}:7700", None, 1,
     "that is not an address of this machine"),
    ("relay-listen-text", "relay run --data-dir {tmp}/r --listen nonsense", None, 2, "--listen"),
    ("relay-config-missing", "relay run --config {tmp}/nothing.toml", None, 1,
     "--config {tmp}/nothing.toml: No such file or directory"),
    ("relay-config-unknown-key", "relay run --config {tmp}/unknown-key.toml", None, 1,
     "{tmp}/unknown-key.toml: unknown key 'max_per_mailboxes'"),
    ("relay-config-wrong-type", "relay run --config {tmp}/wrong-type.toml", None, 1,
     "{tmp}/wrong-type.toml: max_frame must be a positive int"),
    ("relay-config-zero", "relay run --config {tmp}/zero.toml", None, 1,
     "{tmp}/zero.toml: call_burst must be a positive int"),
    ("relay-config-listen-type", "relay run --config {tmp}/listen-type.toml", None, 1,
     "{tmp}/listen-type.toml: listen must be a string"),
    ("relay-config-not-toml", "relay run --config {tmp}/not-toml.toml", None, 1,
     "--config {tmp}/not-toml.toml: not valid TOML"),
    ("relay-data-dir-file", "relay run --data-dir {tmp}/a-file", None, 2, "is a file"),
    ("relay-no-passphrase", "relay run --data-dir {tmp}/r", NO_PASSPHRASE, 1,
     "QUICNPROTOCHAT_RELAY_PASSPHRASE"),
    # sim, demo
    ("sim-no-scenario", "sim run no-such-scenario", None, 1, "no scenario 'no-such-scenario'"),
    ("sim-bad-scenario", "sim run {tmp}/scenario.toml", None, 1, "scenario.toml"),
    ("sim-param-text", "sim run calibration --param garbage", None, 1, "--param"),
    ("sim-param-unknown", "sim run calibration --param nosuch=1", None, 1, "nosuch"),
    ("sim-sweep-seeds", "sim sweep calibration --seeds abc", None, 1, "--seeds"),
    ("sim-sweep-dask", "sim sweep calibration --seeds 1..1 --dask nonsense://x", None, 1,
     "--dask nonsense://x"),
    ("sim-compare-missing", "sim compare {tmp}/nothing {tmp}/nothing", None, 2, "RUN_A"),
    ("sim-compare-not-json", "sim compare {tmp}/report.json {tmp}/report.json", None, 1,
     "{tmp}/report.json"),
    ("demo-unknown-option", "demo --bogus", None, 2, "No such option '--bogus'"),
]  # fmt: skip


def run(world: World, args: str, passphrase: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, QUICNPROTOCHAT_RELAY_PASSPHRASE="relay passphrase")
    env["QUICNPROTOCHAT_PASSPHRASE"] = PASS if passphrase is None else passphrase
    if passphrase == NO_PASSPHRASE:
        del env["QUICNPROTOCHAT_PASSPHRASE"]
        del env["QUICNPROTOCHAT_RELAY_PASSPHRASE"]
    return subprocess.run(
        [str(SCRIPT), *world.fill(args).split()],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        cwd=world.tmp,
        timeout=RUN_DEADLINE,
    )


@pytest.mark.parametrize(
    ("args", "passphrase", "status", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_bad_input_is_one_line_or_a_usage_error_never_a_traceback(
    world: World, args: str, passphrase: str | None, status: int, names: str
) -> None:
    result = run(world, args, passphrase)
    shown = result.stdout + result.stderr
    assert "Traceback" not in shown
    assert result.returncode == status, shown
    if status == 1:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("ERROR: "), result.stderr
    else:
        assert result.stderr.startswith("Usage: "), result.stderr
        assert "\nError: " in result.stderr
    assert world.fill(names) in result.stderr


def _commands(group: click.Group, path: list[str]) -> Iterator[list[str]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield [*path, name]
        if isinstance(command, click.Group):
            yield from _commands(command, [*path, name])


ALL_COMMANDS = [[], *_commands(main, [])]


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=[" ".join(p) or "top" for p in ALL_COMMANDS])
def test_every_command_takes_dash_h_and_version(path: list[str]) -> None:
    runner = CliRunner()
    short = runner.invoke(main, [*path, "-h"])
    assert short.exit_code == 0, short.output
    assert short.output == runner.invoke(main, [*path, "--help"]).output
    assert short.output.startswith("Usage: ")
    assert "--version" in short.output
    version = runner.invoke(main, [*path, "--version"])
    assert version.exit_code == 0
    assert version.output.startswith("quicnprotochat ")


def test_the_version_is_the_installed_distributions() -> None:
    from importlib import metadata

    result = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout == f"quicnprotochat {metadata.version('quicnprotochat')}\n"
    assert result.stderr == ""
