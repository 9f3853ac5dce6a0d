@0xbe24508c86ebf816;
# Signed peer records: how a node tells the LAN and the DHT where it can be reached.
# discovery/records.py encodes, signs and validates them.

struct PeerRecord {
  identityKey @0 :Data;            # Ed25519 public key of the node (32 bytes)
  envelopeKey @1 :Data;            # hybrid KEM public key, ML-KEM-768 || X25519 (1216 bytes)
  addresses @2 :List(Address);     # where the node listens for QUIC, best first
  relayHints @3 :List(RelayHint);  # relays that hold the node's mailbox
  keyPackage @4 :Data;             # optional last-resort MLS KeyPackage; empty when absent
  sequence @5 :UInt64;             # grows with every new record; readers keep the highest
  expiresAt @6 :UInt64;            # milliseconds since the Unix epoch

  struct Address {
    host @0 :Text;                 # an IP literal of the given family
    port @1 :UInt16;
    family @2 :Family;
  }

  enum Family {
    ipv4 @0;
    ipv6 @1;
  }

  struct RelayHint {
    host @0 :Text;                 # IP literal or DNS name of the relay
    port @1 :UInt16;
    identityKey @2 :Data;          # the relay's Ed25519 key, pinned when dialing it
  }
}

struct SignedPeerRecord {
  record @0 :Data;                 # the exact encoded PeerRecord bytes that were signed
  signature @1 :Data;              # Ed25519 over "quicnprotochat peer record v1\0" || record
}
