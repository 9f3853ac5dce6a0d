"""Network addresses as users type them: ``HOST:PORT``, with ``[v6]:PORT`` for IPv6."""

from __future__ import annotations

Address = tuple[str, int]


def parse_address(text: str) -> Address:
    """Parse ``HOST:PORT``; raise ``ValueError`` with a message fit for a user."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port from 0 to 65535, got {text!r}")
    return host, int(port)


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
