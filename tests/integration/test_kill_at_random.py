"""Two nodes, each a process of its own (``tests/crash_node.py``), send numbered messages to each
other through direct QUIC and a real relay process while the test SIGKILLs one of them at
moments drawn from a seeded generator and restarts it on the same data directory.

The promise under test (DESIGN §5: at-least-once on the wire, exactly-once to the user): every
message whose ``send_text`` returned (the node took it, whether it went out or waits in the
outbox) is in the receiver's store exactly once at the end, ``on_message`` never fired twice
for one message, and nothing was shown that the store does not hold.

A node records a message and then announces it (``on_message``); a kill between the two leaves a
message in its history that was never announced live. The driver logs such a message as
"recovered" at the next start, and the test counts it as shown (once) and reports how often it
happened: a front end must treat history it has not announced as new.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from node.app.datadir import open_existing
from node.app.router import RelayInfo
from node.core.keyfile import FAST_KDF
from tests.conftest import RelayProcess
from tests.node_support import relay_info

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "crash_node.py"
NAMES = ("alice", "bob")
KILLS = 36
# The moment of each kill is the test's input: mostly a while after the victim said it was ready
# (it sends, receives, retries), sometimes while it is still starting (resuming its state).
KILL_DELAY = (0.0, 1.2)
KILL_WHILE_STARTING = 0.25
READY_DEADLINE = 30.0
SETTLE_DEADLINE = 40.0  # for everything taken to be shown once nobody is killed any more
# Generous relay allowances: what is under test is the nodes, not the relay's rate limits.
RELAY_CONFIG = """\
calls_per_second = 10000.0
call_burst = 10000
envelopes_per_mailbox_per_second = 10000.0
envelope_burst_per_mailbox = 10000
new_mailboxes_per_second = 10000.0
new_mailbox_burst = 10000
"""


@dataclass
class Events:
    """What one node's log says, whole lines only (a SIGKILL may tear the last one)."""

    attempted: set[int] = field(default_factory=set)
    accepted: dict[int, str] = field(default_factory=dict)  # number -> path or "queued"
    shown: Counter[str] = field(default_factory=Counter)  # text -> times on_message fired
    shown_ids: Counter[str] = field(default_factory=Counter)
    recovered: set[str] = field(default_factory=set)
    ready: int = 0

    @classmethod
    def read(cls, path: Path) -> Events:
        events = cls()
        if not path.exists():
            return events
        data = path.read_text()
        lines = data.splitlines()
        if lines and not data.endswith("\n"):
            lines.pop()  # torn by a kill
        for line in lines:
            _, *words = line.split()  # the first word is the time, for a person reading
            match words:
                case ["attempt", number]:
                    events.attempted.add(int(number))
                case ["accepted", number, how]:
                    events.accepted[int(number)] = how
                case ["ready"]:
                    events.ready += 1
                case ["shown", text, envelope_id]:
                    events.shown[text.replace("_", " ")] += 1
                    events.shown_ids[envelope_id] += 1
                case ["recovered", text, _]:
                    events.recovered.add(text.replace("_", " "))
                case _:
                    raise AssertionError(f"{path}: unreadable line {line!r}")
        return events


class Driver:
    """One node's process, restarted on its own data directory after each kill."""

    def __init__(self, root: Path, name: str, port: int, relay: RelayInfo) -> None:
        self.name, self.port, self.relay = name, port, relay
        self.data_dir = root / name
        self.log = root / f"{name}.events"
        self.stderr = root / f"{name}.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._ready_before = 0

    def start(self, *, send: bool = True) -> None:
        self.starts += 1
        # Not every start gets as far as "ready": some are killed on the way.
        self._ready_before = self.events().ready
        host, port = self.relay.address
        with self.stderr.open("ab") as err:
            err.write(f"--- start {self.starts}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(DRIVER),
                    str(self.data_dir),
                    "--name",
                    self.name,
                    "--port",
                    str(self.port),
                    "--relay",
                    f"{host}:{port}",
                    "--relay-key",
                    self.relay.identity.hex(),
                    "--log",
                    str(self.log),
                    *([] if send else ["--count", "0"]),
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=child_env(),
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait_ready(self) -> None:
        """Until this start of the node said it is ready (polling its log under a deadline)."""
        deadline = time.monotonic() + READY_DEADLINE
        while self.events().ready <= self._ready_before:
            assert self.crashed() is None, self.crashed()
            if time.monotonic() > deadline:
                assert self.proc is not None
                self.proc.send_signal(signal.SIGUSR1)  # its tasks' stacks, to its stderr
                self.proc.send_signal(signal.SIGUSR2)  # its threads' stacks
                time.sleep(0.5)  # for the dump to be written; the test fails either way
                tail = self.stderr.read_text()[-6000:]
                raise AssertionError(f"{self.name} did not start:\n{tail}")
            time.sleep(0.02)

    def crashed(self) -> str | None:
        """The tail of its stderr if the process ended by itself (it never should)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"{self.name} exited {self.proc.returncode}: {self.stderr.read_text()[-3000:]}"

    def events(self) -> Events:
        return Events.read(self.log)


def child_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path)


def make_pair(root: Path, relay: RelayInfo) -> dict[str, int]:
    """alice and bob in one group, each in its own data directory; returns their ports."""
    host, port = relay.address
    out = subprocess.run(
        [
            sys.executable,
            str(DRIVER),
            str(root),
            "--setup",
            "--relay",
            f"{host}:{port}",
            "--relay-key",
            relay.identity.hex(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=child_env(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ports: dict[str, int] = json.loads(out.stdout)
    return ports


def stored_texts(root: Path, name: str) -> Counter[str]:
    opened = open_existing(root / name, name.encode(), FAST_KDF)
    try:
        return Counter(m.text for m in opened.store.messages())
    finally:
        opened.store.close()


def all_taken_shown(drivers: dict[str, Driver]) -> bool:
    events = {name: d.events() for name, d in drivers.items()}
    for sender, receiver in (NAMES, NAMES[::-1]):
        got = events[receiver]
        if any(
            f"{sender} {n}" not in got.shown and f"{sender} {n}" not in got.recovered
            for n in events[sender].accepted
        ):
            return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_messages_taken_by_killed_nodes_are_shown_exactly_once(tmp_path: Path) -> None:
    seed = int(os.environ.get("QPC_KILL_SEED") or int.from_bytes(os.urandom(4), "big"))
    print(f"seed {seed}")  # QPC_KILL_SEED repeats a run's kill schedule
    rng = random.Random(seed)
    config = tmp_path / "relay.toml"
    config.write_text(RELAY_CONFIG)
    relay_process = RelayProcess(
        tmp_path / "relay", "test relay passphrase", extra_args=("--config", str(config))
    )
    relay_process.start()
    drivers: dict[str, Driver] = {}
    try:
        relay = relay_info(relay_process)
        ports = make_pair(tmp_path, relay)
        drivers = {name: Driver(tmp_path, name, ports[name], relay) for name in NAMES}
        for driver in drivers.values():
            driver.start()
        for _ in range(KILLS):
            victim = drivers[rng.choice(NAMES)]
            if rng.random() >= KILL_WHILE_STARTING:
                victim.wait_ready()
            time.sleep(rng.uniform(*KILL_DELAY))
            for driver in drivers.values():
                assert driver.crashed() is None, driver.crashed()
            victim.kill()
            victim.start()
        # The last word: both restart once more and only serve, retry and collect.
        for driver in drivers.values():
            driver.kill()
            driver.start(send=False)
        deadline = time.monotonic() + SETTLE_DEADLINE
        while not all_taken_shown(drivers) and time.monotonic() < deadline:
            for driver in drivers.values():
                assert driver.crashed() is None, driver.crashed()
            time.sleep(0.2)  # polling log files under a deadline
        for driver in drivers.values():
            driver.kill()
    finally:
        for driver in drivers.values():
            if driver.proc is not None and driver.proc.poll() is None:
                driver.kill()
        relay_process.stop()

    report = []
    for sender, receiver in (NAMES, NAMES[::-1]):
        sent, got = drivers[sender].events(), drivers[receiver].events()
        stored = stored_texts(tmp_path, receiver)
        taken = {f"{sender} {n}" for n in sent.accepted}
        lost = sorted(t for t in taken if stored[t] == 0)
        twice_stored = sorted(t for t, c in stored.items() if c > 1)
        twice_shown = sorted(t for t, c in got.shown.items() if c > 1)
        shown_not_stored = sorted(t for t in got.shown if stored[t] == 0)
        twice_announced = sorted(set(got.shown) & got.recovered)
        # What the receiver's node said of envelopes it did not keep, for a person reading.
        said = [
            line
            for line in drivers[receiver].stderr.read_text().splitlines()
            if " dropped " in line or "refused" in line
        ]
        assert not lost, f"{receiver} lost messages {sender} took: {lost}; its log: {said[-20:]}"
        assert not twice_stored, f"{receiver} stored twice: {twice_stored}"
        assert not twice_shown, f"{receiver} showed twice: {twice_shown}"
        assert not shown_not_stored, f"{receiver} showed but does not keep: {shown_not_stored}"
        assert not twice_announced, f"{receiver} showed and recovered: {twice_announced}"
        # Only what was attempted can arrive (a node may deliver what it queued just before a
        # kill, before it could log that it took it).
        arrived = {t for t in stored if t.startswith(f"{sender} ")}
        assert arrived <= {f"{sender} {n}" for n in sent.attempted}
        paths = Counter(sent.accepted.values())
        report.append(
            f"{sender}→{receiver}: {len(taken)} taken {dict(paths)}, {len(arrived)} kept, "
            f"{len(got.recovered)} recorded but announced only at a restart"
        )
    starts = {name: d.starts for name, d in drivers.items()}
    print(f"{KILLS} kills, starts {starts}; " + "; ".join(report))
    # A run in which nothing was taken would prove nothing.
    assert all(drivers[name].events().accepted for name in NAMES)
