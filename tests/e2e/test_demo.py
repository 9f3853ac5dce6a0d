"""The README's main job, as a user runs it: the console script, then its JSON summary."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("quicnprotochat")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = str(SCRIPT) if SCRIPT.exists() else shutil.which("quicnprotochat")
    assert exe, "the quicnprotochat console script is not installed"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=180, check=False)


def test_demo_json_reports_direct_and_relay_deliveries_and_nothing_lost() -> None:
    out = run("demo", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["members"] == 3
    assert summary["lost"] == 0
    assert summary["delivered_direct"] >= 1
    assert summary["delivered_via_relay"] >= 1
    # Every message reached both other members, on one path or the other.
    assert summary["delivered_direct"] + summary["delivered_via_relay"] == 2 * summary["sent"]
    assert summary["epoch"] >= 1


def test_demo_sends_the_users_messages() -> None:
    out = run(
        "demo", "--message", "first words", "--message", "second words", "--message", "third words"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("read alice: 'first words'") == 2  # bob and carol
    assert "'third words'" in out.stdout
    assert "(relay)" in out.stdout and "(direct)" in out.stdout
    assert "0 lost" in out.stdout
