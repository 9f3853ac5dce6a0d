"""Discovery: signed peer records, mDNS on the LAN, a Kademlia DHT, and the resolver.

The pieces, from the bottom up:

* :mod:`discovery.records` — peer records: encode, sign, validate, keep the newest (pure).
* :mod:`discovery.lan` — the LAN table of mDNS claims and handshake proofs (pure).
* :mod:`discovery.mdns` — python-zeroconf glue that advertises and browses.
* :mod:`discovery.dht` — the peer-record DHT (kademlia, hardened in
  :mod:`discovery.kademlia_ext`).
* :mod:`discovery.resolver` — identity key → addresses: LAN, then cache, then DHT.
"""

from __future__ import annotations

from discovery.dht import DhtConfig, DhtNode, DhtStats, LookupResult, dht_key
from discovery.lan import LanEvent, LanEventKind, LanPeer, LanStatus, LanTable, compact_fingerprint
from discovery.mdns import SERVICE_TYPE, MdnsService
from discovery.records import (
    AcceptedRecord,
    OwnRecord,
    PeerAddress,
    PeerRecord,
    RecordBook,
    RecordVerdict,
    RejectedRecord,
    Rejection,
    RelayHint,
    sign_record,
    validate,
)
from discovery.resolver import Resolution, Resolver, Source

__all__ = [
    "SERVICE_TYPE",
    "AcceptedRecord",
    "DhtConfig",
    "DhtNode",
    "DhtStats",
    "LanEvent",
    "LanEventKind",
    "LanPeer",
    "LanStatus",
    "LanTable",
    "LookupResult",
    "MdnsService",
    "OwnRecord",
    "PeerAddress",
    "PeerRecord",
    "RecordBook",
    "RecordVerdict",
    "RejectedRecord",
    "Rejection",
    "RelayHint",
    "Resolution",
    "Resolver",
    "Source",
    "compact_fingerprint",
    "dht_key",
    "sign_record",
    "validate",
]
