"""The LAN table: claims from mDNS, proofs from handshakes; plus the input hygiene helpers."""

from __future__ import annotations

import pytest
from zeroconf import IPVersion

from discovery.lan import (
    LanEventKind,
    LanStatus,
    LanTable,
    clean_name,
    compact_fingerprint,
    is_fingerprint,
    usable_address,
)
from discovery.mdns import ip_version_for
from node.core.identity import Identity, fingerprint

ALICE = Identity.generate().public_key
MALLORY = Identity.generate().public_key
FP = compact_fingerprint(ALICE)


def observe(table: LanTable, service: str = "a", **changes: object) -> object:
    fields: dict[str, object] = {
        "fingerprint": FP,
        "name": "alice",
        "addresses": ["192.168.1.5"],
        "port": 4433,
        "version": "1",
        "now_ms": 1000,
    }
    fields.update(changes)
    return table.observe(service, **fields)  # type: ignore[arg-type]


def test_compact_fingerprint_is_the_grouped_one_without_spaces() -> None:
    assert compact_fingerprint(ALICE) == fingerprint(ALICE).replace(" ", "")
    assert is_fingerprint(FP)
    assert not is_fingerprint(FP[:-1])
    assert not is_fingerprint("1" * 52)  # not base32


def test_names_from_the_network_are_made_printable() -> None:
    assert (
        clean_name(b"bob\x1b[2J\x07") == "bob\N{REPLACEMENT CHARACTER}[2J\N{REPLACEMENT CHARACTER}"
    )
    assert clean_name(b"\xff\xfe") == "\N{REPLACEMENT CHARACTER}" * 2
    assert len(clean_name("x" * 500)) == 64


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("192.168.1.5", True),
        ("2001:db8::1", True),
        ("fe80::1", False),
        ("0.0.0.0", False),
        ("224.0.0.251", False),
        ("host.local", False),
    ],
)
def test_usable_addresses(host: str, ok: bool) -> None:
    assert usable_address(host) is ok


def test_ipv6_is_dropped_when_only_ipv4_is_used() -> None:
    assert not usable_address("2001:db8::1", allow_ipv6=False)


def test_interfaces_choose_the_ip_version_and_wildcards_are_refused() -> None:
    assert ip_version_for(["127.0.0.1"]) is IPVersion.V4Only
    assert ip_version_for(["2001:db8::1"]) is IPVersion.V6Only
    assert ip_version_for(["10.0.0.1", "2001:db8::1"]) is IPVersion.All
    for bad in ([], ["0.0.0.0"], ["::"], ["eth0"], ["224.0.0.251"]):
        with pytest.raises(ValueError):
            ip_version_for(bad)


def test_add_update_remove() -> None:
    table = LanTable()
    added = observe(table)
    assert added is not None and added.kind is LanEventKind.ADDED  # type: ignore[attr-defined]
    assert observe(table, now_ms=2000) is None  # nothing new: no event
    peer = table.get_service("a")
    assert peer is not None and peer.last_seen_ms == 2000 and peer.first_seen_ms == 1000
    updated = observe(table, name="alice (laptop)", now_ms=3000)
    assert updated is not None and updated.kind is LanEventKind.UPDATED  # type: ignore[attr-defined]
    assert table.lookup(FP)[0].name == "alice (laptop)"
    assert table.lookup(FP)[0].endpoints == (("192.168.1.5", 4433),)
    removed = table.remove("a")
    assert removed is not None and removed.kind is LanEventKind.REMOVED
    assert table.remove("a") is None
    assert table.lookup(FP) == []


def test_confirm_and_refute() -> None:
    table = LanTable()
    observe(table, "honest")
    observe(table, "impostor", addresses=["192.168.1.66"])
    assert {p.status for p in table.lookup(FP)} == {LanStatus.CLAIMED}
    # The impostor's address proved mallory's key while advertising alice's fingerprint.
    events = table.confirm(FP, MALLORY, ("192.168.1.66", 4433))
    assert [(e.kind, e.peer.service) for e in events] == [(LanEventKind.REFUTED, "impostor")]
    events = table.confirm(FP, ALICE, ("192.168.1.5", 4433))
    assert [(e.kind, e.peer.service) for e in events] == [(LanEventKind.CONFIRMED, "honest")]
    assert table.confirm(FP, ALICE, ("192.168.1.5", 4433)) == []  # no news, no event
    assert [p.service for p in table.lookup(FP)] == ["honest"]
    assert table.get_service("impostor").status is LanStatus.REFUTED  # type: ignore[union-attr]


def test_refute_without_address_covers_every_entry_of_the_fingerprint() -> None:
    table = LanTable()
    observe(table, "one")
    observe(table, "two", addresses=["10.0.0.2"])
    assert len(table.refute(FP)) == 2
    assert table.lookup(FP) == []


def test_a_changed_advertisement_must_be_proven_again() -> None:
    table = LanTable()
    observe(table)
    table.confirm(FP, ALICE)
    assert table.lookup(FP)[0].status is LanStatus.CONFIRMED
    observe(table, name="renamed")  # a name change proves nothing new but keeps the proof
    assert table.lookup(FP)[0].status is LanStatus.CONFIRMED
    observe(table, port=5000)
    assert table.lookup(FP)[0].status is LanStatus.CLAIMED
    table.refute(FP)
    observe(table, addresses=["192.168.1.9"])  # a refuted entry that moves is a new claim
    assert table.lookup(FP)[0].status is LanStatus.CLAIMED


def test_confirmed_entries_come_first_then_most_recent() -> None:
    table = LanTable()
    observe(table, "old", now_ms=1)
    observe(table, "new", addresses=["10.0.0.2"], now_ms=5)
    observe(table, "proven", addresses=["10.0.0.3"], now_ms=2)
    table.confirm(FP, ALICE, ("10.0.0.3", 4433))
    assert [p.service for p in table.lookup(FP)] == ["proven", "new", "old"]
    assert [p.service for p in table.peers()] == ["new", "proven", "old"]


def test_table_is_bounded() -> None:
    table = LanTable(capacity=2)
    observe(table, "a", now_ms=1)
    observe(table, "b", now_ms=2)
    observe(table, "c", now_ms=3)
    assert len(table) == 2 and table.get_service("a") is None
