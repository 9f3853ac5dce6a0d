"""The LAN table: who mDNS says is on the local network, and what the handshake proved.

mDNS TXT records are unauthenticated, so every entry starts *claimed*: the
fingerprint in the TXT is only what the advertiser says. The router dials a claimed entry
pinning the identity key it expects; the QUIC handshake proves (or disproves) the key, and the
router reports the outcome with :meth:`LanTable.confirm` or :meth:`LanTable.refute`. A refuted
entry — someone advertising a fingerprint whose key it cannot prove — is never offered again
until its advertisement changes.

Pure logic: no sockets, no clock (``now_ms`` is a parameter), no asyncio. discovery/mdns.py
feeds it from python-zeroconf; tests feed it directly.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace

PROTOCOL_VERSION = "1"
FINGERPRINT_LENGTH = 52  # base32 of a 32-byte SHA-256, unpadded
MAX_NAME_LENGTH = 64
MAX_LAN_ENTRIES = 256

Address = tuple[str, int]


def compact_fingerprint(identity_key: bytes) -> str:
    """The fingerprint as mDNS carries it: base32 of SHA-256(identity key), no spaces.

    The same text as :func:`node.core.identity.fingerprint` without the grouping.
    """
    digest = hashlib.sha256(identity_key).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def is_fingerprint(text: str) -> bool:
    """Whether ``text`` has the shape of a compact fingerprint (it proves nothing else)."""
    if len(text) != FINGERPRINT_LENGTH:
        return False
    try:
        base64.b32decode(text.upper() + "====", casefold=False)
    except ValueError:
        return False
    return True


def clean_name(raw: bytes | str) -> str:
    """A display name from the network made safe to print: no control characters, bounded.

    Names reach terminals (``quicnprotochat peers``); an escape sequence in a TXT record must
    not be able to rewrite the screen.
    """
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = "".join(c if c.isprintable() else "\N{REPLACEMENT CHARACTER}" for c in text)
    return text.strip()[:MAX_NAME_LENGTH]


def usable_address(host: str, *, allow_ipv6: bool = True) -> bool:
    """Whether an address from mDNS is worth dialing.

    Link-local IPv6 needs a scope id that mDNS answers do not carry (one can
    come back even on an IPv4-only instance); unspecified and multicast addresses are never a
    peer's address.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.version == 6 and not allow_ipv6:
        return False
    return not (ip.is_unspecified or ip.is_multicast or (ip.version == 6 and ip.is_link_local))


class LanStatus(enum.Enum):
    CLAIMED = "claimed"  # TXT says so; nothing proven yet
    CONFIRMED = "confirmed"  # a QUIC handshake proved the identity key behind the fingerprint
    REFUTED = "refuted"  # the node at this address could not prove the key it advertises


class LanEventKind(enum.Enum):
    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"
    CONFIRMED = "confirmed"
    REFUTED = "refuted"


@dataclass(frozen=True)
class LanPeer:
    """One advertised node on the LAN, as its mDNS service describes it."""

    service: str  # the mDNS instance name, unique on the link
    fingerprint: str  # compact; claimed unless status says otherwise
    name: str  # display name, cleaned for printing
    addresses: tuple[str, ...]
    port: int
    version: str
    first_seen_ms: int
    last_seen_ms: int
    status: LanStatus = LanStatus.CLAIMED

    @property
    def endpoints(self) -> tuple[Address, ...]:
        """The ``(host, port)`` pairs to dial."""
        return tuple((host, self.port) for host in self.addresses)


@dataclass(frozen=True)
class LanEvent:
    kind: LanEventKind
    peer: LanPeer


class LanTable:
    """The LAN peers seen through mDNS, keyed by service name, looked up by fingerprint."""

    def __init__(self, capacity: int = MAX_LAN_ENTRIES) -> None:
        self.capacity = capacity
        self._by_service: dict[str, LanPeer] = {}

    def __len__(self) -> int:
        return len(self._by_service)

    def peers(self) -> list[LanPeer]:
        """Every entry, most recently seen first."""
        return sorted(self._by_service.values(), key=lambda p: -p.last_seen_ms)

    def get_service(self, service: str) -> LanPeer | None:
        return self._by_service.get(service)

    def lookup(self, fingerprint: str) -> list[LanPeer]:
        """Entries advertising ``fingerprint`` that were not refuted: confirmed first, then
        most recently seen."""
        found = [
            p
            for p in self._by_service.values()
            if p.fingerprint == fingerprint and p.status is not LanStatus.REFUTED
        ]
        found.sort(key=lambda p: (p.status is not LanStatus.CONFIRMED, -p.last_seen_ms))
        return found

    def observe(
        self,
        service: str,
        *,
        fingerprint: str,
        name: str,
        addresses: Iterable[str],
        port: int,
        version: str,
        now_ms: int,
    ) -> LanEvent | None:
        """Record what a service advertises now. Returns ADDED, UPDATED, or None if unchanged.

        A change of fingerprint, addresses or port resets the entry to claimed: what was proven
        was the old advertisement.
        """
        addrs = tuple(dict.fromkeys(addresses))
        held = self._by_service.get(service)
        if held is None:
            if len(self._by_service) >= self.capacity:
                oldest = min(self._by_service.values(), key=lambda p: p.last_seen_ms)
                del self._by_service[oldest.service]
            peer = LanPeer(service, fingerprint, name, addrs, port, version, now_ms, now_ms)
            self._by_service[service] = peer
            return LanEvent(LanEventKind.ADDED, peer)
        moved = (held.fingerprint, held.addresses, held.port) != (fingerprint, addrs, port)
        changed = moved or (held.name, held.version) != (name, version)
        peer = replace(
            held,
            fingerprint=fingerprint,
            name=name,
            addresses=addrs,
            port=port,
            version=version,
            last_seen_ms=now_ms,
            status=LanStatus.CLAIMED if moved else held.status,
        )
        self._by_service[service] = peer
        return LanEvent(LanEventKind.UPDATED, peer) if changed else None

    def remove(self, service: str) -> LanEvent | None:
        """The service said goodbye (or its records expired)."""
        held = self._by_service.pop(service, None)
        return None if held is None else LanEvent(LanEventKind.REMOVED, held)

    def _matching(self, fingerprint: str, address: Address | None) -> list[LanPeer]:
        return [
            p
            for p in self._by_service.values()
            if p.fingerprint == fingerprint and (address is None or address in p.endpoints)
        ]

    def _set_status(self, peer: LanPeer, status: LanStatus, kind: LanEventKind) -> LanEvent | None:
        if peer.status is status:
            return None
        updated = replace(peer, status=status)
        self._by_service[peer.service] = updated
        return LanEvent(kind, updated)

    def confirm(
        self, fingerprint: str, proven_identity_key: bytes, address: Address | None = None
    ) -> list[LanEvent]:
        """A handshake with the node advertising ``fingerprint`` (at ``address``, if given)
        proved ``proven_identity_key``.

        If that key's fingerprint is the advertised one the entries become confirmed; if not,
        the node advertised someone else's fingerprint and its entries become refuted.
        """
        ok = compact_fingerprint(proven_identity_key) == fingerprint
        status = LanStatus.CONFIRMED if ok else LanStatus.REFUTED
        kind = LanEventKind.CONFIRMED if ok else LanEventKind.REFUTED
        events = [self._set_status(p, status, kind) for p in self._matching(fingerprint, address)]
        return [e for e in events if e is not None]

    def refute(self, fingerprint: str, address: Address | None = None) -> list[LanEvent]:
        """The node advertising ``fingerprint`` (at ``address``, if given) failed to prove the
        key: it answered with another key, or rejected ours."""
        events = [
            self._set_status(p, LanStatus.REFUTED, LanEventKind.REFUTED)
            for p in self._matching(fingerprint, address)
        ]
        return [e for e in events if e is not None]
