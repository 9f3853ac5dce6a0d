"""``quicnprotochat web``'s own options, before any node starts."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from node.app.cli import main


def test_web_listen_must_be_an_ip_address(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["web", "--name", "a", "--data-dir", str(tmp_path / "a"), "--web-listen", "evil.example"],
    )
    assert result.exit_code == 2
    assert "'evil.example' is not an IP address" in result.output
    assert not (tmp_path / "a").exists()


def test_web_help_names_its_port_and_listen_options() -> None:
    result = CliRunner().invoke(main, ["web", "--help"])
    assert result.exit_code == 0
    assert "--port" in result.output and "--web-listen" in result.output
    assert "--relay" in result.output  # node run's options too
