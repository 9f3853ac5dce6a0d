"""What ``whoami``/``/whoami`` and ``verify``/``/verify`` show, as lines of text.

Shared by the one-shot commands and the chat, so both say the same thing. Every name a peer
chose goes through ``terminal_safe``; the QR codes are plain text (``node.app.qr``).
"""

from __future__ import annotations

from node.app.qr import qr_text
from node.core.display import terminal_safe
from node.core.identity import fingerprint
from node.core.safety_number import format_safety_number

VERIFY_ADVICE = (
    "Compare it with the one their side shows (quicnprotochat verify, or scan its QR code). "
    "The same number means each of you holds the other's real key."
)

__all__ = ["VERIFY_ADVICE", "verify_lines", "whoami_lines"]


def whoami_lines(name: str, identity_key: bytes, link: str, *, qr: bool = True) -> list[str]:
    """Name, identity key, fingerprint, the link's QR code (unless ``qr`` is false), the link."""
    lines = [
        f"name: {terminal_safe(name)}",
        f"identity: {identity_key.hex()}",
        f"fingerprint: {fingerprint(identity_key)}",
    ]
    if qr:
        lines += qr_text(link).splitlines()
    lines.append(f"link: {link}")
    return lines


def verify_lines(peer_name: str, peer_key: bytes, digits: str, *, qr: bool = True) -> list[str]:
    """The safety number ``digits`` of you and the peer, in groups, its QR code, the advice."""
    lines = [f"safety number of you and {terminal_safe(peer_name)} ({fingerprint(peer_key)}):"]
    lines += [f"    {line}" for line in format_safety_number(digits).splitlines()]
    if qr:
        lines += qr_text(digits).splitlines()
    lines.append(VERIFY_ADVICE)
    return lines
