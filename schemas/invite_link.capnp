@0xb0e3bd5b56dbb859;
# Invite links (qpc://v2/..., and the older qpc://v1/...): who someone is and how to reach them,
# as they signed it.
# node/core/invite_link.py encodes, signs and checks them.

struct InviteLink {
  identityKey @0 :Data;            # Ed25519 public key of the node (32 bytes); it signs the link
  displayName @1 :Text;            # the name its owner chose: a claim, the reader's petname wins
  addresses @2 :List(Address);     # where the node listens for QUIC, best first; may be empty
  relays @3 :List(Relay);          # the relay that keeps the node's mailbox: none or one
  issuedAt @4 :UInt64;             # milliseconds since the Unix epoch
  expiresAt @5 :UInt64;            # milliseconds since the Unix epoch; 0: never expires
  envelopeKey @6 :Data;            # v2: hybrid X-Wing envelope public key (1216 bytes) to seal
                                   # relayed envelopes to; empty: none. Ignored in a v1 link.

  struct Address {
    host @0 :Text;                 # an IP literal or a DNS name
    port @1 :UInt16;
  }

  struct Relay {
    host @0 :Text;                 # an IP literal or a DNS name
    port @1 :UInt16;
    identityKey @2 :Data;          # the relay's Ed25519 key, pinned when dialing it
  }
}
